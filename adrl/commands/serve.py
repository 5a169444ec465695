"""``adrl serve``: answer decision queries for a policy artifact over HTTP, logging decisions and feedback."""

from __future__ import annotations

import gc
import os
from pathlib import Path
from typing import Annotated

import typer

from adrl.commands import cli_errors, console
from adrl.errors import ConfigError
from adrl.serving.app import MIN_API_KEY_CHARS, uvicorn_options
from adrl.serving.experiment import ArmSpec, ExperimentSpec, parse_split, read_experiment
from adrl.serving.service import PolicyService, ServeConfig

ARM_NAMES = "ABCDEFGHIJKLMNOP"


def experiment_spec(
    policies: list[Path], split: str | None, experiment: Path | None, exploration: str
) -> ExperimentSpec | None:
    """The experiment the flags ask for; None for the single-policy server (one --policy, no --split)."""
    if experiment is not None:
        if policies or split:
            raise ConfigError("--experiment YAML names the arms and split; drop --policy and --split")
        return read_experiment(experiment)
    if len(policies) <= 1 and split is None:
        return None
    if len(policies) > len(ARM_NAMES):
        raise ConfigError(f"{len(policies)} --policy arms; at most {len(ARM_NAMES)}")
    if split is None:
        raise ConfigError(f"{len(policies)} --policy arms need --split (one percent per arm, e.g. 50,50)")
    shares = parse_split(split, len(policies))
    arms = tuple(ArmSpec(ARM_NAMES[i], p, exploration) for i, p in enumerate(policies))
    return ExperimentSpec("ab", arms, shares)


def register(app: typer.Typer) -> None:
    @app.command("serve")
    def serve_cmd(
        policy: Annotated[
            list[Path] | None,
            typer.Option(help="policy artifact directory (with manifest.json); repeat it for an A/B experiment"),
        ] = None,
        split: Annotated[
            str | None, typer.Option(help="percent of users per --policy arm (A, B, ...), e.g. 50,50")
        ] = None,
        experiment: Annotated[
            Path | None, typer.Option(help="experiment YAML (arms, split, salt) instead of --policy/--split")
        ] = None,
        host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
        port: Annotated[int, typer.Option(min=0, max=65535, help="port to listen on")] = 8000,
        log_dir: Annotated[
            Path | None,
            typer.Option(
                help="decision/feedback log directory (journal + joined parquet); off if unset. An existing log of "
                "the same market is continued, never replaced (it is append-only, so serve has no --force)"
            ),
        ] = None,
        api_key_env: Annotated[
            str | None, typer.Option(help="environment variable holding the API key; /v1/* then needs it")
        ] = None,
        exploration: Annotated[
            str, typer.Option(help="'none', 'epsilon:0.05' (ε-mixture with uniform) or 'softmax:T' (temperature T)")
        ] = "none",
        feedback_window: Annotated[
            float, typer.Option(min=0.001, help="seconds a decision waits for feedback before it is joined")
        ] = 60.0,
        default_reward: Annotated[float, typer.Option(help="reward of a decision that got no feedback")] = 0.0,
        log_key_env: Annotated[
            str, typer.Option(help="environment variable holding the key that hashes user and episode ids")
        ] = "ADRL_LOG_KEY",
        ephemeral_log_key: Annotated[
            bool, typer.Option(help="log with a random hashing key when the key variable is unset")
        ] = False,
        rotate_mb: Annotated[float, typer.Option(min=0.001, help="journal segment size before rotation, MiB")] = 64.0,
        fsync_interval: Annotated[
            float, typer.Option(min=0.0, help="seconds between journal fsyncs (0: fsync every write)")
        ] = 1.0,
        flush_interval: Annotated[
            float, typer.Option(min=0.01, help="seconds between parquet parts of joined rows")
        ] = 5.0,
        max_body_mb: Annotated[float, typer.Option(min=0.001, help="largest request body, MiB (else 413)")] = 8.0,
        seed: Annotated[int | None, typer.Option(min=0, help="seed of the action sampler")] = None,
        workers: Annotated[
            int,
            typer.Option(min=1, max=64, help="worker processes on the one port (each logs to DIR/worker-<k>)"),
        ] = 1,
    ) -> None:
        """Serve a policy, or an A/B experiment between policies, over HTTP: decisions, feedback, metrics, health.

        Example: ADRL_LOG_KEY=$(openssl rand -hex 32) adrl serve --policy runs/A/policy --host 127.0.0.1
        --port 8000 --log-dir runs/serve-log --exploration epsilon:0.05

        A/B: adrl serve --policy runs/A/policy --policy runs/B/policy --split 50,50 --log-dir runs/ab-log
        (arms A and B; users are assigned by a keyed hash of user.id; GET /v1/experiment shows the split).
        """
        import uvicorn

        from adrl.serving.app import create_app

        with cli_errors():
            api_key = None
            if api_key_env:
                api_key = os.environ.get(api_key_env)
                if not api_key:
                    raise ConfigError(
                        f"--api-key-env {api_key_env}: the variable is not set or empty; export the "
                        "API key there or drop the option to serve without auth"
                    )
                if len(api_key.strip()) < MIN_API_KEY_CHARS:
                    raise ConfigError(
                        f"--api-key-env {api_key_env}: the API key has {len(api_key.strip())} characters, expected at "
                        f"least {MIN_API_KEY_CHARS} (e.g. export {api_key_env}=$(openssl rand -hex 32))"
                    )
            spec = experiment_spec(policy or [], split, experiment, exploration)
            if spec is None and not policy:
                raise ConfigError("give --policy DIR (repeat it with --split for an A/B test) or --experiment YAML")
            cfg = ServeConfig(
                policy=spec.arms[0].policy if spec is not None else (policy or [])[0],
                experiment=spec,
                log_dir=log_dir,
                exploration=exploration,
                seed=seed,
                feedback_window=feedback_window,
                default_reward=default_reward,
                log_key_env=log_key_env,
                ephemeral_log_key=ephemeral_log_key,
                rotate_mb=rotate_mb,
                fsync_interval=fsync_interval,
                flush_interval=flush_interval,
            )
            if workers > 1:
                _serve_workers(cfg, workers, host=host, port=port, api_key_env=api_key_env, max_body_mb=max_body_mb)
                return
            service = PolicyService.from_config(cfg)
            service.start()  # recover the log now, so a broken log directory fails before listening
            gc.collect()
            gc.freeze()  # the loaded policy and app never die: keep full collections from scanning them
            gc.set_threshold(50_000, 20, 100)  # fewer, shorter pauses under load (requests allocate briefly)
            app = create_app(service, api_key=api_key, max_body_bytes=int(max_body_mb * (1 << 20)))
            p = service.policy
            what = f"{p.policy_version} ({p.kind}, exploration {p.exploration})"
            if service.experiment is not None:
                e = service.experiment
                what = f"experiment {e.name}: " + ", ".join(
                    f"{a.spec.name}={a.tag.policy_version} {s:g}%" for a, s in zip(e.arms, e.split, strict=True)
                )
            console.print(
                f"serving {what} on http://{host}:{port}; log: {log_dir or 'off'}; auth: {'on' if api_key else 'off'}",
                soft_wrap=True,
            )
            uvicorn.run(app, host=host, port=port, timeout_graceful_shutdown=10, **uvicorn_options())


