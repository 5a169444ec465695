"""Online evaluation of policies in a simulator: batched user-days, metrics with 95% CIs, per-segment views.

Every policy meets the same users: the population is drawn from ``seed`` once and each policy's outcomes from its
own stream spawned from the same seed, so differences between policies are not differences between audiences.

The pacing search lives here too, because it *is* evaluation: :func:`search_pacing_gap` picks the ``min_gap`` of
``PacingPolicy`` on the simulator a run trains on (the fair bar, tuned like the agents); :func:`episode_returns`
plays one day per user on the vector env's fast path and :func:`choose_pacing_gap` searches the ground truth on its
own seed (evaluate the chosen gap on another seed to avoid selection bias).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.progress import Progress

from adrl.agents.baselines import PacingPolicy, tune_pacing_gap
from adrl.envs.ad_placement import BehaviorModel
from adrl.envs.pessimistic import pessimism_weights
from adrl.envs.vector import AdPlacementVectorEnv
from adrl.errors import ConfigError
from adrl.features import FeatureLayout
from adrl.protocols import ResponseModel
from adrl.scenario import HOURS_PER_DAY, Scenario, resolve_scenario
from adrl.world import World

Z95 = 1.959963984540054


@dataclass(frozen=True)
class Metrics:
    """Per user-day metrics of one policy (or one segment under it)."""

    n_users: int
    mean_return: float
    ci_low: float
    ci_high: float
    sem: float
    ctr: float  # clicks per impression
    conversion_rate: float  # conversions per impression
    impressions_per_user: float
    churn_rate: float  # users who left before the day ended
    revenue_per_user: float  # click value + conversion value, before slot costs
    cost_per_user: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass
class Evaluation:
    """Metrics of one policy overall and by segment, with what it showed by hour (delay, slot, creative)."""

    name: str
    overall: Metrics
    by_segment: dict[str, Metrics]
    returns: np.ndarray = field(repr=False)  # (n_users,)
    shown_by_hour: np.ndarray = field(repr=False)  # (24,) impressions per user at each hour of day
    slot_by_hour: np.ndarray = field(repr=False)  # (24, n_slots) impression counts
    creative_by_hour: np.ndarray = field(repr=False)  # (24, n_creatives)
    delay_by_hour: np.ndarray = field(repr=False)  # (24, n_delays) decisions by decision hour

    def as_dict(self) -> dict[str, Any]:
        return {
            "policy": self.name,
            **self.overall.as_dict(),
            "by_segment": {k: v.as_dict() for k, v in self.by_segment.items()},
            "shown_by_hour": self.shown_by_hour.tolist(),
        }


def _metrics(ret: np.ndarray, imps: np.ndarray, clicks: np.ndarray, convs: np.ndarray, left: np.ndarray,
             revenue: np.ndarray, cost: np.ndarray) -> Metrics:  # fmt: skip
    n = int(ret.size)
    mean = float(ret.mean()) if n else math.nan
    sem = float(ret.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    total_imps = float(imps.sum())
    return Metrics(
        n_users=n,
        mean_return=mean,
        ci_low=mean - Z95 * sem,
        ci_high=mean + Z95 * sem,
        sem=sem,
        ctr=float(clicks.sum() / total_imps) if total_imps else 0.0,
        conversion_rate=float(convs.sum() / total_imps) if total_imps else 0.0,
        impressions_per_user=total_imps / n if n else math.nan,
        churn_rate=float(left.mean()) if n else math.nan,
        revenue_per_user=float(revenue.mean()) if n else math.nan,
        cost_per_user=float(cost.mean()) if n else math.nan,
    )


MAX_EPISODES = 10_000_000  # per policy: six float64 outcomes per user-day are held in memory (~0.5 GB at the bound)


def evaluate_policy(
    policy: Any,
    scenario: Scenario,
    *,
    n_episodes: int,
    seed: int,
    response: ResponseModel | None = None,
    deterministic: bool = True,
    name: str = "policy",
    batch_size: int = 65_536,
    pessimistic: bool = False,
) -> Evaluation:
    """Run ``n_episodes`` user-days of ``policy`` in ``scenario`` (ground truth when ``response`` is None).

    ``policy`` follows the Policy protocol (``predict(obs, deterministic=...)``). Users come from ``seed`` (the same
    for every policy); outcome draws from a stream spawned from it. ``pessimistic``: the return is the objective a
    behavior ensemble's pessimistic mode trains on (each impression's reward − λ · disagreement − κ · support width,
    with the ensemble's own λ and κ; :mod:`adrl.envs.pessimistic`); other figures are unchanged.
    """
    if not 2 <= n_episodes <= MAX_EPISODES:
        raise ConfigError(
            f"n_episodes (--episodes) must be in 2..{MAX_EPISODES:,} user-days (2 for a confidence interval; each "
            f"user-day's outcomes are held in memory), got {n_episodes:,}"
        )
    world = World(scenario)
    penalties = _penalties(response) if pessimistic else None
    layout = FeatureLayout.from_scenario(scenario)
    rewards = scenario.reward_table
    n_slots, n_cr, n_d = scenario.n_slots, scenario.n_creatives, scenario.n_delays
    ret = np.zeros(n_episodes)
    imps = np.zeros(n_episodes)
    clicks = np.zeros(n_episodes)
    convs = np.zeros(n_episodes)
    left = np.zeros(n_episodes, dtype=bool)
    revenue = np.zeros(n_episodes)
    cost = np.zeros(n_episodes)
    segment = np.zeros(n_episodes, dtype=np.int64)
    slot_by_hour = np.zeros((HOURS_PER_DAY, n_slots))
    creative_by_hour = np.zeros((HOURS_PER_DAY, n_cr))
    delay_by_hour = np.zeros((HOURS_PER_DAY, n_d))
    user_seq, outcome_seq = np.random.SeedSequence(seed).spawn(2)
    user_rng = np.random.default_rng(user_seq)
    outcome_rng = np.random.default_rng(outcome_seq)
    for first in range(0, n_episodes, batch_size):
        n = min(batch_size, n_episodes - first)
        batch = world.sample_users(n, user_rng)
        segment[first : first + n] = batch.segment
        active = np.arange(first, first + n)
        while active.size:
            obs = layout.encode(batch)
            action = world.check_actions(policy.predict(obs, deterministic=deterministic))
            decision_hour = obs[:, layout.index("hour")].astype(np.int64)
            res = world.step(batch, action, outcome_rng, response)
            ret[active] += res.reward if penalties is None else res.reward - np.where(res.shown, penalties(), 0.0)
            imps[active] += res.shown
            clicks[active] += res.click
            convs[active] += res.conversion
            left[active] |= res.leave
            revenue[active] += rewards.revenue(res.click, res.conversion, action[:, 2])
            cost[active] += np.where(res.shown, rewards.slot_cost[action[:, 1]], 0.0)
            shown = res.shown
            np.add.at(slot_by_hour, (res.hour[shown], action[shown, 1]), 1)
            np.add.at(creative_by_hour, (res.hour[shown], action[shown, 2]), 1)
            np.add.at(delay_by_hour, (decision_hour, action[:, 0]), 1)
            going = ~(res.terminated | res.truncated)
            if not going.all():
                active, batch = active[going], batch.take(going)
    overall = _metrics(ret, imps, clicks, convs, left, revenue, cost)
    by_segment = {}
    for k, seg in enumerate(scenario.segments):
        m = segment == k
        by_segment[seg.name] = _metrics(ret[m], imps[m], clicks[m], convs[m], left[m], revenue[m], cost[m])
    return Evaluation(
        name=name,
        overall=overall,
        by_segment=by_segment,
        returns=ret,
        shown_by_hour=slot_by_hour.sum(axis=1) / n_episodes,
        slot_by_hour=slot_by_hour,
        creative_by_hour=creative_by_hour,
        delay_by_hour=delay_by_hour,
    )


def _penalties(response: Any) -> Callable[[], np.ndarray] | None:
    """``() -> (n,)`` λ · disagreement + κ · support width of the response's last call (the response's own weights,
    as :class:`~adrl.envs.pessimistic.PessimisticVectorEnv` reads them); None when both are 0."""
    lam, kappa = pessimism_weights(response)
    if lam == 0 and kappa == 0:
        return None

    def last() -> np.ndarray:
        p = lam * np.asarray(response.last_disagreement, dtype=np.float64)
        if kappa:
            p = p + kappa * np.asarray(response.last_support_width, dtype=np.float64)
        return p

    return last


def evaluate_policies(
    policies: dict[str, Any],
    scenario: Scenario,
    *,
    n_episodes: int,
    seed: int,
    response: ResponseModel | None = None,
    progress: bool = False,
    pessimistic: bool = False,
) -> list[Evaluation]:
    """Evaluate each named policy on the same users; returns one ``Evaluation`` per policy, in order
    (``pessimistic``: see :func:`evaluate_policy`)."""
    out = []
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("evaluating", total=len(policies))
        for name, policy in policies.items():
            out.append(
                evaluate_policy(policy, scenario, n_episodes=n_episodes, seed=seed, response=response, name=name,
                                pessimistic=pessimistic)
            )  # fmt: skip
            bar.advance(task)
    return out


def relative_gain(a: Evaluation, b: Evaluation) -> float:
    """(mean return of a − mean return of b) / |mean return of b|."""
    return (a.overall.mean_return - b.overall.mean_return) / abs(b.overall.mean_return)


# ---- the pacing search --------------------------------------------------------------------------------------
DEFAULT_GAPS = (1, 2, 3, 4, 5, 6, 8)


@dataclass(frozen=True)
class ReturnSummary:
    """Mean return per user-day with its standard error and a normal 95% interval."""

    mean: float
    sem: float
    n: int

    @property
    def ci95(self) -> tuple[float, float]:
        return self.mean - 1.96 * self.sem, self.mean + 1.96 * self.sem

    @classmethod
    def of(cls, returns: np.ndarray) -> ReturnSummary:
        n = int(returns.size)
        sem = float(returns.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
        return cls(mean=float(returns.mean()), sem=sem, n=n)


def episode_returns(
    policy: object,
    scenario: Scenario | Path | str | None = None,
    *,
    n_episodes: int,
    seed: int,
    behavior_model: BehaviorModel | None = None,
) -> np.ndarray:
    """Return of one day for each of ``n_episodes`` users under ``policy`` (anything with ``predict(obs)``).

    Returns:
        float64 array, shape (n_episodes,).
    """
    if n_episodes < 1:
        raise ConfigError(f"n_episodes must be >= 1, got {n_episodes}")
    predict = getattr(policy, "predict", None)
    if predict is None:
        raise ConfigError(f"policy must have predict(obs, deterministic=...), got {type(policy).__name__}")
    envs = AdPlacementVectorEnv(n_episodes, scenario, behavior_model)
    obs, _ = envs.reset(seed=seed)
    returns = np.zeros(n_episodes)
    running = np.ones(n_episodes, dtype=bool)
    while running.any():  # every step advances each day by >= 1 epoch, so this ends within the horizon
        action = np.asarray(predict(obs, deterministic=True))
        obs, reward, terminated, truncated, _ = envs.step(action)
        returns += np.where(running, reward, 0.0)
        running &= ~(terminated | truncated)
    return returns


def pacing_gap_search(
    scenario: Scenario | Path | str | None = None,
    seed: int = 0,
    *,
    gaps: Sequence[int] = DEFAULT_GAPS,
    n_episodes: int = 20_000,
) -> dict[int, float]:
    """Mean return per user-day of ``PacingPolicy(min_gap=g)`` on the ground truth, for each ``g`` in ``gaps``.

    Every candidate sees the same ``n_episodes`` users (seeded by ``seed``). Gaps beyond what the delay grid can
    express behave alike (with delays (0, 1, 2, 4), every gap >= 4 waits 4 hours after each ad).
    """
    sc = resolve_scenario(scenario)
    if not gaps or any(int(g) < 1 for g in gaps):
        raise ConfigError(f"gaps must be hours >= 1, got {list(gaps)}")
    return {
        int(g): float(episode_returns(PacingPolicy(sc, int(g)), sc, n_episodes=n_episodes, seed=seed).mean())
        for g in gaps
    }


def choose_pacing_gap(
    scenario: Scenario | Path | str | None = None,
    seed: int = 0,
    *,
    gaps: Sequence[int] = DEFAULT_GAPS,
    n_episodes: int = 20_000,
) -> int:
    """The ``min_gap`` (hours) with the highest mean return of ``PacingPolicy`` on the ground truth.

    See :func:`pacing_gap_search`; ties go to the smaller gap. Default scenario: 4 (see
    ``benchmarks/pacing_vs_greedy.py``).
    """
    means = pacing_gap_search(scenario, seed, gaps=gaps, n_episodes=n_episodes)
    return max(means, key=lambda g: (means[g], -g))


def simulator_score(
    scenario: Scenario, response: Any = None, *, seed: int = 0, n_episodes: int = 4000, pessimistic: bool = True
) -> Callable[[Any], float]:
    """``policy -> mean return per user-day`` in ``response`` (None: the ground truth) on the same ``n_episodes``
    users of ``seed``: what rules are tuned by, on the simulator a run is for. ``pessimistic``: the objective agents
    train on there (an ensemble's pessimistic mode, its own λ and κ), so rules are tuned the way agents are."""

    def score(policy: Any) -> float:
        evaluation = evaluate_policy(policy, scenario, n_episodes=n_episodes, seed=seed, response=response,
                                     pessimistic=pessimistic)  # fmt: skip
        return evaluation.overall.mean_return

    return score


def search_pacing_gap(
    scenario: Scenario,
    value_model: Any,
    response: Any,
    *,
    seed: int = 0,
    gaps: tuple[int, ...] = (1, 2, 3, 4, 5, 6),
    n_episodes: int = 4000,
) -> int:
    """The ``min_gap`` with the best mean return of pacing in the simulator ``response`` (None: ground truth).

    Searching on the simulator the policy is built for keeps the ground truth out of a learned-simulator run.
    """

    score = simulator_score(scenario, response, seed=seed, n_episodes=n_episodes)
    return tune_pacing_gap(scenario, value_model, score, gaps)
