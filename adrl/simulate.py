"""Simulate user-days under a logging policy and write them as logged decisions (``adrl simulate``)."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from adrl.agents.base import component_probabilities, flat_index
from adrl.agents.baselines import EpsilonGreedyPolicy, GreedyPolicy, RandomPolicy, sample_actions
from adrl.features import LOG_PREFIX, FeatureLayout
from adrl.logs import LogWriter
from adrl.scenario import Scenario
from adrl.world import World

LoggingPolicyName = Literal["random", "epsilon-greedy"]


@dataclass(frozen=True)
class SimulationSummary:
    n_users: int
    n_decisions: int
    n_impressions: int
    ctr: float
    conversion_rate: float  # conversions per click
    churn_rate: float  # users who left before the day ended
    impressions_per_user: float
    mean_return: float  # reward per user-day
    seconds: float
    impressions_per_second: float
    out: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def make_logging_policy(name: str, scenario: Scenario, *, epsilon: float = 0.3) -> RandomPolicy | EpsilonGreedyPolicy:
    """The named logging policy; ε-greedy explores uniformly around the myopic greedy targeting rule."""
    if name == "random":
        return RandomPolicy(scenario)
    if name == "epsilon-greedy":
        return EpsilonGreedyPolicy(GreedyPolicy(scenario), epsilon)
    raise ValueError(f"unknown logging policy {name!r}; expected 'random' or 'epsilon-greedy'")


def logged_actions(
    policy: object, obs: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Sample actions and return them with their joint and per-component propensities (closed form when known)."""
    n = obs.shape[0]
    if isinstance(policy, RandomPolicy):
        nvec = policy.nvec
        action = np.stack([rng.integers(0, k, n) for k in nvec], axis=1)
        comps = tuple(np.full(n, 1.0 / k) for k in nvec)
        return action, np.full(n, 1.0 / np.prod(nvec)), (comps[0], comps[1], comps[2])
    if isinstance(policy, EpsilonGreedyPolicy):
        nvec, eps = policy.nvec, policy.epsilon
        greedy = policy.base.predict(obs)
        explore = rng.random((n,)) < eps
        uniform = np.stack([rng.integers(0, k, n) for k in nvec], axis=1)
        action = np.where(explore[:, None], uniform, greedy)
        same = action == greedy
        joint = (1 - eps) * same.all(axis=1) + eps / np.prod(nvec)
        comp = [(1 - eps) * same[:, i] + eps / nvec[i] for i in range(3)]
        return action, joint, (comp[0], comp[1], comp[2])
    action, probs = sample_actions(policy, obs, rng)
    nvec = policy.nvec  # type: ignore[attr-defined]
    joint = probs[np.arange(n), flat_index(action, nvec)]
    pd, ps, pc = component_probabilities(probs, nvec)
    rows = np.arange(n)
    return action, joint, (pd[rows, action[:, 0]], ps[rows, action[:, 1]], pc[rows, action[:, 2]])


def simulate(
    scenario: Scenario,
    *,
    n_users: int,
    out: Path | str,
    logging_policy: LoggingPolicyName | object = "epsilon-greedy",
    epsilon: float = 0.3,
    seed: int | None = 0,
    chunk_users: int = 65_536,
    progress: bool = True,
) -> SimulationSummary:
    """Simulate ``n_users`` user-days and write every decision to ``out`` (parquet, written atomically).

    Users are simulated in chunks of ``chunk_users`` with independent random streams spawned from ``seed``,
    so memory stays bounded and the same seed gives the same file.
    """
    if n_users < 1:
        raise ValueError(f"n_users must be >= 1, got {n_users}")
    if chunk_users < 1:
        raise ValueError(f"chunk_users must be >= 1, got {chunk_users}")
    world = World(scenario)
    layout = FeatureLayout.from_scenario(scenario)
    policy = (
        make_logging_policy(logging_policy, scenario, epsilon=epsilon)
        if isinstance(logging_policy, str)
        else logging_policy
    )
    n_chunks = -(-n_users // chunk_users)
    streams = np.random.SeedSequence(seed).spawn(n_chunks)
    feat_cols = [LOG_PREFIX + n for n in layout.obs_names]
    totals = dict(decisions=0, impressions=0, clicks=0, conversions=0, leaves=0, reward=0.0)
    start = time.perf_counter()
    with (
        LogWriter(out, layout, truth=True, scenario_hash=scenario.content_hash) as writer,
        Progress(
            TextColumn("simulating"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("users"),
            TimeRemainingColumn(),
            disable=not progress,
            transient=True,
        ) as bar,
    ):
        task = bar.add_task("simulate", total=n_users)
        for k in range(n_chunks):
            rng = np.random.default_rng(streams[k])
            first = k * chunk_users
            n = min(chunk_users, n_users - first)
            batch = world.sample_users(n, rng)
            active = np.arange(n)
            step = 0
            while active.size:
                sub = batch.take(active)
                obs = layout.encode(sub)
                action, prop, (pd, ps, pc) = logged_actions(policy, obs, rng)
                res = world.step(sub, action, rng)
                batch.assign(active, sub)
                cols: dict[str, np.ndarray] = {
                    "episode_id": first + active,
                    "user_id": first + active,
                    "step": np.full(active.size, step, dtype=np.int32),
                    "hour": res.hour,
                    "delay": action[:, 0],
                    "slot": action[:, 1],
                    "creative": action[:, 2],
                    "propensity": prop,
                    "propensity_delay": pd,
                    "propensity_slot": ps,
                    "propensity_creative": pc,
                    "shown": res.shown,
                    "click": res.click,
                    "conversion": res.conversion,
                    "leave": res.leave,
                    "reward": res.reward,
                    "p_click": res.response.p_click,
                    "p_conversion": res.response.p_conversion,
                    "p_leave": res.response.p_leave,
                }
                cols.update(zip(feat_cols, obs.T, strict=True))
                writer.write(cols)
                totals["decisions"] += active.size
                totals["impressions"] += int(res.shown.sum())
                totals["clicks"] += int(res.click.sum())
                totals["conversions"] += int(res.conversion.sum())
                totals["leaves"] += int(res.leave.sum())
                totals["reward"] += float(res.reward.sum())
                active = active[~(res.terminated | res.truncated)]
                step += 1
            bar.advance(task, n)
    seconds = time.perf_counter() - start
    imps = int(totals["impressions"])
    return SimulationSummary(
        n_users=n_users,
        n_decisions=int(totals["decisions"]),
        n_impressions=imps,
        ctr=totals["clicks"] / max(imps, 1),
        conversion_rate=totals["conversions"] / max(totals["clicks"], 1),
        churn_rate=totals["leaves"] / n_users,
        impressions_per_user=imps / n_users,
        mean_return=totals["reward"] / n_users,
        seconds=seconds,
        impressions_per_second=imps / seconds if seconds > 0 else float("inf"),
        out=str(out),
    )
