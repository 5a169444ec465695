"""Simulate user-days under a logging policy and write them as logged decisions (``adrl simulate``)."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from adrl.actions import component_probabilities, flat_index, uniform_actions
from adrl.agents.baselines import EpsilonGreedyPolicy, GreedyPolicy, RandomPolicy, component_epsilons, sample_actions
from adrl.envs.viral import ViralVectorEnv
from adrl.errors import ConfigError
from adrl.features import FeatureLayout
from adrl.logs import LogWriter, logged_columns
from adrl.scenario import Scenario
from adrl.world import UserBatch, World

LoggingPolicyName = Literal["random", "epsilon-greedy"]
MAX_USER_DAYS = 1_000_000_000  # one run's bound (about 10^10 logged rows); more is a mistake, not a workload
MAX_CHUNK_USERS = 1 << 22  # a chunk's arrays are held in memory at once


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

    @classmethod
    def from_totals(cls, totals: dict[str, float], n_users: int, seconds: float, out: Path | str) -> SimulationSummary:
        """The summary of ``n_users`` user-days from the sums kept by :func:`_add_to_totals`."""
        imps = int(totals["impressions"])
        return cls(
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


def _new_totals() -> dict[str, float]:
    return dict(decisions=0, impressions=0, clicks=0, conversions=0, leaves=0, reward=0.0)


def _add_to_totals(totals: dict[str, float], cols: dict[str, Any]) -> None:
    """Add one chunk of logged columns to the running sums of a simulation."""
    totals["decisions"] += len(cols["step"])
    totals["impressions"] += int(cols["shown"].sum())
    totals["clicks"] += int(cols["click"].sum())
    totals["conversions"] += int(cols["conversion"].sum())
    totals["leaves"] += int(cols["leave"].sum())
    totals["reward"] += float(cols["reward"].sum())


def make_logging_policy(
    name: str, scenario: Scenario, *, epsilon: float | Sequence[float] = 0.3
) -> RandomPolicy | EpsilonGreedyPolicy:
    """The named logging policy; ε-greedy explores uniformly around the myopic greedy targeting rule, with one rate
    for every action component or three (delay, slot, creative)."""
    if name == "random":
        return RandomPolicy(scenario)
    if name == "epsilon-greedy":
        return EpsilonGreedyPolicy(GreedyPolicy(scenario), epsilon)
    raise ValueError(f"unknown logging policy {name!r}; expected 'random' or 'epsilon-greedy'")


def _logging_policy(policy: LoggingPolicyName | object, scenario: Scenario, epsilon: float | Sequence[float]) -> Any:
    """A named logging policy built for ``scenario``, or the given policy object as it is."""
    return make_logging_policy(policy, scenario, epsilon=epsilon) if isinstance(policy, str) else policy


def parse_epsilon(text: str) -> tuple[float, float, float]:
    """``0.3`` or ``1,0.5,0.3`` (delay, slot, creative) as three checked rates; ConfigError names the flag."""
    try:
        values = [float(v) for v in text.split(",")]
        return component_epsilons(values, "--epsilon")
    except ValueError as e:
        detail = str(e) if "--epsilon" in str(e) else f"--epsilon {text!r} is not a number or a comma-separated list"
        expected = "expected one rate in [0, 1] or three 'delay,slot,creative', e.g. 1,0.5,0.3"
        raise ConfigError(f"{detail}; {expected}") from None


def logged_actions(
    policy: object, obs: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Sample actions and return them with their joint and per-component propensities (closed form when known)."""
    n = obs.shape[0]
    if isinstance(policy, RandomPolicy):
        nvec = policy.nvec
        action = uniform_actions(nvec, n, rng)
        comps = tuple(np.full(n, 1.0 / k) for k in nvec)
        return action, np.full(n, 1.0 / np.prod(nvec)), (comps[0], comps[1], comps[2])
    if isinstance(policy, EpsilonGreedyPolicy):
        nvec, eps = policy.nvec, policy.epsilon
        greedy = policy.base.predict(obs)  # needed for every row: it sets the propensity of exploring rows too
        explore = policy.explore(n, rng)  # each component explores on its own
        uniform = uniform_actions(nvec, n, rng)
        action = np.where(explore, uniform, greedy)
        same = action == greedy
        comp = [(1 - eps[i]) * same[:, i] + eps[i] / nvec[i] for i in range(3)]
        return action, comp[0] * comp[1] * comp[2], (comp[0], comp[1], comp[2])
    action, probs = sample_actions(policy, obs, rng)
    nvec = policy.nvec  # type: ignore[attr-defined]
    joint = probs[np.arange(n), flat_index(action, nvec)]
    pd, ps, pc = component_probabilities(probs, nvec)
    rows = np.arange(n)
    return action, joint, (pd[rows, action[:, 0]], ps[rows, action[:, 1]], pc[rows, action[:, 2]])


