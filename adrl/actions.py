"""The factored action algebra: (delay, slot, creative) index triples and their flat index.

Actions are shape (n, 3). The flat index is ``(delay * n_slots + slot) * n_creatives + creative``, and a policy's
``action_probabilities(obs)`` is the exact joint distribution over it, shape (n, n_actions): off-policy evaluation,
the simulator's logging and the server's propensities all read it through these functions. :class:`ActionSpace`
binds them to one market's sizes (``scenario.actions``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

Nvec = tuple[int, int, int]


def flat_index(action: np.ndarray, nvec: Nvec) -> np.ndarray:
    """Flat action index of (n, 3) actions."""
    a = np.asarray(action, dtype=np.int64)
    return (a[..., 0] * nvec[1] + a[..., 1]) * nvec[2] + a[..., 2]


def unflatten(index: np.ndarray, nvec: Nvec) -> np.ndarray:
    """(n, 3) actions of flat indices."""
    idx = np.asarray(index, dtype=np.int64)
    d, rest = np.divmod(idx, nvec[1] * nvec[2])
    s, c = np.divmod(rest, nvec[2])
    return np.stack([d, s, c], axis=-1)


def component_probabilities(joint: np.ndarray, nvec: Nvec) -> tuple[np.ndarray, ...]:
    """Marginal probabilities of delay, slot and creative from the joint (n, n_actions)."""
    cube = joint.reshape(-1, *nvec)
    return cube.sum(axis=(2, 3)), cube.sum(axis=(1, 3)), cube.sum(axis=(1, 2))


def joint_probabilities(pd: np.ndarray, ps: np.ndarray, pc: np.ndarray) -> np.ndarray:
    """Joint (n, n_actions) of independent per-component distributions (n, n_delays), (n, n_slots), (n, n_creatives)."""
    joint = pd[:, :, None, None] * ps[:, None, :, None] * pc[:, None, None, :]
    return joint.reshape(joint.shape[0], -1)


def uniform_actions(nvec: Nvec, n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 3) actions uniform over every component; draws delays, then slots, then creatives."""
    return np.stack([rng.integers(0, k, n) for k in nvec], axis=1)


def sample_from(probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One flat index per row of ``probs`` (n, k) by inverse CDF; one uniform draw per row."""
    cdf = np.cumsum(probs, axis=1)
    u = rng.random((probs.shape[0], 1)) * cdf[:, -1:]
    return np.minimum((cdf <= u).sum(axis=1), probs.shape[1] - 1)


@dataclass(frozen=True)
class ActionSpace:
    """The action sizes of one market with the algebra bound to them (``Scenario.actions``).

    >>> space = ActionSpace((4, 2, 3))
    >>> int(space.flat_index(np.array([1, 0, 2])))
    8
    >>> space.unflatten(np.array([8])).tolist()
    [[1, 0, 2]]
    """

    nvec: Nvec

    def __post_init__(self) -> None:
        if len(self.nvec) != 3 or any(int(k) < 1 for k in self.nvec):
            raise ValueError(f"nvec must be three sizes >= 1 (delays, slots, creatives), got {self.nvec}")

    @property
    def n_actions(self) -> int:
        return int(np.prod(self.nvec))

    def flat_index(self, action: np.ndarray) -> np.ndarray:
        return flat_index(action, self.nvec)

    def unflatten(self, index: np.ndarray) -> np.ndarray:
        return unflatten(index, self.nvec)

    def components(self, joint: np.ndarray) -> tuple[np.ndarray, ...]:
        """Marginals (delay, slot, creative) of a joint distribution (n, n_actions)."""
        return component_probabilities(joint, self.nvec)

    def uniform(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return uniform_actions(self.nvec, n, rng)
