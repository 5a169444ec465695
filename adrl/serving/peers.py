"""The other workers of ``adrl serve --workers N``, reached by log token over unix sockets (see
:mod:`adrl.serving.workers`): newline-delimited JSON requests ``{"op": ...}`` answered by ``{"status", "body"}``."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

MAX_LINE = 64 << 20


class Peers:
    """The other workers, reached by log token through unix sockets in ``run_dir``."""

    def __init__(self, run_dir: Path, token: str) -> None:
        self.run_dir = run_dir
        self.token = token
        self._server: asyncio.AbstractServer | None = None
        self._idle: dict[str, list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]] = {}

    def socket_of(self, token: str) -> Path:
        return self.run_dir / f"{token}.sock"

    def others(self) -> list[str]:
        return sorted(p.stem for p in self.run_dir.glob("*.sock") if p.stem != self.token)

    def owns(self, token: str) -> bool:
        """Whether another live worker issued ``token``'s decisions."""
        return token != self.token and self.socket_of(token).exists()

    async def serve(self, handler: Any) -> None:
        async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while line := await reader.readline():
                    status, body = await handler(json.loads(line))
                    writer.write(json.dumps({"status": status, "body": body}).encode() + b"\n")
                    await writer.drain()
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()

        path = self.socket_of(self.token)
        path.unlink(missing_ok=True)
        self._server = await asyncio.start_unix_server(on_client, path=str(path), limit=MAX_LINE)

    async def call(self, token: str, message: dict[str, Any]) -> tuple[int, Any]:
        """One request to the worker of ``token``: (HTTP status, body) of its answer."""
        idle = self._idle.setdefault(token, [])
        reader, writer = (
            idle.pop() if idle else await asyncio.open_unix_connection(str(self.socket_of(token)), limit=MAX_LINE)
        )
        try:
            writer.write(json.dumps(message).encode() + b"\n")
            await writer.drain()
            line = await reader.readline()
        except (ConnectionError, OSError):
            writer.close()
            raise
        if not line:
            writer.close()
            raise ConnectionError(f"worker {token} closed the connection")
        idle.append((reader, writer))
        answer = json.loads(line)
        return int(answer["status"]), answer["body"]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self.socket_of(self.token).unlink(missing_ok=True)
        for conns in self._idle.values():
            for _, w in conns:
                w.close()