def _serve_workers(
    cfg: ServeConfig, workers: int, *, host: str, port: int, api_key_env: str | None, max_body_mb: float
) -> None:
    """Check the configuration once here (policies load, the key is set), then supervise the workers."""
    from adrl.serving.service import log_key_from_env
    from adrl.serving.workers import run_workers, spec_to_mapping

    if cfg.log_dir is not None and not os.environ.get(cfg.log_key_env):
        raise ConfigError(
            f"--workers {workers} with a log needs ${cfg.log_key_env} set (one hashing key for every worker; "
            "--ephemeral-log-key would give each worker its own)"
        )
    log_key_from_env(cfg.log_key_env, logging=cfg.log_dir is not None, ephemeral=False)
    probe = PolicyService.from_config(ServeConfig(**{**cfg.__dict__, "log_dir": None}))  # loads every arm
    config = {
        "policy": str(cfg.policy.resolve()), "exploration": cfg.exploration, "seed": cfg.seed,
        "feedback_window": cfg.feedback_window, "default_reward": cfg.default_reward, "log_key_env": cfg.log_key_env,
        "ephemeral_log_key": cfg.ephemeral_log_key, "rotate_mb": cfg.rotate_mb, "fsync_interval": cfg.fsync_interval,
        "flush_interval": cfg.flush_interval, "experiment": spec_to_mapping(cfg.experiment),
        "api_key_env": api_key_env, "max_body_bytes": int(max_body_mb * (1 << 20)),
    }  # fmt: skip
    console.print(
        f"serving {probe.policy.policy_version}{' (experiment)' if probe.experiment else ''} with {workers} workers "
        f"on http://{host}:{port}; log: {cfg.log_dir or 'off'} (worker-<k> parts)",
        soft_wrap=True,
    )
    run_workers(workers, host=host, port=port, config=config, log_dir=cfg.log_dir)
