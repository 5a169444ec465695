"""Reward models for DM / DR: anything that maps observations to q̂(x, a) for every action plugs in.

The interface is a callable ``q(obs) -> (n, n_actions)`` (:class:`QFunction`). Models that can do better than a
dense matrix also offer ``at(obs, action) -> (n,)`` (q̂ of one action per row) and ``expected(obs, probs) -> (n,)``
(Σ_a probs[i, a] q̂(x_i, a), ``probs`` dense or scipy-sparse); :func:`q_terms` uses them when present, so a
deterministic target over 1M rows never materialises an (n, n_actions) matrix.

Built in:

- :class:`RidgeRewardModel`, fitted on the spot: one ridge regression per action on the observation features
  (standardised continuous columns and one-hot categorical ones), each shrunk towards a pooled model with
  additive action effects, so rarely logged actions borrow strength from the others. Fitting needs one pass
  over the rows (per-action Gram matrices) and small solves; refitting to new targets (as fitted-Q evaluation
  does every iteration) reuses the Gram matrices.
- :func:`cross_fit`: K-fold cross-fitting. Row i's q̂ comes from the model fitted on the other folds, so the
  model's overfitting does not leak into DR's correction term. Folds can be formed by group (episode), so no
  user-day is split across folds.
- :class:`MaskedQ`: forces q̂ = 0 where the reward is known to be 0 (an ad whose delay runs past the day).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias, runtime_checkable

import numpy as np
import scipy.sparse as sp

from adrl.errors import DataError

if TYPE_CHECKING:
    from adrl.ope.data import LoggedData

Probs: TypeAlias = Any  # (n, n_actions) action probabilities: a numpy array or a scipy.sparse matrix


@runtime_checkable
class QFunction(Protocol):
    """q̂(x, a) of every action for observations ``obs`` (n, obs_dim): shape (n, n_actions)."""

    def __call__(self, obs: np.ndarray, /) -> np.ndarray: ...


def _sparse_if_sparse(probs: Probs) -> Probs:
    """CSR when at most a quarter of the entries are non-zero (e.g. deterministic policies)."""
    if sp.issparse(probs):
        return sp.csr_matrix(probs)
    nnz = np.count_nonzero(probs)
    return sp.csr_matrix(probs) if nnz <= probs.size // 4 else probs


def q_terms(q: QFunction, obs: np.ndarray, action: np.ndarray, probs: Probs) -> tuple[np.ndarray, np.ndarray]:
    """``(q_logged, q_target)`` for logged ``action`` (n,) and target probabilities ``probs`` (n, n_actions).

    q_logged[i] = q̂(x_i, a_i) and q_target[i] = Σ_a probs[i, a] q̂(x_i, a). Uses ``q.at`` / ``q.expected`` when the
    model has them, else the dense matrix ``q(obs)``.
    """
    at = getattr(q, "at", None)
    expected = getattr(q, "expected", None)
    if at is not None and expected is not None:
        return np.asarray(at(obs, action), dtype=np.float64), np.asarray(expected(obs, probs), dtype=np.float64)
    qm = np.asarray(q(obs), dtype=np.float64)
    if qm.ndim != 2 or qm.shape[0] != obs.shape[0] or qm.shape[1] != probs.shape[1]:
        raise DataError(
            f"reward model returned shape {qm.shape}, expected ({obs.shape[0]}, {probs.shape[1]}) "
            "(one value per observation and action)"
        )
    q_logged = qm[np.arange(obs.shape[0]), action]
    if sp.issparse(probs):
        q_target = np.asarray(sp.csr_matrix(probs).multiply(qm).sum(axis=1)).ravel()
    else:
        q_target = np.einsum("na,na->n", probs, qm)
    return q_logged, q_target


@dataclass(frozen=True)
class FeatureMap:
    """Observation → regression features: [1, standardised continuous columns, one-hot categorical columns]."""

    continuous: tuple[int, ...]
    categorical: tuple[tuple[int, int], ...]  # (column, cardinality)
    mean: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, obs: np.ndarray, categorical: Sequence[tuple[int, int]]) -> FeatureMap:
        cats = tuple((int(c), int(k)) for c, k in categorical)
        cat_cols = {c for c, _ in cats}
        cont = tuple(j for j in range(obs.shape[1]) if j not in cat_cols)
        x = obs[:, cont].astype(np.float64)
        mean = x.mean(axis=0) if x.shape[0] else np.zeros(len(cont))
        scale = x.std(axis=0) if x.shape[0] else np.ones(len(cont))
        scale = np.where(scale > 1e-12, scale, 1.0)
        return cls(continuous=cont, categorical=cats, mean=mean, scale=scale)

    @property
    def dim(self) -> int:
        return 1 + len(self.continuous) + sum(k for _, k in self.categorical)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        n = obs.shape[0]
        out = np.zeros((n, self.dim))
        out[:, 0] = 1.0
        j = 1 + len(self.continuous)
        out[:, 1:j] = (obs[:, self.continuous] - self.mean) / self.scale
        rows = np.arange(n)
        for col, k in self.categorical:
            v = np.clip(np.rint(obs[:, col]).astype(np.int64), 0, k - 1)
            out[rows, j + v] = 1.0
            j += k
        return out


@dataclass(frozen=True)
class RidgeRewardModel:
    """Per-action ridge regression shrunk towards a pooled additive model (hyper-parameters only; see ``fit``).

    q̂(x, a) = φ(x)·W_a with W_a = argmin Σ_{i: a_i = a} (y_i − φ(x_i)·W)² + λ‖W − prior_a‖², where prior_a is a
    pooled ridge fit of y on [φ(x), action_features[a]] (its observation coefficients, plus its action effect
    added to the intercept).

    Attributes:
        n_actions: size of the flat action space.
        alpha: λ, the shrinkage of each action's weights towards the pooled prior (in units of rows).
        categorical: ``(column, cardinality)`` of observation columns to one-hot encode.
        action_features: (n_actions, m) descriptors of each action for the pooled model (e.g. one-hots of
            the action's delay, slot and creative); None uses none (the prior is then shared by all actions).
    """

    n_actions: int
    alpha: float = 10.0
    categorical: tuple[tuple[int, int], ...] = ()
    action_features: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.n_actions < 1:
            raise ValueError(f"n_actions must be >= 1, got {self.n_actions}")
        if not self.alpha > 0:
            raise ValueError(f"alpha must be > 0, got {self.alpha!r}")
        if self.action_features is not None and self.action_features.shape[0] != self.n_actions:
            raise ValueError(
                f"action_features must have one row per action ({self.n_actions}), got {self.action_features.shape}"
            )

    def design(self, obs: np.ndarray, action: np.ndarray) -> RidgeDesign:
        """Sufficient statistics of the rows (features, per-action Gram matrices) for repeated fits."""
        return RidgeDesign.build(self, obs, action)

    def fit(self, obs: np.ndarray, action: np.ndarray, reward: np.ndarray) -> FittedRidge:
        """Fit to rows ``obs`` (n, obs_dim), flat ``action`` (n,) and ``reward`` (n,)."""
        return self.design(obs, action).solve(reward)


class RidgeDesign:
    """Features and per-action Gram matrices of a fixed set of rows; ``solve(y)`` fits targets ``y``."""

    def __init__(
        self, spec: RidgeRewardModel, fmap: FeatureMap, phi: np.ndarray, action: np.ndarray, gram: np.ndarray
    ) -> None:
        self.spec, self.fmap, self.phi, self.action, self.gram = spec, fmap, phi, action, gram
        self.count = gram[:, 0, 0]  # φ_0 = 1, so the (0, 0) entry counts the rows of each action
        a, p = spec.n_actions, fmap.dim
        f = spec.action_features if spec.action_features is not None else np.zeros((a, 0))
        m = f.shape[1]
        # pooled Gram over [φ, f_a] from the per-action statistics
        g = np.zeros((p + m, p + m))
        g[:p, :p] = gram.sum(axis=0)
        sums = gram[:, :, 0]  # (A, p): Σ_{i in a} φ_i
        g[:p, p:] = sums.T @ f
        g[p:, :p] = g[:p, p:].T
        g[p:, p:] = (f * self.count[:, None]).T @ f
        self._f = f
        self._pooled = np.linalg.inv(g + 1e-3 * np.eye(p + m) + 1e-9 * np.trace(g) * np.eye(p + m))
        eye = np.eye(p) * spec.alpha
        self._per_action = np.linalg.inv(gram + eye[None])  # (A, p, p)

    @classmethod
    def build(cls, spec: RidgeRewardModel, obs: np.ndarray, action: np.ndarray) -> RidgeDesign:
        act = np.asarray(action, dtype=np.int64)
        if act.size and (act.min() < 0 or act.max() >= spec.n_actions):
            raise DataError(f"actions must be in 0..{spec.n_actions - 1}, got {int(act.min())}..{int(act.max())}")
        fmap = FeatureMap.fit(obs, spec.categorical)
        phi = fmap(obs)
        p = fmap.dim
        gram = np.zeros((spec.n_actions, p, p))
        order = np.argsort(act, kind="stable")
        bounds = np.searchsorted(act[order], np.arange(spec.n_actions + 1))
        for a in range(spec.n_actions):
            lo, hi = bounds[a], bounds[a + 1]
            if hi > lo:
                x = phi[order[lo:hi]]
                gram[a] = x.T @ x
        return cls(spec, fmap, phi, act, gram)

    def solve(self, y: np.ndarray) -> FittedRidge:
        """Fit targets ``y`` (n,) of the design's rows."""
        a, p = self.spec.n_actions, self.fmap.dim
        rhs = np.zeros((a, p))
        _group_sum(rhs, self.action, self.phi * y[:, None])
        pooled_rhs = np.concatenate([rhs.sum(axis=0), self._f.T @ rhs[:, 0]])
        beta = self._pooled @ pooled_rhs
        prior = np.repeat(beta[None, :p], a, axis=0)
        prior[:, 0] += self._f @ beta[p:]
        w = np.einsum("apq,aq->ap", self._per_action, rhs + self.spec.alpha * prior)
        return FittedRidge(self.fmap, w)


def _group_sum(out: np.ndarray, group: np.ndarray, values: np.ndarray) -> None:
    """out[g] += Σ_{i: group_i = g} values[i] (rows of ``values``), via one bincount per column."""
    n_groups = out.shape[0]
    for j in range(values.shape[1]):
        out[:, j] += np.bincount(group, weights=values[:, j], minlength=n_groups)


@dataclass(frozen=True)
class FittedRidge:
    """A fitted :class:`RidgeRewardModel`: q̂(x, a) = φ(x)·weights[a]."""

    fmap: FeatureMap
    weights: np.ndarray  # (n_actions, dim)

    @property
    def n_actions(self) -> int:
        return int(self.weights.shape[0])

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        return self.fmap(obs) @ self.weights.T

    def at(self, obs: np.ndarray, action: np.ndarray) -> np.ndarray:
        phi = self.fmap(obs)
        return np.einsum("np,np->n", phi, self.weights[np.asarray(action, dtype=np.int64)])

    def expected(self, obs: np.ndarray, probs: Probs) -> np.ndarray:
        phi = self.fmap(obs)
        mixed = _sparse_if_sparse(probs) @ self.weights  # (n, dim): Σ_a π(a|x) W_a
        return np.einsum("np,np->n", phi, np.asarray(mixed))


class MaskedQ:
    """q̂ forced to 0 where ``zero(obs)`` (n, n_actions) is True, e.g. actions whose delay runs past the day."""

    def __init__(self, base: QFunction, zero: Callable[[np.ndarray], np.ndarray]) -> None:
        self.base, self.zero = base, zero

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        return np.where(self.zero(obs), 0.0, self.base(obs))

    def at(self, obs: np.ndarray, action: np.ndarray) -> np.ndarray:
        keep = ~self.zero(obs)[np.arange(obs.shape[0]), action]
        at = getattr(self.base, "at", None)
        value = at(obs, action) if at is not None else self.base(obs)[np.arange(obs.shape[0]), action]
        return np.where(keep, value, 0.0)

    def expected(self, obs: np.ndarray, probs: Probs) -> np.ndarray:
        keep = ~self.zero(obs)
        masked = sp.csr_matrix(probs).multiply(keep).tocsr() if sp.issparse(probs) else probs * keep
        expected = getattr(self.base, "expected", None)
        if expected is not None:
            return np.asarray(expected(obs, masked))
        qm = self.base(obs)
        if sp.issparse(masked):
            return np.asarray(masked.multiply(qm).sum(axis=1)).ravel()
        return np.einsum("na,na->n", masked, qm)


def fold_ids(n: int, n_folds: int, rng: np.random.Generator, groups: np.ndarray | None = None) -> np.ndarray:
    """Random fold of each row, shape (n,); rows of one group (e.g. an episode) share a fold."""
    if n_folds < 2:
        raise ValueError(f"cross-fitting needs n_folds >= 2, got {n_folds}")
    if groups is None:
        return rng.permutation(n) % n_folds
    uniq, inverse = np.unique(groups, return_inverse=True)
    if uniq.size < n_folds:
        raise DataError(f"cross-fitting with {n_folds} folds needs at least {n_folds} groups, got {uniq.size}")
    return (rng.permutation(uniq.size) % n_folds)[inverse]


def cross_fit(
    model: RidgeRewardModel | Callable[[np.ndarray, np.ndarray, np.ndarray], QFunction],
    obs: np.ndarray,
    action: np.ndarray,
    reward: np.ndarray,
    *,
    n_folds: int,
    rng: np.random.Generator,
    groups: np.ndarray | None = None,
) -> list[tuple[QFunction, np.ndarray]]:
    """Fit one model per fold on the other folds' rows: ``[(q_k, rows of fold k), ...]``.

    ``model`` is a :class:`RidgeRewardModel` or any ``fit(obs, action, reward) -> QFunction`` callable.
    """
    fit = model.fit if isinstance(model, RidgeRewardModel) else model
    folds = fold_ids(obs.shape[0], n_folds, rng, groups)
    out: list[tuple[QFunction, np.ndarray]] = []
    for k in range(n_folds):
        held = np.flatnonzero(folds == k)
        train = np.flatnonzero(folds != k)
        out.append((fit(obs[train], action[train], reward[train]), held))
    return out


def default_reward_model(data: LoggedData, alpha: float = 10.0) -> RidgeRewardModel:
    """Per-action ridge on the data's features (categoricals one-hot, action features shared)."""
    return RidgeRewardModel(
        n_actions=data.n_actions, alpha=alpha, categorical=data.categorical, action_features=data.action_features
    )
