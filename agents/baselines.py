"""Baseline policies: uniform random, myopic greedy, the pacing heuristic, and an ε-mixture of any of them.

Greedy and pacing rank actions by a :class:`ValueModel`: the immediate expected reward of every action predicted
from the observation alone. :class:`WorldValueModel` is the ground truth's own model evaluated at the best guess of
the hidden state given what is observable (interest shrunk from the noisy signal, fatigue rebuilt from the
impression counts); the learned behavior model is another value model.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from adrl.actions import flat_index, joint_probabilities, sample_from, unflatten, uniform_actions
from adrl.agents.base import check_obs, one_hot
from adrl.agents.registry import (
    Score,
    check_params,
    load_policy_artifact,
    read_policy_manifest,
    register_kind,
    write_policy_manifest,
)
from adrl.errors import ArtifactError, ConfigError
from adrl.features import FeatureLayout
from adrl.scenario import HOURS_PER_DAY, Scenario
from adrl.world import World


@runtime_checkable
class ValueModel(Protocol):
    """Immediate expected reward of each action, from observations only."""

    def expected_reward(self, obs: np.ndarray, delays: np.ndarray | None = None) -> np.ndarray:
        """Shape (n, len(delays), n_slots, n_creatives); ``delays`` are delay indices (all when None)."""
        ...


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


class WorldValueModel:
    """The ground-truth response evaluated at E[hidden state | observation]."""

    def __init__(self, scenario: Scenario) -> None:
        self.world = World(scenario)
        self.layout = FeatureLayout.from_scenario(scenario)
        w = self.world
        var = w.interest_spread**2
        self.shrink = var / (var + scenario.dynamics.signal_noise**2 + 1e-12)  # per segment
        k = scenario.n_categories
        self._sig = slice(1, 1 + k)
        self._hour = self.layout.index("hour")
        self._w = [self.layout.index(f"impressions_{h}h") for h in (1, 6, 24)]
        slot0 = self.layout.index(f"slot_count_{scenario.slots[0].name}")
        self._slots = slice(slot0, slot0 + scenario.n_slots)
        c0 = self.layout.creative_count_col
        self._creatives = slice(c0, c0 + scenario.n_creatives)
        f32 = np.float32
        self._mean32 = w.interest_mean.astype(f32)
        self._shrink32 = self.shrink.astype(f32)
        self._latents32_t = np.ascontiguousarray(w.latents.T, dtype=f32)
        self._quality32 = (scenario.dynamics.quality_weight * w.quality).astype(f32)
        self._log_activity32 = w.log_activity.astype(f32)
        self._log_attention32 = w.log_attention.astype(f32)
        self._conv_base32 = (scenario.dynamics.base_conversion_logit + w.conv_propensity).astype(f32)
        self._conv_value32 = w.conversion_value.astype(f32)
        self._cost32 = w.slot_cost.astype(f32)

    def fatigue_estimate(self, obs: np.ndarray) -> np.ndarray:
        """Fatigue at the decision epoch rebuilt from impression counts by age, slot mix and wear-out."""
        w = self.world
        decay = w.decay_per_hour
        n1, n6, n24 = (obs[:, i].astype(np.float64) for i in self._w)
        aged = n1 * decay + (n6 - n1) * decay**3.5 + (n24 - n6) * decay**14
        slot_counts = obs[:, self._slots].astype(np.float64)
        total = np.maximum(slot_counts.sum(axis=1), 1.0)
        mean_annoyance = slot_counts @ w.annoyance / total
        counts = obs[:, self._creatives].astype(np.float64)
        mean_seen = (counts * (counts - 1) / 2).sum(axis=1) / total
        seg = obs[:, 0].astype(np.int64)
        return aged * mean_annoyance * w.fatigue_sens[seg] * (1 + w.dyn.wearout * mean_seen)

    def expected_reward(self, obs: np.ndarray, delays: np.ndarray | None = None) -> np.ndarray:
        w, dyn = self.world, self.world.dyn
        sc = w.scenario
        f32 = np.float32
        d_idx = np.arange(sc.n_delays) if delays is None else np.asarray(delays)
        d_hours = w.delays[d_idx]
        seg = obs[:, 0].astype(np.int64)
        signal = np.asarray(obs[:, self._sig], dtype=f32)
        mean = self._mean32[seg]
        interest = mean + self._shrink32[seg, None] * (signal - mean)
        aff = interest @ self._latents32_t  # (n, C)
        hour = (obs[:, self._hour].astype(np.int64)[:, None] + d_hours[None, :]) % HOURS_PER_DAY  # (n, D)
        fatigue = self.fatigue_estimate(obs).astype(f32)[:, None] * f32(w.decay_per_hour) ** d_hours[None, :].astype(
            f32
        )
        base = f32(dyn.affinity_weight) * aff + self._quality32  # (n, C)
        time = self._log_activity32[seg[:, None], hour] - f32(dyn.fatigue_weight) * fatigue  # (n, D)
        logit = (f32(dyn.base_click_logit) + time)[:, :, None, None] + self._log_attention32[None, None, :, None]
        # float32 throughout: ranking actions needs no more, and the (n, D, S, C) part dominates the cost
        q = logit + base[:, None, None, :]  # (n, D, S, C); the sigmoid and the rest run in place on it
        np.negative(q, out=q)
        np.exp(q, out=q)
        q += 1.0
        np.reciprocal(q, out=q)  # p_click
        p_conv = _sigmoid(self._conv_base32[seg, None] + f32(dyn.conversion_affinity_weight) * aff)
        rw = sc.rewards
        value = f32(rw.click_value) + f32(rw.conversion_weight) * self._conv_value32[None, :] * p_conv  # (n, C)
        q *= value[:, None, None, :]
        q -= self._cost32[None, None, :, None]
        churn_cost = sc.reward_table.churn_cost
        if churn_cost:  # − churn_cost · P(leave after the impression), the world's formula at the estimated fatigue
            q -= f32(churn_cost) * w.leave_grid(fatigue, seg, np.asarray(obs[:, self._creatives], dtype=f32))
        return q


class _Deterministic:
    """A policy that picks one action per observation; probabilities are one-hot."""

    nvec: tuple[int, int, int]
    obs_dim: int
    scenario: Scenario
    kind: str
    version = 1

    value_model: ValueModel

    def _save_value_model(self, path: Path) -> dict[str, str]:
        """The ground truth needs nothing saved; a learned model is copied into ``path/behavior``."""
        if isinstance(self.value_model, WorldValueModel):
            return {"value_model": "ground-truth"}
        model = getattr(self.value_model, "model", None)
        if model is None or not hasattr(model, "save"):
            raise ArtifactError(
                f"{self.kind} policy with a {type(self.value_model).__name__} value model cannot be saved; "
                "use the ground truth or a behavior model"
            )
        model.save(Path(path) / "behavior")
        return {"value_model": "behavior"}

    @staticmethod
    def _load_value_model(path: Path, manifest: dict[str, object], scenario: Scenario) -> ValueModel | None:
        kind = manifest.get("value_model", "ground-truth")
        if kind == "ground-truth":
            return None
        if kind != "behavior":
            raise ArtifactError(f"{path}/manifest.json: value_model must be 'ground-truth' or 'behavior', got {kind!r}")
        from adrl.behavior import BehaviorModel, BehaviorValueModel

        layout = FeatureLayout.from_scenario(scenario)
        return BehaviorValueModel(BehaviorModel.load(Path(path) / "behavior", layout=layout), scenario)

    def save(self, path: Path) -> None:
        raise NotImplementedError

    def choose(self, obs: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def predict(self, obs: np.ndarray, *, deterministic: bool = True) -> np.ndarray:
        return self.choose(check_obs(obs, self.obs_dim))

    def action_probabilities(self, obs: np.ndarray) -> np.ndarray:
        action = self.predict(obs)
        return one_hot(flat_index(action, self.nvec), int(np.prod(self.nvec)))


class RandomPolicy:
    """Uniform over every (delay, slot, creative)."""

    kind = "random"
    version = 1

    def __init__(self, scenario: Scenario, *, seed: int | None = None) -> None:
        self.scenario = scenario
        self.nvec = scenario.action_nvec
        self.obs_dim = FeatureLayout.from_scenario(scenario).obs_dim
        self.seed = seed
        self.rng = np.random.default_rng(seed)

    def save(self, path: Path) -> None:
        write_policy_manifest(path, kind=self.kind, version=self.version, scenario=self.scenario,
                              extra={"seed": self.seed})  # fmt: skip

    @classmethod
    def load(cls, path: Path) -> RandomPolicy:
        manifest, scenario = read_policy_manifest(path, kind=cls.kind, version=cls.version)
        return cls(scenario, seed=manifest.get("seed"))

    def predict(self, obs: np.ndarray, *, deterministic: bool = True) -> np.ndarray:
        n = check_obs(obs, self.obs_dim).shape[0]
        return uniform_actions(self.nvec, n, self.rng)

    def action_probabilities(self, obs: np.ndarray) -> np.ndarray:
        n = check_obs(obs, self.obs_dim).shape[0]
        a = int(np.prod(self.nvec))
        return np.full((n, a), 1.0 / a)


class GreedyPolicy(_Deterministic):
    """Always show now (delay 0) the slot and creative with the highest immediate expected reward."""

    kind = "greedy"

    def __init__(self, scenario: Scenario, value_model: ValueModel | None = None) -> None:
        self.scenario = scenario
        self.nvec = scenario.action_nvec
        self.obs_dim = FeatureLayout.from_scenario(scenario).obs_dim
        self.value_model = value_model or WorldValueModel(scenario)

    def choose(self, obs: np.ndarray) -> np.ndarray:
        v = self.value_model.expected_reward(obs, np.array([0]))[:, 0]  # (n, S, C)
        best = v.reshape(v.shape[0], -1).argmax(axis=1)
        s, c = np.divmod(best, self.nvec[2])
        return np.stack([np.zeros_like(s), s, c], axis=1)

    def save(self, path: Path) -> None:
        extra = self._save_value_model(path)
        write_policy_manifest(path, kind=self.kind, version=self.version, scenario=self.scenario, extra=extra)

    @classmethod
    def load(cls, path: Path) -> GreedyPolicy:
        manifest, scenario = read_policy_manifest(path, kind=cls.kind, version=cls.version)
        return cls(scenario, cls._load_value_model(path, manifest, scenario))


class PacingPolicy(_Deterministic):
    """Best slot and creative by predicted value, but never sooner than ``min_gap`` hours after the last ad.

    With a gap to wait out it takes the shortest delay that covers it (the longest one if none does).
    """

    kind = "pacing"

    def __init__(self, scenario: Scenario, min_gap: int, value_model: ValueModel | None = None) -> None:
        if min_gap < 1:
            raise ValueError(f"min_gap must be >= 1 hour, got {min_gap}")
        layout = FeatureLayout.from_scenario(scenario)
        self.scenario = scenario
        self.nvec = scenario.action_nvec
        self.obs_dim = layout.obs_dim
        self.min_gap = min_gap
        self.value_model = value_model or WorldValueModel(scenario)
        self.delays = np.array(scenario.delays)
        self._since = layout.index("hours_since_last_ad")

    def choose(self, obs: np.ndarray) -> np.ndarray:
        wait = np.maximum(self.min_gap - obs[:, self._since], 0)
        covers = self.delays[None, :] >= wait[:, None]
        d = np.where(covers.any(axis=1), covers.argmax(axis=1), len(self.delays) - 1)
        best = np.empty(obs.shape[0], dtype=np.int64)
        for k in np.unique(d):  # score only the delay each row takes, not all of them
            rows = np.flatnonzero(d == k)
            v = self.value_model.expected_reward(obs[rows], np.array([k]))[:, 0]  # (m, S, C)
            best[rows] = v.reshape(rows.size, -1).argmax(axis=1)
        s, c = np.divmod(best, self.nvec[2])
        return np.stack([d, s, c], axis=1)

    def save(self, path: Path) -> None:
        extra = {"min_gap": self.min_gap, **self._save_value_model(path)}
        write_policy_manifest(path, kind=self.kind, version=self.version, scenario=self.scenario, extra=extra)

    @classmethod
    def load(cls, path: Path) -> PacingPolicy:
        manifest, scenario = read_policy_manifest(path, kind=cls.kind, version=cls.version)
        gap = manifest.get("min_gap")
        if not isinstance(gap, int) or gap < 1:
            raise ArtifactError(f"{path}/manifest.json: min_gap must be an integer >= 1, got {gap!r}")
        return cls(scenario, gap, cls._load_value_model(path, manifest, scenario))


def component_epsilons(epsilon: float | Sequence[float], what: str = "epsilon") -> tuple[float, float, float]:
    """One exploration rate per action component (delay, slot, creative) from one number or three, checked."""
    values = [epsilon] if isinstance(epsilon, int | float) else list(epsilon)
    if len(values) == 1:
        values = values * 3
    if len(values) != 3 or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        raise ValueError(f"{what} must be one number or three (delay, slot, creative), got {epsilon!r}")
    if not all(0.0 <= v <= 1.0 for v in values):
        raise ValueError(f"{what} must be in [0, 1], got {epsilon!r}")
    return float(values[0]), float(values[1]), float(values[2])


class EpsilonGreedyPolicy:
    """Each action component (delay, slot, creative) independently: with probability ``epsilon`` uniform, else the
    base policy's choice. ``epsilon`` is one rate for every component or three (delay, slot, creative).

    Exploring per component keeps actions that differ from the base in one component (e.g. only the delay) likely
    enough for off-policy evaluation: their propensity is about ε/n_k instead of ε/n_actions for a joint mixture.
    A separate rate per component lets a logger explore timing fully (ε_delay = 1) while still exploiting its
    targeting, so timing policies such as pacing can be evaluated from its logs.
    """

    kind = "epsilon-greedy"
    version = 1

    def __init__(self, base: _Deterministic, epsilon: float | Sequence[float], *, seed: int | None = None) -> None:
        self.base, self.epsilon = base, component_epsilons(epsilon)
        self.nvec, self.obs_dim = base.nvec, base.obs_dim
        self.seed = seed
        self.rng = np.random.default_rng(seed)

    def save(self, path: Path) -> None:
        self.base.save(Path(path) / "base")
        eps = self.epsilon[0] if len(set(self.epsilon)) == 1 else list(self.epsilon)
        write_policy_manifest(path, kind=self.kind, version=self.version, scenario=self.base.scenario,
                              extra={"epsilon": eps, "seed": self.seed})  # fmt: skip

    @classmethod
    def load(cls, path: Path) -> EpsilonGreedyPolicy:
        manifest, _ = read_policy_manifest(path, kind=cls.kind, version=cls.version)
        base = load_policy_artifact(Path(path) / "base")
        if not isinstance(base, _Deterministic):
            raise ArtifactError(f"{path}/base: epsilon-greedy needs a deterministic base policy, got {base.kind}")
        eps = manifest.get("epsilon")
        try:
            rates = component_epsilons(eps)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise ArtifactError(
                f"{path}/manifest.json: epsilon must be a number in [0, 1] or three of them (delay, slot, creative), "
                f"got {eps!r}"
            ) from None
        return cls(base, rates, seed=manifest.get("seed"))

    def explore(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """(n, 3) booleans: which components of each decision explore."""
        return rng.random((n, 3)) < np.asarray(self.epsilon)

    def predict(self, obs: np.ndarray, *, deterministic: bool = False) -> np.ndarray:
        greedy = self.base.predict(obs)
        if deterministic:
            return greedy
        n = greedy.shape[0]
        uniform = uniform_actions(self.nvec, n, self.rng)
        return np.where(self.explore(n, self.rng), uniform, greedy)

    def component_probabilities(self, obs: np.ndarray) -> list[np.ndarray]:
        """Per-component distributions, each (n, n_k): (1 − ε_k) on the base's choice plus ε_k / n_k everywhere."""
        greedy = self.base.predict(obs)
        return [
            (1 - e) * one_hot(greedy[:, i], k) + e / k
            for i, (k, e) in enumerate(zip(self.nvec, self.epsilon, strict=True))
        ]

    def action_probabilities(self, obs: np.ndarray) -> np.ndarray:
        pd, ps, pc = self.component_probabilities(obs)
        return joint_probabilities(pd, ps, pc)


