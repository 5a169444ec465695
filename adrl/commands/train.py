"""``adrl train``: train an agent from a preset on a registered environment, with checkpoints and resume."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from adrl.agents.factory import AGENT_NAMES, BASELINES, load_preset, make_agent, parse_overrides
from adrl.commands import cli_errors, console, err_console
from adrl.errors import ConfigError
from adrl.training import RunDir, StopRequested, Throughput, make_vector_env, resolve_env


def train_run(
    *,
    agent_name: str,
    env_id: str,
    out: Path,
    steps: int | None = None,
    seed: int = 0,
    behavior: Path | None = None,
    scenario_path: Path | None = None,
    preset_file: Path | None = None,
    n_envs: int | None = None,
    checkpoint_every: int | None = None,
    overrides: dict[str, Any] | None = None,
    resume: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Train (or resume) one run; returns a summary. The library path behind ``adrl train``."""
    preset = load_preset(agent_name, preset_file)
    params = {**preset.params, **(overrides or {})}
    total = steps if steps is not None else preset.steps
    n = n_envs if n_envs is not None else preset.n_envs
    every = checkpoint_every if checkpoint_every is not None else preset.checkpoint_every
    if total < 1 or n < 1 or every < 1:
        raise ConfigError(f"steps, n_envs and checkpoint_every must be >= 1, got {total}, {n}, {every}")
    spec = resolve_env(env_id, scenario_path, behavior)
    config = {
        "agent": agent_name,
        "env": env_id,
        "steps": total,
        "n_envs": n,
        "checkpoint_every": every,
        "seed": seed,
        "behavior": str(behavior) if behavior else None,
        "scenario": spec.scenario.model_dump(mode="json"),
        "params": params,
    }
    run = RunDir.create(out, config, resume=resume)
    from adrl.agents.registry import load_policy_artifact

    latest = run.latest_checkpoint() if resume else None
    if latest is not None:
        agent = load_policy_artifact(latest[0])
        if agent_name not in BASELINES:
            _check_same_market(agent, spec.scenario)
        start = latest[1]
        if progress:
            console.print(f"resuming {out} from checkpoint at step {start:,}")
    else:
        agent = make_agent(
            agent_name, spec.scenario, params, seed=seed, value_model=spec.value_model, response=spec.response
        )
        start = 0
    stop = StopRequested()
    summary: dict[str, Any] = {"run": str(run.path), "agent": agent_name, "env": env_id}
    run.open_metrics(resume_step=start if latest else None)
    try:
        if agent_name in BASELINES:
            run.log(0, {"step": 0})
        else:
            env = make_vector_env(spec, n)
            throughput = Throughput(start)
            last_ckpt = [start]
            columns = (
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("return {task.fields[ret]}  {task.fields[rate]} steps/s"),
                TimeElapsedColumn(),
            )
            with stop.installed(), Progress(*columns, disable=not progress) as bar:
                task = bar.add_task(f"training {agent_name}", total=total, completed=start, ret="-", rate="-")

                def callback(agent_: Any, step: int, stats: dict[str, float]) -> bool:
                    rate, wall = throughput.update(step)
                    stats = {**stats, "steps_per_second": rate, "wall_seconds": wall}
                    run.log(step, stats)
                    ret = stats.get("mean_return", math.nan)
                    bar.update(task, completed=min(step, total), ret=f"{ret:.4f}", rate=f"{rate:,.0f}")
                    if step - last_ckpt[0] >= every or stop.requested:
                        run.checkpoint(agent_, step)
                        last_ckpt[0] = step
                    return not stop.requested

                agent.learn(env, total, callback=callback)
            env.close()
            steps_done = int(getattr(agent, "steps_done", total))
            run.checkpoint(agent, steps_done)
            summary["steps_done"] = steps_done
            if stop.requested:
                summary["interrupted"] = stop.signal_name
        agent.save(run.policy_path)
        summary["policy"] = str(run.policy_path)
        summary["learning_curve"] = str(run.plot_learning_curve(f"{agent_name} on {env_id}"))
    finally:
        run.close()
    return summary


def _check_same_market(agent: Any, scenario: Any) -> None:
    """Checkpoints store their scenario; resuming must continue in the same market."""
    if agent.scenario.content_hash != scenario.content_hash:
        raise ConfigError("--resume: the checkpoint was trained on another scenario than this run's")


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
    ) -> None:
        """Train an agent and export its policy to OUT/policy.

        Example: adrl train --agent q_learning --env adrl/AdPlacement-v0 --steps 20000000 --seed 0
        --out runs/q_learning
        """
        with cli_errors():
            summary = train_run(
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
            )
            if "interrupted" in summary:
                err_console.print(
                    f"[yellow]stopped by {summary['interrupted']}[/yellow] at step {summary['steps_done']:,}; "
                    f"continue with: adrl train --agent {agent} --env {env} --out {out} --resume"
                )
                raise typer.Exit(code=130)
            console.print(f"policy: {summary['policy']}\nlearning curve: {summary['learning_curve']}")
