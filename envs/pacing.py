"""Scenario sanity: does pacing beat the always-show-now greedy policy? Returns per user-day on the fast path.

:func:`episode_returns` plays exactly one day per user for ``n_episodes`` users stepped together in an
:class:`~adrl.envs.vector.AdPlacementVectorEnv`; the same seed gives the same users (common random numbers) to
every policy compared. :func:`choose_pacing_gap` picks the ``min_gap`` of ``PacingPolicy`` for a scenario by a
small search on its own seed (evaluate the chosen gap on another seed to avoid selection bias).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from adrl.agents.baselines import PacingPolicy
from adrl.envs.ad_placement import BehaviorModel
from adrl.envs.vector import AdPlacementVectorEnv
from adrl.errors import ConfigError
from adrl.scenario import Scenario, resolve_scenario

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