def _simulate_chunk(
    world: World,
    layout: FeatureLayout,
    policy: object,
    first: int,
    n: int,
    stream: np.random.SeedSequence,
    on_decision: Callable[[UserBatch, np.ndarray], None] | None = None,
) -> list[dict[str, np.ndarray]]:
    """Simulate users ``first .. first + n`` from their own random stream; one column dict per step.

    ``on_decision(batch, obs)`` sees each step's users (hidden state included) before they act.
    """
    rng = np.random.default_rng(stream)
    batch = world.sample_users(n, rng)  # only users still in their day stay in the batch
    active = np.arange(n)
    step = 0
    out = []
    while active.size:
        obs = layout.encode(batch)
        if on_decision is not None:
            on_decision(batch, obs)
        action, prop, (pd, ps, pc) = logged_actions(policy, obs, rng)
        res = world.step(batch, action, rng)
        out.append(
            logged_columns(
                layout, obs=obs, episode_id=first + active, user_id=first + active,
                step=np.full(active.size, step, dtype=np.int32), hour=res.hour, action=action, propensity=prop,
                components=np.stack([pd, ps, pc], axis=1), shown=res.shown, click=res.click,
                conversion=res.conversion, leave=res.leave, reward=res.reward, truth=res.response,
            )
        )  # fmt: skip
        going = ~(res.terminated | res.truncated)
        if not going.all():
            active, batch = active[going], batch.take(going)
        step += 1
    return out


