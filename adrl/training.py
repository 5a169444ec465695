"""Training runs: a run directory with config copy, metrics.csv, TensorBoard events, checkpoints, resume, plots.

``runs/<name>/``::

    config.yaml          the resolved agent config (preset + overrides) and run options
    metrics.csv          one row per log interval, appended and flushed (survives a kill)
    tb/                  TensorBoard events
    checkpoints/step-N/  agent saves, written to a temp dir and renamed (a kill never leaves a half checkpoint)
    learning_curve.png   mean episode return against environment steps
    policy/              the exported policy artifact (manifest.json + weights), loadable by adrl.load_policy

Interrupts (Ctrl-C, SIGTERM) are turned into a clean stop at the next log interval: the agent is checkpointed and
``--resume`` continues from there. After a SIGKILL, ``--resume`` continues from the last periodic checkpoint and
drops the metrics rows logged after it, so the curve has no duplicated steps.
"""

from __future__ import annotations

import csv
import importlib
import math
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import yaml
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from adrl.agents.factory import load_preset, make_agent
from adrl.agents.registry import AGENTS, Score, load_policy_artifact
from adrl.envs.pessimistic import PessimisticVectorEnv
from adrl.envs.registration import GROUND_TRUTH_ID, LEARNED_ID, VIRAL_ID
from adrl.errors import ConfigError
from adrl.evaluation import simulator_score
from adrl.features import FeatureLayout
from adrl.io import atomic_open, check_output, read_yaml_mapping
from adrl.scenario import Scenario, resolve_scenario

MAX_STEPS = 10**12  # user-decisions in one run: weeks of training at the fastest agent's speed
MAX_ENVS = 1 << 20
RUNNING_TOTALS = ("episodes", "wall_seconds")  # metrics that count from the run's start, across resumes
METRIC_COLUMNS = ("step", "wall_seconds", "steps_per_second", "episodes", "mean_return", "loss", "epsilon", "entropy")
StepCallback = Callable[[Any, int, dict[str, float]], bool]


class StopRequested:
    """Set by SIGINT/SIGTERM handlers; training callbacks return False once it is set."""

    def __init__(self) -> None:
        self.requested = False
        self.signal_name = ""

    @contextmanager
    def installed(self) -> Iterator[StopRequested]:
        def handler(signum: int, frame: FrameType | None) -> None:
            if self.requested:  # a second Ctrl-C stops at once
                raise KeyboardInterrupt
            self.requested = True
            self.signal_name = signal.Signals(signum).name

        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            for s in previous:
                signal.signal(s, handler)
        except ValueError:  # not the main thread (e.g. under a test runner thread): no handlers
            previous = {}
        try:
            yield self
        finally:
            for s, h in previous.items():
                signal.signal(s, h)


