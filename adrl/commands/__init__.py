"""Subcommands of ``adrl``; each module defines ``register(app)`` and wraps its body in ``cli_errors()``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer
from rich.console import Console
from rich.markup import escape

from adrl.errors import AdrlError

console = Console()
err_console = Console(stderr=True)


@contextmanager
def cli_errors() -> Iterator[None]:
    """Turn an ``AdrlError`` into one red line on stderr and exit code 2 (no traceback)."""
    try:
        yield
    except AdrlError as e:
        err_console.print(f"[red]error:[/red] {escape(str(e))}", soft_wrap=True)
        raise typer.Exit(code=2) from None
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/yellow]; rerun with --resume where the command offers it")
        raise typer.Exit(code=130) from None
