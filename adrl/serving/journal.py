"""Append-only journal of serving events: JSON lines with a CRC-32 each, in segments rotated by size.

A line is ``<crc32 of the JSON, 8 hex digits> <JSON>\\n``. Writers append whole lines with one ``os.write`` on an
``O_APPEND`` descriptor, so once :meth:`Journal.append` returns the bytes are in the operating system's page cache:
a crash of the process (even ``SIGKILL``) loses nothing appended. A background thread ``fsync``\\ s the active
segment every ``fsync_interval`` seconds when it has new data (group commit), so a power loss or kernel crash loses
at most that interval; ``fsync_interval=0`` syncs on every append (slow, for the paranoid). Rotation and close
always sync. A reader skips a line that is torn (no newline, e.g. the last one after a crash) or whose checksum
does not match, and counts it; every other record is intact.

Segments are named ``journal-<first seq>.jsonl`` after the first decision sequence number they may hold, so a
reader that needs decisions after a watermark can skip whole older segments.
"""

from __future__ import annotations

import json
import os
import re
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adrl.errors import DataError


def segment_name(first_seq: int) -> str:
    return f"journal-{first_seq:012d}.jsonl"


def encode_line(payload: str) -> bytes:
    """One journal line for a JSON text."""
    data = payload.encode()
    return b"%08x %s\n" % (zlib.crc32(data), data)


class Journal:
    """The writer: one active segment, rotated when it passes ``rotate_bytes``, synced by a background thread."""

    def __init__(self, directory: Path, *, rotate_bytes: int = 64 << 20, fsync_interval: float = 1.0) -> None:
        if rotate_bytes < 1024:
            raise ValueError(f"rotate_bytes must be >= 1024, got {rotate_bytes}")
        if fsync_interval < 0:
            raise ValueError(f"fsync_interval must be >= 0 seconds, got {fsync_interval:g}")
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.rotate_bytes = rotate_bytes
        self.fsync_interval = fsync_interval
        self._lock = threading.Lock()
        self._fd = -1
        self._size = 0
        self._dirty = False
        self._header = ""
        self.bytes_written = 0
        self.segments_opened = 0
        self._stop = threading.Event()
        self._syncer: threading.Thread | None = None

    def open(self, first_seq: int, header: dict[str, Any]) -> None:
        """Start a new segment (never append to an old one: its last line may be torn) and the sync thread."""
        self._header = json.dumps({"t": "h", **header}, separators=(",", ":"))
        with self._lock:
            self._open_segment(first_seq)
        if self.fsync_interval > 0 and self._syncer is None:
            self._syncer = threading.Thread(target=self._sync_loop, name="adrl-journal-fsync", daemon=True)
            self._syncer.start()

    def _open_segment(self, first_seq: int) -> None:
        path = self.directory / segment_name(first_seq)
        n = 0
        while path.exists():  # a restart that issued no decision since the last segment opened
            n += 1
            path = self.directory / f"journal-{first_seq:012d}.{n}.jsonl"
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        _fsync_dir(self.directory)
        self._size = 0
        self.segments_opened += 1
        self._write(encode_line(self._header))

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        self._size += len(data)
        self.bytes_written += len(data)
        self._dirty = True

    def append(self, data: bytes, next_seq: int) -> None:
        """Append encoded lines (see :func:`encode_line`); ``next_seq`` names the next segment if this one rotates.

        Returns after the bytes reached the OS (durable against a process crash; see the module docstring).
        """
        with self._lock:
            if self._fd < 0:
                raise DataError("journal is closed; no more events can be logged")
            self._write(data)
            if self.fsync_interval == 0:
                os.fsync(self._fd)
                self._dirty = False
            if self._size >= self.rotate_bytes:
                os.fsync(self._fd)
                os.close(self._fd)
                self._dirty = False
                self._open_segment(next_seq)

    def _sync_loop(self) -> None:
        while not self._stop.wait(self.fsync_interval):
            self.sync()

    def sync(self) -> None:
        """fsync the active segment if it has unsynced data, without blocking appends meanwhile."""
        with self._lock:
            if self._fd < 0 or not self._dirty:
                return
            fd = os.dup(self._fd)
            self._dirty = False
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def close(self) -> None:
        """Sync and close the active segment and stop the sync thread."""
        self._stop.set()
        if self._syncer is not None:
            self._syncer.join(timeout=5)
            self._syncer = None
        with self._lock:
            if self._fd >= 0:
                os.fsync(self._fd)
                os.close(self._fd)
                self._fd = -1


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class ReadStats:
    """What a journal read found: good records, and lines skipped as torn or corrupt (with where)."""

    records: int = 0
    torn: int = 0
    corrupt: int = 0
    where: list[str] | None = None


def segments(directory: Path) -> list[tuple[int, Path]]:
    """Journal segments of ``directory`` as (first seq, path), in write order."""
    out = []
    for p in directory.glob("journal-*.jsonl"):
        m = re.match(r"^journal-(\d{12})(?:\.(\d+))?\.jsonl$", p.name)
        if m:
            out.append((int(m.group(1)), int(m.group(2) or 0), p))
    out.sort()
    return [(seq, p) for seq, _, p in out]


def read_records(paths: list[Path], stats: ReadStats | None = None) -> Iterator[dict[str, Any]]:
    """Every intact record of the given segments in order; torn or corrupt lines are counted in ``stats``."""
    stats = stats if stats is not None else ReadStats()
    if stats.where is None:
        stats.where = []
    for path in paths:
        with open(path, "rb") as f:
            data = f.read()
        lines = data.split(b"\n")
        tail = lines.pop()  # after the last newline: empty, or a torn line
        if tail:
            stats.torn += 1
            stats.where.append(f"{path.name}: torn last line ({len(tail)} bytes)")
        for i, line in enumerate(lines):
            record = _parse(line)
            if record is None:
                stats.corrupt += 1
                stats.where.append(f"{path.name}:{i + 1}: bad checksum or JSON")
                continue
            stats.records += 1
            yield record


def _parse(line: bytes) -> dict[str, Any] | None:
    if len(line) < 10 or line[8:9] != b" ":
        return None
    payload = line[9:]
    try:
        if int(line[:8], 16) != zlib.crc32(payload):
            return None
        record = json.loads(payload)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None