class RunDir:
    """A training run's directory; see the module docstring for its layout."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.checkpoints = self.path / "checkpoints"
        self.metrics_path = self.path / "metrics.csv"
        self.policy_path = self.path / "policy"
        self._tb: Any = None
        self._csv_file: Any = None
        self._csv: Any = None

    # ---- creation and resume ------------------------------------------------------------------------------------
    @classmethod
    def create(cls, path: Path | str, config: dict[str, Any], *, resume: bool, force: bool = False) -> RunDir:
        """Start a new run (replacing an existing one only with ``force``) or reopen one for ``resume``."""
        run = cls(Path(path))
        check_output(run.path, kind="directory", force=force or resume, also="--resume to continue it")
        exists = run.path.exists() and any(run.path.iterdir())
        if resume:
            if not exists:
                raise ConfigError(f"--resume: run directory {run.path} does not exist or is empty")
            saved = run.load_config()
            for key in ("agent", "env"):
                if key in saved and key in config and saved[key] != config[key]:
                    raise ConfigError(
                        f"--resume: {run.path} was started with {key}={saved[key]!r}, not {config[key]!r}"
                    )
        elif exists:  # --force: a new run in its place (the old one goes first, so no file of it is mistaken as new)
            shutil.rmtree(run.path)
        run.path.mkdir(parents=True, exist_ok=True)
        run.checkpoints.mkdir(exist_ok=True)
        if not resume:
            with atomic_open(run.path / "config.yaml") as f:
                yaml.safe_dump(config, f, sort_keys=False)
        return run

    def load_config(self) -> dict[str, Any]:
        path = self.path / "config.yaml"
        if not path.is_file():
            raise ConfigError(f"{path} is missing; {self.path} is not an adrl run directory")
        return read_yaml_mapping(path, what="run config")

    def latest_checkpoint(self) -> tuple[Path, int] | None:
        """The newest complete checkpoint and its step, if any."""
        found = []
        for p in self.checkpoints.glob("step-*"):
            try:
                step = int(p.name.removeprefix("step-"))
            except ValueError:
                continue
            if (p / "manifest.json").is_file():
                found.append((step, p))
        if not found:
            return None
        step, p = max(found)
        return p, step

    def checkpoint(self, agent: Any, step: int, *, keep: int = 2) -> Path:
        """Save ``agent`` as ``checkpoints/step-<step>`` atomically (temp dir + rename); keep the newest ``keep``."""
        final = self.checkpoints / f"step-{step:012d}"
        tmp = self.checkpoints / f".tmp-step-{step:012d}"
        shutil.rmtree(tmp, ignore_errors=True)
        agent.save(tmp)
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        olds = sorted(p for p in self.checkpoints.glob("step-*") if p != final)
        for old in olds[: max(0, len(olds) - (keep - 1))]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    # ---- metrics --------------------------------------------------------------------------------------------
    def open_metrics(self, *, resume_step: int | None) -> dict[str, float]:
        """Open metrics.csv for appending; on resume drop rows past ``resume_step`` (logged after the checkpoint).

        Returns the running totals the kept rows reached (``episodes``, ``wall_seconds``; 0 for a new run): a
        resumed run's rows continue from them (a learner counts its episodes and time from its own start)."""
        rows: list[dict[str, str]] = []
        if resume_step is not None and self.metrics_path.is_file():
            with open(self.metrics_path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if r.get("step", "").isdigit() and int(r["step"]) <= resume_step]
        with atomic_open(self.metrics_path, "w") as f:
            w = csv.DictWriter(f, fieldnames=METRIC_COLUMNS)
            w.writeheader()
            w.writerows(rows)
        self._csv_file = open(self.metrics_path, "a", newline="")  # noqa: SIM115 - closed in close()
        self._csv = csv.DictWriter(self._csv_file, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
        from torch.utils.tensorboard import SummaryWriter

        self._tb = SummaryWriter(log_dir=str(self.path / "tb"), purge_step=resume_step)
        totals = dict.fromkeys(RUNNING_TOTALS, 0.0)
        for r in rows:
            for k in RUNNING_TOTALS:
                value = _number(r.get(k))
                if math.isfinite(value):
                    totals[k] = value
        return totals

    def log(self, step: int, stats: dict[str, float]) -> None:
        row = {k: stats.get(k, math.nan) for k in METRIC_COLUMNS}
        row["step"] = step
        self._csv.writerow(row)
        self._csv_file.flush()
        for k, v in stats.items():
            if isinstance(v, int | float) and math.isfinite(v):
                self._tb.add_scalar(f"train/{k}", v, step)

    def read_metrics(self) -> list[dict[str, float]]:
        if not self.metrics_path.is_file():
            return []
        with open(self.metrics_path, newline="") as f:
            return [{k: float(v) if v not in ("", None) else math.nan for k, v in r.items()} for r in csv.DictReader(f)]

    def close(self) -> None:
        if self._csv_file is not None:
            self._csv_file.close()
            self._csv_file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def plot_learning_curve(self, title: str) -> Path:
        """Write learning_curve.png: mean episode return against environment steps."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = [r for r in self.read_metrics() if math.isfinite(r.get("mean_return", math.nan))]
        fig, ax = plt.subplots(figsize=(7, 4))
        if rows:
            ax.plot([r["step"] for r in rows], [r["mean_return"] for r in rows], lw=1.5)
        ax.set_xlabel("environment steps (user-decisions)")
        ax.set_ylabel("mean episode return")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        out = self.path / "learning_curve.png"
        with atomic_open(out, "wb") as f:
            fig.savefig(f, format="png", dpi=110)
        plt.close(fig)
        return out


def _number(text: str | None) -> float:
    try:
        return float(text) if text else math.nan
    except ValueError:
        return math.nan


class Throughput:
    """Steps per second between successive log calls."""

    def __init__(self, step: int) -> None:
        self.start = time.perf_counter()
        self.last_time, self.last_step = self.start, step

    def update(self, step: int) -> tuple[float, float]:
        now = time.perf_counter()
        rate = (step - self.last_step) / max(now - self.last_time, 1e-9)
        self.last_time, self.last_step = now, step
        return rate, now - self.start


@dataclass(frozen=True)
class EnvSpec:
    """A registered environment id resolved to its scenario and response backend."""

    env_id: str
    scenario: Scenario
    response: Any = None  # None: the ground-truth world; else a LearnedResponse
    behavior_path: Path | None = None

    def score(self, seed: int, n_episodes: int = 4000) -> Score:
        """Mean return of a candidate policy on this env's simulator, on ``n_episodes`` users of ``seed``."""

        return simulator_score(self.scenario, self.response, seed=seed, n_episodes=n_episodes)

    @property
    def value_model(self) -> Any:
        """What greedy and pacing rank actions by: the learned model on the learned simulator, else the truth."""
        if self.response is None:
            return None
        from adrl.behavior import BehaviorValueModel

        return BehaviorValueModel(self.response.model, self.scenario)


def resolve_env(env_id: str, scenario: Path | str | Scenario | None, behavior: Path | str | None) -> EnvSpec:
    """Check ``env_id`` and load what it needs: ``adrl/AdPlacement-Learned-v0`` requires a behavior model;
    ``adrl/AdPlacement-Viral-v0`` runs the ground truth on a graph of ``n_envs`` users (the default social section
    when the scenario has none)."""
    if env_id == GROUND_TRUTH_ID:
        if behavior is not None:
            raise ConfigError(f"--behavior is for {LEARNED_ID}; {GROUND_TRUTH_ID} is the ground-truth world")
        return EnvSpec(env_id, resolve_scenario(scenario))
    if env_id == LEARNED_ID:
        if behavior is None:
            raise ConfigError(f"{LEARNED_ID} needs --behavior DIR (a model fitted with adrl fit)")
        from adrl.behavior import LearnedResponse
        from adrl.behavior.ensemble import EnsembleResponse, is_ensemble

        sc = None if scenario is None else resolve_scenario(scenario)
        response: Any = (
            EnsembleResponse.load(behavior, sc) if is_ensemble(behavior) else LearnedResponse.load(behavior, sc)
        )
        return EnvSpec(env_id, response.scenario, response, Path(behavior))
    if env_id == VIRAL_ID:
        if behavior is not None:
            raise ConfigError(f"--behavior is for {LEARNED_ID}; {VIRAL_ID} runs the ground-truth world on a graph")
        from adrl.envs.viral import social_scenario

        return EnvSpec(env_id, social_scenario(scenario))
    raise ConfigError(f"unknown environment {env_id!r}; expected {GROUND_TRUTH_ID!r}, {LEARNED_ID!r} or {VIRAL_ID!r}")


def make_vector_env(spec: EnvSpec, num_envs: int) -> Any:
    """The native vector env of ``spec`` through ``gymnasium.make_vec`` (its vector entry point, not N envs)."""
    import gymnasium as gym

    kwargs: dict[str, Any] = {"scenario": spec.scenario}
    if spec.response is not None:
        kwargs["behavior_model"] = spec.response
    env = gym.make_vec(spec.env_id, num_envs=num_envs, vectorization_mode="vector_entry_point", **kwargs)
    if hasattr(spec.response, "last_disagreement"):  # a behavior ensemble: report (and penalise) its disagreement
        env = PessimisticVectorEnv(env)
    return env


def resolve_budget(
    preset: Any, steps: int | None, n_envs: int | None, checkpoint_every: int | None
) -> tuple[int, int, int]:
    """(steps, n_envs, checkpoint_every): each given value, else the preset's; refused unless within bounds."""
    total = steps if steps is not None else preset.steps
    n = n_envs if n_envs is not None else preset.n_envs
    every = checkpoint_every if checkpoint_every is not None else preset.checkpoint_every
    if total < 1 or n < 1 or every < 1:
        raise ConfigError(f"steps, n_envs and checkpoint_every must be >= 1, got {total}, {n}, {every}")
    if total > MAX_STEPS or n > MAX_ENVS:
        raise ConfigError(
            f"--steps must be at most {MAX_STEPS:,} and --n-envs at most {MAX_ENVS:,} (users held in memory at "
            f"once), got {total:,} and {n:,}"
        )
    return total, n, every


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
    force: bool = False,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    init_from: Path | None = None,
) -> dict[str, Any]:
    """Train (or resume) one run; returns a summary. The library path behind ``adrl train``.

    Learners train on the vector env of ``env_id`` with checkpoints every ``checkpoint_every`` steps; rules
    (greedy, pacing, random) are built and exported, pacing's gap tuned on the same simulator. ``init_from`` (a
    policy artifact of the same kind) is where a learner that supports it (``warm_start``: PPO) starts instead of
    fresh weights; a resumed run keeps its checkpoint's weights and takes only the anchor from it. ``log``
    receives one-line messages (the CLI prints them); progress is a rich bar unless ``progress`` is False.
    """
    preset = load_preset(agent_name, preset_file)
    params = {**preset.params, **(overrides or {})}
    total, n, every = resolve_budget(preset, steps, n_envs, checkpoint_every)
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
    if resume and init_from is None and (Path(out) / "config.yaml").is_file():  # the anchor a warm start kept
        saved = RunDir(Path(out)).load_config().get("init_from")
        init_from = Path(saved) if isinstance(saved, str) else None
    if init_from is not None:  # only when given, so runs without it keep the config they had
        config["init_from"] = str(init_from)
    source = _starting_policy(agent_name, init_from, spec.scenario)  # checked before the run directory is touched
    run = RunDir.create(out, config, resume=resume, force=force)
    latest = run.latest_checkpoint() if resume else None
    if resume and latest is None:  # starting over would silently rewrite the run's metrics
        run.close()
        raise ConfigError(
            f"--resume: {out} has no checkpoint to continue from; train without --resume into a new --out"
        )
    if latest is not None:
        agent = load_policy_artifact(latest[0])
        _check_same_market(agent, spec.scenario)
        start = latest[1]
        if log is not None and progress:
            log(f"resuming {out} from checkpoint at step {start:,}")
    else:
        agent = make_agent(
            agent_name, spec.scenario, params, seed=seed, value_model=spec.value_model, score=spec.score(seed or 0)
        )
        start = 0
    if source is not None:
        try:
            agent.warm_start(source, copy_weights=latest is None)
        except ConfigError as e:
            run.close()
            raise ConfigError(f"--init-from {init_from}: {e}") from None
    stop = StopRequested()
    summary: dict[str, Any] = {"run": str(run.path), "agent": agent_name, "env": env_id}
    before = run.open_metrics(resume_step=start if latest else None)
    try:
        if not callable(getattr(agent, "learn", None)):  # a rule: nothing to train
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
                    stats = {**stats, "steps_per_second": rate, "wall_seconds": before["wall_seconds"] + wall}
                    if "episodes" in stats:
                        stats["episodes"] += before["episodes"]
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


def _starting_policy(agent_name: str, init_from: Path | None, scenario: Any) -> Any:
    """The policy artifact a warm-started run begins from, loaded and checked; None without ``init_from``."""
    if init_from is None:
        return None
    able = [n for n, module in AGENTS.items() if getattr(importlib.import_module(module), "WARM_STARTS", False)]
    if agent_name not in able:
        raise ConfigError(f"--init-from: {agent_name} cannot start from a trained policy (only {', '.join(able)})")
    if not (Path(init_from) / "manifest.json").is_file():
        raise ConfigError(f"--init-from {init_from}: not a policy artifact (no manifest.json in it)")
    return load_policy_artifact(init_from, expect_layout=FeatureLayout.from_scenario(scenario))


def _check_same_market(agent: Any, scenario: Any) -> None:
    """Checkpoints store their scenario; resuming must continue in the same market."""
    if agent.scenario.content_hash != scenario.content_hash:
        raise ConfigError("--resume: the checkpoint was trained on another scenario than this run's")
