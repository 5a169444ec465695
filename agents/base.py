"""Helpers the agents share: observation checks, running episode returns and the network input features.

The policy protocol is :class:`adrl.protocols.Policy`; the factored action algebra is :mod:`adrl.actions`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from adrl.actions import joint_probabilities, sample_from
from adrl.errors import ArtifactError
from adrl.features import FeatureLayout
from adrl.scenario import Scenario

MAX_HIDDEN = 4096  # widest hidden layer a config may ask for (a manifest's config is checked before allocating)


def one_hot(index: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros((index.shape[0], n))
    out[np.arange(index.shape[0]), index] = 1.0
    return out


def check_obs(obs: np.ndarray, obs_dim: int) -> np.ndarray:
    """Return ``obs`` as float (n, obs_dim); a single observation becomes a batch of one."""
    x = np.asarray(obs, dtype=np.float32)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2 or x.shape[1] != obs_dim:
        raise ValueError(f"observations must have shape (n, {obs_dim}), got {np.asarray(obs).shape}")
    return x


def check_nvec(manifest: dict[str, Any], nvec: tuple[int, int, int], where: str) -> None:
    got = tuple(manifest.get("nvec", ()))
    if got != tuple(nvec):
        raise ArtifactError(f"{where}: policy was built for action sizes {got}, the environment has {tuple(nvec)}")


def next_step_autoreset(env: Any) -> bool:
    """True if ``env`` (a Gymnasium VectorEnv) resets finished sub-envs on the *next* step (masked transition)."""
    mode = getattr(env, "metadata", {}).get("autoreset_mode")
    return getattr(mode, "value", mode) in ("NextStep", "next_step", None)


class EpisodeTracker:
    """Running returns of a vector env's sub-envs; collects the returns of finished episodes."""

    def __init__(self, n_envs: int) -> None:
        self.running = np.zeros(n_envs)
        self.finished: list[float] = []
        self.n_episodes = 0

    def update(self, reward: np.ndarray, done: np.ndarray, valid: np.ndarray) -> None:
        self.running += np.where(valid, reward, 0.0)
        ended = done & valid
        if ended.any():
            self.finished.extend(self.running[ended].tolist())
            self.n_episodes += int(ended.sum())
            self.running[ended] = 0.0

    def pop_mean(self) -> float:
        """Mean return of the episodes finished since the last call (NaN if none)."""
        if not self.finished:
            return float("nan")
        mean = float(np.mean(self.finished))
        self.finished = []
        return mean


class NeuralFeatures:
    """Observation -> network input: continuous and count features scaled to [-1, 1], categoricals one-hot."""

    def __init__(self, layout: Any) -> None:
        self.layout = layout
        cont = [i for i, f in enumerate(layout.obs) if f.kind != "categorical"]
        self.cont = np.array(cont, dtype=np.int64)
        low, high = layout.obs_low[self.cont], layout.obs_high[self.cont]
        self.center = ((high + low) / 2).astype(np.float32)
        self.scale = (2.0 / np.maximum(high - low, 1e-6)).astype(np.float32)
        self.cats = [(i, f.cardinality) for i, f in enumerate(layout.obs) if f.kind == "categorical"]
        self.dim = len(cont) + sum(k for _, k in self.cats)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        x = np.asarray(obs, dtype=np.float32)
        n = x.shape[0]
        out = np.zeros((n, self.dim), dtype=np.float32)
        k = len(self.cont)
        out[:, :k] = (x[:, self.cont] - self.center) * self.scale
        rows = np.arange(n)
        for i, card in self.cats:
            idx = np.clip(x[:, i].astype(np.int64), 0, card - 1)
            out[rows, k + idx] = 1.0
            k += card
        return out


class Learner:
    """The state every learning agent starts from: its market, config, feature layout, action sizes and a seeded
    random stream (whose state the manifest keeps, so a resumed run continues the same stream)."""

    scenario: Scenario
    config: Any
    layout: FeatureLayout
    nvec: tuple[int, int, int]
    obs_dim: int
    seed: int | None
    rng: np.random.Generator
    steps_done: int

    def _start(self, scenario: Scenario, config: Any, seed: int | None) -> None:
        self.scenario, self.config, self.seed = scenario, config, seed
        self.layout = FeatureLayout.from_scenario(scenario)
        self.nvec = scenario.action_nvec
        self.obs_dim = self.layout.obs_dim
        self.rng = np.random.default_rng(seed)
        self.steps_done = 0


class FactoredPolicy:
    """``predict`` and ``action_probabilities`` of a policy whose action components are independent given the
    observation (a product of categoricals): subclasses give ``component_probabilities(obs)``."""

    rng: np.random.Generator

    def component_probabilities(self, obs: np.ndarray) -> list[np.ndarray]:
        raise NotImplementedError

    def predict(self, obs: np.ndarray, *, deterministic: bool = True) -> np.ndarray:
        probs = self.component_probabilities(obs)
        if deterministic:
            return np.stack([p.argmax(axis=1) for p in probs], axis=1)
        return np.stack([sample_from(p, self.rng) for p in probs], axis=1)

    def action_probabilities(self, obs: np.ndarray) -> np.ndarray:
        pd, ps, pc = self.component_probabilities(obs)
        return joint_probabilities(pd, ps, pc)
