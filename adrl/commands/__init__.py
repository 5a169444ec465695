"""Subcommands of ``adrl``; each module defines ``register(app)`` and wraps its body in ``cli_errors()``."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

import typer
from rich.console import Console
from rich.markup import escape

from adrl.errors import AdrlError

console = Console()
err_console = Console(stderr=True)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


@contextmanager
def cli_errors(*, sigterm: bool = False) -> Iterator[None]:
    """Turn an ``AdrlError`` into one red line on stderr and exit code 2 (no traceback). With ``sigterm``, SIGTERM
    interrupts like Ctrl-C, so a stopped command unwinds and removes its temporary files (for commands that write
    one output atomically; serve and train handle their signals themselves)."""
    previous = None
    if sigterm and threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    except AdrlError as e:
        err_console.print(f"[red]error:[/red] {escape(str(e))}", soft_wrap=True)
        raise typer.Exit(code=2) from None
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/yellow]; rerun with --resume where the command offers it")
        raise typer.Exit(code=130) from None
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
