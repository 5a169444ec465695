"""``adrl train``: train an agent from a preset on a registered environment, with checkpoints and resume."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from adrl.agents.factory import AGENT_NAMES, parse_overrides
from adrl.commands import cli_errors, console, err_console
from adrl.errors import ConfigError
from adrl.training import train_run

ENGINES = ("local", "rllib")


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
        init_from: Annotated[
            Path | None,
            typer.Option(
                help="start from this trained policy's weights (ppo_native: fine-tune a deployed policy; "
                "--set anchor_coef=K keeps it near with a KL penalty)"
            ),
        ] = None,
        engine: Annotated[
            str,
            typer.Option(help="local (adrl's own loop) or rllib (RLlib PPO on Ray: pip install 'adrl\\[ray]')"),
        ] = "local",
        num_env_runners: Annotated[
            int | None, typer.Option(help="with --engine rllib: env runners (Ray actors, one CPU each); default 1")
        ] = None,
        address: Annotated[
            str | None,
            typer.Option(help="with --engine rllib: the Ray cluster, e.g. ray://head:10001 (default: a local Ray)"),
        ] = None,
    ) -> None:
        """Train an agent and export its policy to OUT/policy.

        Example: adrl train --agent q_learning --env adrl/AdPlacement-v0 --steps 20000000 --seed 0
        --out runs/q_learning

        RLlib: adrl train --engine rllib --agent ppo --num-env-runners 2 --steps 300000 --out runs/rllib
        (adrl's PPO hyper-parameters, the ppo_native preset; the policy is a ppo-native artifact)
        """
        with cli_errors():
            if engine not in ENGINES:
                raise ConfigError(f"--engine must be one of {', '.join(ENGINES)}, got {engine!r}")
            if engine != "rllib" and (num_env_runners is not None or address is not None):
                raise ConfigError("--num-env-runners and --address are for --engine rllib")
            if engine == "rllib" and init_from is not None:
                raise ConfigError("--init-from is for --engine local")
            trainer: Any = train_run
            extra: dict[str, Any] = {}
            if engine == "rllib":
                from adrl.rllib.train import check_options, train_rllib

                runners = 1 if num_env_runners is None else num_env_runners
                check_options(agent, runners, address)  # before anything is read or started
                trainer, extra = train_rllib, {"num_env_runners": runners, "address": address}
            summary = trainer(
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
                **extra,
                **({"init_from": init_from} if init_from is not None else {}),
            )
            if "interrupted" in summary:
                err_console.print(
                    f"[yellow]stopped by {summary['interrupted']}[/yellow] at step {summary['steps_done']:,}; "
                    f"continue with: adrl train --agent {agent} --env {env} --out {out} --resume"
                    + (f" --engine rllib --num-env-runners {extra['num_env_runners']}" if extra else "")
                )
                raise typer.Exit(code=130)
            console.print(f"policy: {summary['policy']}\nlearning curve: {summary['learning_curve']}")