def sample_actions(policy: object, obs: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Sample (n, 3) actions from ``policy``'s exact distribution; returns actions and the joint (n, A) probs."""
    probs = policy.action_probabilities(obs)  # type: ignore[attr-defined]
    nvec = policy.nvec  # type: ignore[attr-defined]
    return unflatten(sample_from(probs, rng), nvec), probs


def tune_pacing_gap(
    scenario: Scenario, value_model: ValueModel | None, score: Score, gaps: Sequence[int] = (1, 2, 3, 4, 5, 6)
) -> int:
    """The ``min_gap`` whose pacing policy ``score`` rates highest (ties to the smaller gap)."""
    best, best_value = gaps[0], float("-inf")
    for gap in gaps:
        value = score(PacingPolicy(scenario, gap, value_model))
        if value > best_value + 1e-12:
            best, best_value = gap, value
    return int(best)


def build(
    name: str,
    scenario: Scenario,
    params: dict[str, Any],
    *,
    seed: int | None,
    value_model: ValueModel | None = None,
    score: Score | None = None,
) -> RandomPolicy | GreedyPolicy | PacingPolicy:
    """Greedy and pacing rank actions with ``value_model``; an unset pacing ``min_gap`` is tuned by ``score``."""
    if name == "greedy":
        check_params(params, set(), name)
        return GreedyPolicy(scenario, value_model)
    if name == "pacing":
        check_params(params, {"min_gap"}, name)
        gap = params.get("min_gap")
        if gap is None:
            if score is None:
                raise ConfigError("pacing: give min_gap, or train it on a simulator that can tune it")
            gap = tune_pacing_gap(scenario, value_model, score)
        return PacingPolicy(scenario, int(gap), value_model)
    if name == "random":
        check_params(params, set(), name)
        return RandomPolicy(scenario, seed=seed)
    raise ConfigError(f"unknown baseline {name!r}; expected greedy, pacing or random")


for _cls in (RandomPolicy, GreedyPolicy, PacingPolicy, EpsilonGreedyPolicy):
    register_kind(_cls.kind, _cls.load)