def _chunks(n_users: int, chunk_users: int, seed: int | None) -> Iterator[tuple[int, int, np.random.SeedSequence]]:
    """(first user, users, random stream) of each chunk; ``simulate`` and ``replay_decisions`` must agree on these."""
    n_chunks = -(-n_users // chunk_users)
    for k, stream in enumerate(np.random.SeedSequence(seed).spawn(n_chunks)):
        first = k * chunk_users
        yield first, min(chunk_users, n_users - first), stream


def _drain_one(
    pending: deque[tuple[int, Future[list[dict[str, np.ndarray]]]]],
    writer: LogWriter,
    totals: dict[str, float],
    bar: Progress,
    task: Any,
) -> None:
    """Write the oldest simulated chunk (chunks are written in order) and add it to the totals."""
    n, job = pending.popleft()
    for cols in job.result():
        writer.write(cols)
        _add_to_totals(totals, cols)
    bar.advance(task, n)


def replay_decisions(
    scenario: Scenario,
    *,
    n_users: int,
    seed: int | None,
    logging_policy: object,
    chunk_users: int = 65_536,
    on_decision: Callable[[UserBatch, np.ndarray], None],
) -> None:
    """Re-run the users of a ``simulate`` call (same arguments, same users) calling ``on_decision`` at each step."""
    world = World(scenario)
    layout = FeatureLayout.from_scenario(scenario)
    for first, n, stream in _chunks(n_users, chunk_users, seed):
        _simulate_chunk(world, layout, logging_policy, first, n, stream, on_decision)


def simulate(
    scenario: Scenario,
    *,
    n_users: int,
    out: Path | str,
    logging_policy: LoggingPolicyName | object = "epsilon-greedy",
    epsilon: float | Sequence[float] = 0.3,
    seed: int | None = 0,
    chunk_users: int = 65_536,
    workers: int = 2,
    progress: bool = True,
) -> SimulationSummary:
    """Simulate ``n_users`` user-days and write every decision to ``out`` (parquet, written atomically).

    Users are simulated in chunks of ``chunk_users``, each with its own random stream spawned from ``seed``;
    ``workers`` chunks run at once on threads (numpy releases the GIL; with the random logger this gains ~30%) and
    are written in order, so memory stays bounded and the same seed and chunk size give the same file whatever
    the number of workers.
    """
    if not 1 <= n_users <= MAX_USER_DAYS:
        raise ConfigError(f"n_users (--users) must be in 1..{MAX_USER_DAYS:,} user-days, got {n_users:,}")
    if not 1 <= chunk_users <= MAX_CHUNK_USERS:
        raise ConfigError(f"chunk_users (--chunk-users) must be in 1..{MAX_CHUNK_USERS:,}, got {chunk_users:,}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    world = World(scenario)
    layout = FeatureLayout.from_scenario(scenario)
    policy = _logging_policy(logging_policy, scenario, epsilon)
    totals = _new_totals()
    start = time.perf_counter()
    with (
        LogWriter(out, layout, truth=True, scenario_hash=scenario.content_hash) as writer,
        ThreadPoolExecutor(max_workers=workers, thread_name_prefix="adrl-simulate") as pool,
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
        pending: deque[tuple[int, Future[list[dict[str, np.ndarray]]]]] = deque()
        try:
            for first, n, stream in _chunks(n_users, chunk_users, seed):
                pending.append((n, pool.submit(_simulate_chunk, world, layout, policy, first, n, stream)))
                if len(pending) == workers:  # keep `workers` chunks in flight; write the oldest
                    _drain_one(pending, writer, totals, bar, task)
            while pending:
                _drain_one(pending, writer, totals, bar, task)
        finally:
            for _, job in pending:
                job.cancel()
    return SimulationSummary.from_totals(totals, n_users, time.perf_counter() - start, out)


def simulate_viral(
    scenario: Scenario,
    *,
    n_users: int,
    n_days: int,
    out: Path | str,
    logging_policy: LoggingPolicyName | object = "epsilon-greedy",
    epsilon: float | Sequence[float] = 0.3,
    seed: int | None = 0,
) -> SimulationSummary:
    """Log ``n_days`` days of the population env (``adrl/AdPlacement-Viral-v0``: ``n_users`` users of the scenario's
    graph living the day together) under a logging policy; the log carries a ``share`` column.

    Each day is a fresh reset of the population (its own seed spawned from ``seed``); every user's day is logged
    (``episode_id`` = day · n_users + user, ``user_id`` = day · n_users + user), and a user whose day ended keeps
    acting in their next day, unlogged, until the last user's day ends. Rewards include the organic conversions
    credited to a share (see :mod:`adrl.envs.viral`): users interfere, which per-user off-policy estimators do not
    model.
    """
    if n_days < 1:
        raise ValueError(f"n_days must be >= 1, got {n_days}")
    env = ViralVectorEnv(n_users, scenario)
    sc, layout = env.scenario, env.layout
    policy = _logging_policy(logging_policy, sc, epsilon)
    n = env.num_envs
    totals = _new_totals()
    start = time.perf_counter()
    with LogWriter(out, layout, truth=True, share=True, scenario_hash=sc.content_hash) as writer:
        for day, stream in enumerate(np.random.SeedSequence(seed).spawn(n_days)):
            env_seed, policy_stream = stream.spawn(2)
            rng = np.random.default_rng(policy_stream)
            obs, _ = env.reset(seed=int(env_seed.generate_state(1)[0]))
            alive = np.ones(n, dtype=bool)
            step = 0
            while alive.any():
                action, prop, (pd, ps, pc) = logged_actions(policy, obs, rng)
                next_obs, reward, terminated, truncated, info = env.step(action)
                rows = np.flatnonzero(alive)
                cols = logged_columns(
                    layout, obs=obs[rows], episode_id=day * n + rows, user_id=day * n + rows,
                    step=np.full(rows.size, step, dtype=np.int32), hour=info["hour"][rows], action=action[rows],
                    propensity=prop[rows], components=np.stack([pd, ps, pc], axis=1)[rows],
                    shown=info["shown"][rows], click=info["click"][rows], conversion=info["conversion"][rows],
                    leave=info["leave"][rows], reward=reward[rows], share=(info["share"][rows], info["p_share"][rows]),
                    truth=(info["p_click"][rows], info["p_conversion"][rows], info["p_leave"][rows]),
                )  # fmt: skip
                writer.write(cols)
                _add_to_totals(totals, cols)
                alive &= ~(terminated | truncated)
                obs = next_obs
                step += 1
    return SimulationSummary.from_totals(totals, n * n_days, time.perf_counter() - start, out)
