"""The one policy protocol every agent and baseline follows, and helpers for the factored action.

Actions are (delay, slot, creative) index triples, shape (n, 3). ``action_probabilities(obs)`` returns the exact
joint distribution over the flat action index ``(delay * n_slots + slot) * n_creatives + creative``, shape
(n, n_actions): off-policy evaluation and the server's propensity logging read it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, Self, runtime_checkable

import numpy as np

from adrl.errors import ArtifactError


@runtime_checkable
class Policy(Protocol):
    """Maps observations (n, obs_dim) to actions (n, 3), with exact action probabilities."""

    nvec: tuple[int, int, int]

    def predict(self, obs: np.ndarray, *, deterministic: bool = True) -> np.ndarray: ...

    def action_probabilities(self, obs: np.ndarray) -> np.ndarray: ...


@runtime_checkable
class Agent(Policy, Protocol):
    """A policy that learns and persists itself."""

    kind: str
    version: int

    def learn(self, env: Any, total_steps: int, *, callback: Any = None) -> Self: ...

    def save(self, path: Path) -> None: ...

    @classmethod
    def load(cls, path: Path) -> Self: ...


def flat_index(action: np.ndarray, nvec: tuple[int, int, int]) -> np.ndarray:
    """Flat action index of (n, 3) actions."""
    a = np.asarray(action, dtype=np.int64)
    return (a[..., 0] * nvec[1] + a[..., 1]) * nvec[2] + a[..., 2]


def unflatten(index: np.ndarray, nvec: tuple[int, int, int]) -> np.ndarray:
    """(n, 3) actions of flat indices."""
    idx = np.asarray(index, dtype=np.int64)
    d, rest = np.divmod(idx, nvec[1] * nvec[2])
    s, c = np.divmod(rest, nvec[2])
    return np.stack([d, s, c], axis=-1)


def component_probabilities(joint: np.ndarray, nvec: tuple[int, int, int]) -> tuple[np.ndarray, ...]:
    """Marginal probabilities of delay, slot and creative from the joint (n, n_actions)."""
    cube = joint.reshape(-1, *nvec)
    return cube.sum(axis=(2, 3)), cube.sum(axis=(1, 3)), cube.sum(axis=(1, 2))


def joint_probabilities(pd: np.ndarray, ps: np.ndarray, pc: np.ndarray) -> np.ndarray:
    """Joint (n, n_actions) of independent per-component distributions (n, n_delays), (n, n_slots), (n, n_creatives)."""
    joint = pd[:, :, None, None] * ps[:, None, :, None] * pc[:, None, None, :]
    return joint.reshape(joint.shape[0], -1)


def uniform_actions(nvec: tuple[int, int, int], n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 3) actions uniform over every component; draws delays, then slots, then creatives."""
    return np.stack([rng.integers(0, k, n) for k in nvec], axis=1)


def sample_from(probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One flat index per row of ``probs`` (n, k) by inverse CDF; one uniform draw per row."""
    cdf = np.cumsum(probs, axis=1)
    u = rng.random((probs.shape[0], 1)) * cdf[:, -1:]
    return np.minimum((cdf <= u).sum(axis=1), probs.shape[1] - 1)


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
