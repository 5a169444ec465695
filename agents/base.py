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
