"""The ``adrl`` command. Each subcommand parses, calls the library and prints; ``AdrlError``s are caught once here.

Subcommands live in ``adrl/commands/<name>.py``; each module defines ``register(app)``.
"""

from __future__ import annotations

import importlib

import typer

COMMANDS = ("simulate", "fit", "train", "evaluate", "ope", "serve", "drive", "experiment", "quickstart")

app = typer.Typer(
    name="adrl",
    help=(
        "Reinforcement-learning workbench for ad placement.\n\n"
        "Example: adrl simulate --users 10000 --out runs/logs.parquet && adrl fit --logs runs/logs.parquet "
        "--out runs/behavior"
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """Reinforcement-learning workbench for ad placement."""


for _name in COMMANDS:
    try:
        _module = importlib.import_module(f"adrl.commands.{_name}")
    except ModuleNotFoundError as _e:  # a command whose module is not built yet
        if _e.name != f"adrl.commands.{_name}":
            raise
        continue
    _module.register(app)


def main() -> None:
    """Entry point of the console script."""
    app()


if __name__ == "__main__":
    main()
