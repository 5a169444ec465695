"""``adrl train``: train an agent from a preset on a registered environment, with checkpoints and resume."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from adrl.agents.factory import AGENT_NAMES, parse_overrides
from adrl.commands import cli_errors, console, err_console
from adrl.training import train_run


def register(app: typer.Typer) -> None:
    @app.command("train")
    def train_cmd(
        agent: Annotated[str, typer.Option(help=f"one of {', '.join(AGENT_NAMES)}")],
        out: Annotated[Path, typer.Option(help="run directory (config, metrics, checkpoints, policy/)")],
        env: Annotated[str, typer.Option(help="registered environment id")] = "adrl/AdPlacement-v0",
        behavior: Annotated[
            Path | None, typer.Option(help="fitted behavior model dir (for adrl/AdPlacement-Learned-v0)")
        ] = None,
        scenario: Annotated[Path | None, typer.Option(help="scenario YAML (default market if omitted)")] = None,
        steps: Annotated[int | None, typer.Option(min=1, help="training budget in user-decisions")] = None,
        seed: Annotated[int, typer.Option(min=0, help="random seed")] = 0,
        n_envs: Annotated[int | None, typer.Option(min=1, help="users stepped together")] = None,
        checkpoint_every: Annotated[int | None, typer.Option(min=1, help="steps between checkpoints")] = None,
        preset: Annotated[Path | None, typer.Option(help="preset YAML (default configs/agents/AGENT.yaml)")] = None,
        set_: Annotated[
            list[str] | None, typer.Option("--set", help="override one agent parameter: key=value (repeatable)")
        ] = None,
        resume: Annotated[bool, typer.Option("--resume", help="continue the run in --out from its checkpoint")] = False,
        force: Annotated[bool, typer.Option("--force", help="replace --out if it exists")] = False,
    ) -> None:
        """Train an agent and export its policy to OUT/policy.

        Example: adrl train --agent q_learning --env adrl/AdPlacement-v0 --steps 20000000 --seed 0
        --out runs/q_learning
        """
        with cli_errors():
            summary = train_run(
                log=console.print,
                agent_name=agent,
                env_id=env,
                out=out,
                steps=steps,
                seed=seed,
                behavior=behavior,
                scenario_path=scenario,
                preset_file=preset,
                n_envs=n_envs,
                checkpoint_every=checkpoint_every,
                overrides=parse_overrides(set_ or []),
                resume=resume,
                force=force,
            )
            if "interrupted" in summary:
                err_console.print(
                    f"[yellow]stopped by {summary['interrupted']}[/yellow] at step {summary['steps_done']:,}; "
                    f"continue with: adrl train --agent {agent} --env {env} --out {out} --resume"
                )
                raise typer.Exit(code=130)
            console.print(f"policy: {summary['policy']}\nlearning curve: {summary['learning_curve']}")
