"""LinUCB over action features: a contextual bandit baseline that maximises the immediate reward only.

Every (observation, action) pair is described by φ(x, a) (action one-hots, the user's signal for the creative's
category per slot, segment × impression-hour activity, and recent-ad counts per delay). One shared ridge model
θ = A⁻¹ b with A = λI + Σ φφᵀ, b = Σ r φ scores all actions, and the policy picks

    argmax_a  φ(x, a)ᵀ θ + α · sqrt(φ(x, a)ᵀ A⁻¹ φ(x, a)).

The choice is a deterministic function of (x, A, b), so ``action_probabilities`` is one-hot and exact. Updates are
batched over all sub-envs of a vector env.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import numpy as np

from adrl.actions import unflatten
from adrl.agents.base import EpisodeTracker, Learner, check_obs, next_step_autoreset, one_hot
from adrl.agents.registry import agent_params, read_learner, register_kind, write_learner_manifest
from adrl.errors import ArtifactError
from adrl.features import FeatureLayout
from adrl.io import load_npy
from adrl.scenario import HOURS_PER_DAY, Scenario

HOUR_BINS = 6


@dataclass(frozen=True)
class LinUCBConfig:
    alpha: float = 0.5
    ridge: float = 1.0
    log_every: int = 200_000

    def __post_init__(self) -> None:
        if self.alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {self.alpha}")
        if not self.ridge > 0:
            raise ValueError(f"ridge must be > 0, got {self.ridge}")
        if self.log_every < 1:
            raise ValueError(f"log_every must be >= 1, got {self.log_every}")


class ActionFeatures:
    """φ(x, a) for every action at once: shape (n, n_actions, dim)."""

    def __init__(self, scenario: Scenario) -> None:
        self.layout = FeatureLayout.from_scenario(scenario)
        self.nvec = scenario.action_nvec
        nd, ns, nc = self.nvec
        cat_index = {c: i for i, c in enumerate(scenario.categories)}
        self.category = np.array([cat_index[c.category] for c in scenario.creatives])
        self.delays = np.array(scenario.delays)
        self.n_seg = scenario.n_segments
        all_actions = unflatten(np.arange(scenario.n_actions), self.nvec)
        self.d, self.s, self.c = all_actions[:, 0], all_actions[:, 1], all_actions[:, 2]
        self._static = np.concatenate([np.eye(nd)[self.d], np.eye(ns)[self.s], np.eye(nc)[self.c]], axis=1).astype(
            np.float32
        )  # (A, nd + ns + nc)
        self._hour = self.layout.index("hour")
        self._recent = self.layout.index("impressions_6h")
        self._since = self.layout.index("hours_since_last_ad")
        self.dim = self._static.shape[1] + ns + self.n_seg * HOUR_BINS + 2 * nd + 1

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        n, a = obs.shape[0], self.d.size
        nd, ns, _ = self.nvec
        sig = obs[:, 1 + self.category[self.c]]  # (n, A): the user's signal for each action's creative category
        per_slot = np.zeros((n, a, ns), dtype=np.float32)
        per_slot[:, np.arange(a), self.s] = sig
        hour = (obs[:, self._hour].astype(np.int64)[:, None] + self.delays[self.d][None, :]) % HOURS_PER_DAY
        seg_hour = np.zeros((n, a, self.n_seg * HOUR_BINS), dtype=np.float32)
        idx = obs[:, 0].astype(np.int64)[:, None] * HOUR_BINS + hour * HOUR_BINS // HOURS_PER_DAY
        seg_hour[np.arange(n)[:, None], np.arange(a)[None, :], idx] = 1.0
        recent = np.zeros((n, a, 2 * nd), dtype=np.float32)
        recent[:, np.arange(a), self.d] = obs[:, self._recent, None] / 6.0
        since = np.minimum(obs[:, self._since], 6.0)[:, None] / 6.0
        recent[:, np.arange(a), nd + self.d] = since
        bias = np.ones((n, a, 1), dtype=np.float32)
        static = np.broadcast_to(self._static, (n, a, self._static.shape[1]))
        return np.concatenate([static, per_slot, seg_hour, recent, bias], axis=2)


class LinUCBAgent(Learner):
    """Shared-model LinUCB; see the module docstring."""

    kind = "linucb"
    version = 1

    def __init__(self, scenario: Scenario, config: LinUCBConfig | None = None, *, seed: int | None = None) -> None:
        self._start(scenario, config or LinUCBConfig(), seed)
        self.phi = ActionFeatures(scenario)
        d = self.phi.dim
        self.A = np.eye(d) * self.config.ridge
        self.b = np.zeros(d)
        self._refresh()

    def _refresh(self) -> None:
        self.A_inv = np.linalg.inv(self.A).astype(np.float32)
        self.theta = (self.A_inv @ self.b.astype(np.float32)).astype(np.float32)

    def _choose(self, obs: np.ndarray) -> np.ndarray:
        phi = self.phi(obs)  # (n, A, d)
        mean = phi @ self.theta
        width = np.sqrt(np.maximum(((phi @ self.A_inv) * phi).sum(axis=2), 0.0))  # sqrt(φᵀ A⁻¹ φ) per action
        return (mean + self.config.alpha * width).argmax(axis=1)

    def predict(self, obs: np.ndarray, *, deterministic: bool = True) -> np.ndarray:
        return unflatten(self._choose(check_obs(obs, self.obs_dim)), self.nvec)

    def action_probabilities(self, obs: np.ndarray) -> np.ndarray:
        return one_hot(self._choose(check_obs(obs, self.obs_dim)), self.scenario.n_actions)

    def learn(self, env: Any, total_steps: int, *, callback: Any = None, seed: int | None = None) -> Self:
        """Play the bandit policy on a vector env, updating A and b with every shown impression's reward."""
        n = int(env.num_envs)
        next_step = next_step_autoreset(env)
        obs, _ = env.reset(seed=seed if seed is not None else self.seed)
        valid = np.ones(n, dtype=bool)
        tracker = EpisodeTracker(n)
        next_log = self.steps_done + self.config.log_every
        while self.steps_done < total_steps:
            flat = self._choose(obs)
            next_obs, reward, terminated, truncated, _ = env.step(unflatten(flat, self.nvec))
            done = terminated | truncated
            if valid.any():
                phi = self.phi(obs[valid])[np.arange(int(valid.sum())), flat[valid]].astype(np.float64)
                self.A += phi.T @ phi
                self.b += phi.T @ reward[valid]
                self._refresh()
            tracker.update(reward, done, valid)
            self.steps_done += int(valid.sum())
            valid = ~done if next_step else np.ones(n, dtype=bool)
            obs = next_obs
            if self.steps_done >= next_log or self.steps_done >= total_steps:
                next_log = self.steps_done + self.config.log_every
                stats = {"mean_return": tracker.pop_mean(), "episodes": float(tracker.n_episodes)}
                if callback is not None and callback(self, self.steps_done, stats) is False:
                    break
        return self

    def save(self, path: Path | str) -> None:
        write_learner_manifest(path, self, {"dim": self.phi.dim}, arrays={"A.npy": self.A, "b.npy": self.b})

    @classmethod
    def load(cls, path: Path | str) -> LinUCBAgent:
        path = Path(path)
        agent, _ = read_learner(cls, LinUCBConfig, path)
        d = agent.phi.dim
        agent.A = load_npy(path / "A.npy", shape=(d, d)).astype(np.float64)
        agent.b = load_npy(path / "b.npy", shape=(d,)).astype(np.float64)
        if not (np.all(np.isfinite(agent.A)) and np.all(np.isfinite(agent.b))):
            raise ArtifactError(f"{path}: A.npy or b.npy holds NaN or infinite values")
        agent._refresh()
        return agent


def build(name: str, scenario: Scenario, params: dict[str, Any], *, seed: int | None, **_: Any) -> LinUCBAgent:
    return LinUCBAgent(scenario, agent_params(LinUCBConfig, params, name), seed=seed)


register_kind(LinUCBAgent.kind, LinUCBAgent.load)
