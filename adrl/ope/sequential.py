"""Whole-episode value estimators: per-decision IS (PDIS), weighted per-decision IS (WIS), weighted DR, and FQE.

The estimand is the target policy's expected (discounted) return per episode, V = E[Σ_t γ^t r_t] under π_e
from the logged episodes' initial states. Inputs are per logged row, shape (n,): ``episode_id``, ``step`` (rows
may come in any order; within an episode they are ordered by step), ``reward``, ``propensity`` π_b(a_t|x_t) and
``target_prob`` π_e(a_t|x_t). With w_t = π_e/π_b and the cumulative weight ρ_t = Π_{k≤t} w_k of an episode:

    PDIS = 1/N Σ_i Σ_t γ^t ρ_{i,t} r_{i,t}                                  unbiased, high variance
    WIS  = Σ_t γ^t Σ_i ρ_{i,t} r_{i,t} / Σ_i ρ_{i,t}                        weighted per-decision IS
    WDR  = Σ_t γ^t [Σ_i ρ_{i,t} (r_{i,t} − Q̂_{i,t}) / Σ_i ρ_{i,t} + Σ_i ρ_{i,t−1} V̂_{i,t} / Σ_i ρ_{i,t−1}]
    FQE  = 1/N Σ_i V̂(x_{i,0})

with ρ_{i,−1} = 1, Q̂_{i,t} = Q̂(x_{i,t}, a_{i,t}) and V̂_{i,t} = Σ_a π_e(a|x_{i,t}) Q̂(x_{i,t}, a) from a model of
π_e's action value (fitted-Q evaluation). Episodes shorter than the longest are padded with zero reward and
constant weight (an absorbing state where both policies agree), so every normaliser sums over all N episodes
(Thomas & Brunskill 2016). Intervals come from resampling whole episodes; FQE's interval holds the fitted
model fixed and so ignores its fitting error.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import scipy.sparse as sp

from adrl.errors import DataError
from adrl.ope.estimate import Estimate, interval_from_sums, weight_diagnostics
from adrl.ope.reward_models import Probs, RidgeRewardModel, _sparse_if_sparse, default_reward_model
from adrl.ope.validation import as_vector, check_finite, check_sequential_inputs

if TYPE_CHECKING:
    from adrl.ope.inputs import EpisodeInputs


@dataclass(frozen=True)
class Episodes:
    """Rows laid out on an (episode, position) grid: ``episode[i]``, ``position[i]`` of row i, N episodes, H steps."""

    episode: np.ndarray  # (n,) episode index 0..N-1
    position: np.ndarray  # (n,) position within the episode, 0..length-1 (in step order)
    n_episodes: int
    horizon: int

    @classmethod
    def of(cls, episode_id: np.ndarray, step: np.ndarray) -> Episodes:
        order = np.lexsort((step, episode_id))
        uniq, inverse = np.unique(episode_id, return_inverse=True)
        ep_sorted = inverse[order]
        start = np.searchsorted(ep_sorted, np.arange(uniq.size))
        pos_sorted = np.arange(order.size) - start[ep_sorted]
        position = np.empty_like(pos_sorted)
        position[order] = pos_sorted
        return cls(episode=inverse, position=position, n_episodes=int(uniq.size), horizon=int(pos_sorted.max()) + 1)

    def grid(self, values: np.ndarray, fill: float = 0.0) -> np.ndarray:
        """Per-row ``values`` as an (N, H) matrix, ``fill`` after an episode's end."""
        out = np.full((self.n_episodes, self.horizon), fill, dtype=np.float64)
        out[self.episode, self.position] = values
        return out

    def next_row(self) -> np.ndarray:
        """Index of the row that follows each row in its episode, -1 for the last one, shape (n,)."""
        idx = np.full((self.n_episodes, self.horizon + 1), -1, dtype=np.int64)
        idx[self.episode, self.position] = np.arange(self.episode.size)
        return idx[self.episode, self.position + 1]

    def first_rows(self) -> np.ndarray:
        """Row index of each episode's first decision, shape (N,)."""
        out = np.empty(self.n_episodes, dtype=np.int64)
        first = self.position == 0
        out[self.episode[first]] = np.flatnonzero(first)
        return out


def _check_gamma(gamma: float) -> None:
    if not 0.0 < gamma <= 1.0:
        raise ValueError(f"gamma must be in (0, 1], got {gamma!r}")


def _cumulative_weights(ep: Episodes, weight: np.ndarray) -> np.ndarray:
    """ρ on the (N, H) grid; padding has weight 1 so ρ stays at its final value after an episode ends."""
    return np.cumprod(ep.grid(weight, fill=1.0), axis=1)


def _diagnostics(rho: np.ndarray) -> tuple[float, float]:
    return weight_diagnostics(rho[:, -1])  # each episode's full-trajectory weight


class _ImportanceWeighted:
    """The registry's entry point of the estimators that need only the weights and rewards (PDIS, WIS)."""

    gamma: float
    scope: ClassVar[str] = "episode"
    needs_probs_matrix: ClassVar[bool] = False

    @classmethod
    def run(cls, inputs: EpisodeInputs) -> Estimate:
        """The estimate from the shared inputs of one evaluation."""
        estimator: Any = cls(inputs.gamma)  # type: ignore[call-arg]  # subclasses are dataclasses with gamma
        return estimator.estimate(*inputs.weights_args, **inputs.interval)


@dataclass(frozen=True)
class PDIS(_ImportanceWeighted):
    """Per-decision importance sampling: 1/N Σ_i Σ_t γ^t ρ_{i,t} r_{i,t} (unbiased)."""

    gamma: float = 1.0
    name: ClassVar[str] = "pdis"

    def __post_init__(self) -> None:
        _check_gamma(self.gamma)

    def estimate(
        self,
        episode_id: np.ndarray,
        step: np.ndarray,
        reward: np.ndarray,
        propensity: np.ndarray,
        target_prob: np.ndarray,
        *,
        rng: np.random.Generator,
        alpha: float = 0.05,
        n_boot: int = 1000,
    ) -> Estimate:
        """Estimate the episode value; the interval resamples episodes (``n_boot=0``: normal interval)."""
        eid, st, r, p, t = check_sequential_inputs(episode_id, step, reward, propensity, target_prob)
        ep = Episodes.of(eid, st)
        rho = _cumulative_weights(ep, t / p)
        disc = self.gamma ** np.arange(ep.horizon)
        per_episode = (rho * ep.grid(r) * disc).sum(axis=1)
        value, lower, upper = interval_from_sums(
            per_episode[:, None],
            lambda s, n: s[:, 0] / n,
            rng=rng,
            alpha=alpha,
            n_boot=n_boot,
            influence=lambda c: c[:, 0],
        )
        ess, max_w = _diagnostics(rho)
        return Estimate(value, lower, upper, ep.n_episodes, ess, max_w, "bootstrap" if n_boot else "normal")


Statistic = Callable[[np.ndarray, int], np.ndarray]
Influence = Callable[[np.ndarray], np.ndarray]


def _ratio_sum_statistic(h: int, disc: np.ndarray) -> tuple[Statistic, Influence]:
    """Σ_t disc_t · (column-sum t) / (column-sum h + t), for sums laid out as [numerators | denominators]."""

    def statistic(s: np.ndarray, n: int) -> np.ndarray:
        num, den = s[:, :h], s[:, h : 2 * h]
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)
        return (terms * disc).sum(axis=1)

    def influence(c: np.ndarray) -> np.ndarray:
        num, den = c[:, :h], c[:, h : 2 * h]
        mean_den = den.mean(axis=0)
        safe = np.where(mean_den > 0, mean_den, 1.0)
        theta = num.mean(axis=0) / safe
        return (((num - theta * den) / safe) * disc).sum(axis=1)

    return statistic, influence


@dataclass(frozen=True)
class WIS(_ImportanceWeighted):
    """Weighted per-decision importance sampling: Σ_t γ^t Σ_i ρ_{i,t} r_{i,t} / Σ_i ρ_{i,t} (consistent, biased)."""

    gamma: float = 1.0
    name: ClassVar[str] = "wis"

    def __post_init__(self) -> None:
        _check_gamma(self.gamma)

    def estimate(
        self,
        episode_id: np.ndarray,
        step: np.ndarray,
        reward: np.ndarray,
        propensity: np.ndarray,
        target_prob: np.ndarray,
        *,
        rng: np.random.Generator,
        alpha: float = 0.05,
        n_boot: int = 1000,
    ) -> Estimate:
        """Estimate the episode value; the interval resamples episodes (``n_boot=0``: normal interval)."""
        eid, st, r, p, t = check_sequential_inputs(episode_id, step, reward, propensity, target_prob)
        ep = Episodes.of(eid, st)
        rho = _cumulative_weights(ep, t / p)
        h = ep.horizon
        disc = self.gamma ** np.arange(h)
        cols = np.concatenate([rho * ep.grid(r), rho], axis=1)
        statistic, influence = _ratio_sum_statistic(h, disc)
        value, lower, upper = interval_from_sums(
            cols,
            statistic,
            rng=rng,
            alpha=alpha,
            n_boot=n_boot,
            influence=influence,
        )
        ess, max_w = _diagnostics(rho)
        return Estimate(value, lower, upper, ep.n_episodes, ess, max_w, "bootstrap" if n_boot else "normal")


@dataclass(frozen=True)
class WDR:
    """Weighted doubly robust (Thomas & Brunskill 2016) with an action-value model Q̂ of the target policy.

    ``q_logged`` = Q̂(x_t, a_t) and ``v_target`` = Σ_a π_e(a|x_t) Q̂(x_t, a) per row (e.g. from :class:`FQE`,
    cross-fitted). With Q̂ = 0 it is WIS.
    """

    gamma: float = 1.0
    name: ClassVar[str] = "wdr"
    scope: ClassVar[str] = "episode"
    needs_probs_matrix: ClassVar[bool] = True

    @classmethod
    def run(cls, inputs: EpisodeInputs) -> Estimate:
        """The estimate from the shared inputs of one evaluation (the registry's entry point)."""
        fit = inputs.fqe_fit
        return cls(inputs.gamma).estimate(*inputs.weights_args, fit.q_logged, fit.v_target, **inputs.interval)

    def __post_init__(self) -> None:
        _check_gamma(self.gamma)

    def estimate(
        self,
        episode_id: np.ndarray,
        step: np.ndarray,
        reward: np.ndarray,
        propensity: np.ndarray,
        target_prob: np.ndarray,
        q_logged: np.ndarray,
        v_target: np.ndarray,
        *,
        rng: np.random.Generator,
        alpha: float = 0.05,
        n_boot: int = 1000,
    ) -> Estimate:
        """Estimate the episode value; the interval resamples episodes (``n_boot=0``: normal interval)."""
        eid, st, r, p, t = check_sequential_inputs(episode_id, step, reward, propensity, target_prob)
        n = r.shape[0]
        ql = as_vector(q_logged, "q_logged", n=n)
        vt = as_vector(v_target, "v_target", n=n)
        check_finite(ql, "q_logged")
        check_finite(vt, "v_target")
        ep = Episodes.of(eid, st)
        rho = _cumulative_weights(ep, t / p)
        h = ep.horizon
        disc = self.gamma ** np.arange(h)
        rho_prev = np.concatenate([np.ones((ep.n_episodes, 1)), rho[:, :-1]], axis=1)
        cols = np.concatenate([rho * (ep.grid(r) - ep.grid(ql)), rho, rho_prev * ep.grid(vt), rho_prev], axis=1)
        stat_a, infl_a = _ratio_sum_statistic(h, disc)

        def statistic(s: np.ndarray, m: int) -> np.ndarray:
            return stat_a(s[:, : 2 * h], m) + stat_a(s[:, 2 * h :], m)

        def influence(c: np.ndarray) -> np.ndarray:
            return infl_a(c[:, : 2 * h]) + infl_a(c[:, 2 * h :])

        value, lower, upper = interval_from_sums(
            cols, statistic, rng=rng, alpha=alpha, n_boot=n_boot, influence=influence
        )
        ess, max_w = _diagnostics(rho)
        return Estimate(value, lower, upper, ep.n_episodes, ess, max_w, "bootstrap" if n_boot else "normal")


@dataclass(frozen=True)
class FQEFit:
    """Per-row results of fitted-Q evaluation: Q̂(x_t, a_t) and V̂(x_t) = Σ_a π_e(a|x_t) Q̂(x_t, a)."""

    q_logged: np.ndarray
    v_target: np.ndarray


@dataclass(frozen=True)
class FQE:
    """Fitted-Q evaluation: regress Q̂_k(x_t, a_t) on r_t + γ V̂_{k−1}(x_{t+1}) for ``n_iter`` rounds.

    V̂_{k−1}(x_{t+1}) = Σ_a π_e(a|x_{t+1}) Q̂_{k−1}(x_{t+1}, a), and 0 after an episode's last decision (the user
    left or the day ended). ``n_iter=None`` runs as many rounds as the longest episode, which is exact
    backward induction for a finite horizon when the model class can represent Q. The regression is ``model``
    (per-action ridge; its Gram matrices are computed once and reused every round).
    """

    model: RidgeRewardModel
    gamma: float = 1.0
    n_iter: int | None = None
    name: ClassVar[str] = "fqe"
    scope: ClassVar[str] = "episode"
    needs_probs_matrix: ClassVar[bool] = True

    @classmethod
    def run(cls, inputs: EpisodeInputs) -> Estimate:
        """The estimate from the shared inputs of one evaluation (the registry's entry point)."""
        d = inputs.data
        return cls(inputs.reward_model or default_reward_model(d), gamma=inputs.gamma).estimate(
            d.episode_id,
            d.step,
            d.obs,
            d.action,
            d.reward,
            inputs.require_probs(),
            fitted=inputs.fqe_fit,
            **inputs.interval,
        )

    def __post_init__(self) -> None:
        _check_gamma(self.gamma)
        if self.n_iter is not None and self.n_iter < 1:
            raise ValueError(f"n_iter must be >= 1, got {self.n_iter}")

    def fit(
        self,
        episode_id: np.ndarray,
        step: np.ndarray,
        obs: np.ndarray,
        action: np.ndarray,
        reward: np.ndarray,
        target_probs: Probs,
        *,
        predict_rows: np.ndarray | None = None,
        fit_rows: np.ndarray | None = None,
    ) -> FQEFit:
        """Fit on ``fit_rows`` (all when None); return Q̂ and V̂ for ``predict_rows`` (all when None).

        Args:
            episode_id: episode of each row, shape (n,).
            step: step of each row, shape (n,).
            obs: observations, shape (n, obs_dim).
            action: flat logged actions, shape (n,).
            reward: rewards, shape (n,).
            target_probs: π_e(·|x) of every row, shape (n, n_actions), dense or scipy-sparse.
            predict_rows: rows to return Q̂ / V̂ for (e.g. a held-out fold).
            fit_rows: rows to fit on; their episodes should be complete.
        """
        ep = Episodes.of(np.asarray(episode_id), np.asarray(step))
        nxt = ep.next_row()
        n = obs.shape[0]
        fit_idx = np.arange(n) if fit_rows is None else np.asarray(fit_rows)
        pred_idx = np.arange(n) if predict_rows is None else np.asarray(predict_rows)
        probs = _sparse_if_sparse(target_probs)
        design = self.model.design(obs[fit_idx], action[fit_idx])
        # next-state rows of the fitting rows and their policy mixtures (fixed over the rounds)
        nxt_fit = nxt[fit_idx]
        has_next = nxt_fit >= 0
        nxt_rows = nxt_fit[has_next]
        phi_next = design.fmap(obs[nxt_rows])
        probs_next = _take_rows(probs, nxt_rows)
        r = np.asarray(reward, dtype=np.float64)[fit_idx]
        n_iter = self.n_iter or ep.horizon
        y = r.copy()
        fitted = design.solve(y)
        for _ in range(n_iter - 1):
            v_next = np.einsum("np,np->n", phi_next, np.asarray(probs_next @ fitted.weights))
            y = r.copy()
            y[has_next] += self.gamma * v_next
            fitted = design.solve(y)
        obs_pred = obs[pred_idx]
        return FQEFit(
            q_logged=fitted.at(obs_pred, action[pred_idx]),
            v_target=fitted.expected(obs_pred, _take_rows(probs, pred_idx)),
        )

    def estimate(
        self,
        episode_id: np.ndarray,
        step: np.ndarray,
        obs: np.ndarray,
        action: np.ndarray,
        reward: np.ndarray,
        target_probs: Probs,
        *,
        rng: np.random.Generator,
        alpha: float = 0.05,
        n_boot: int = 1000,
        fitted: FQEFit | None = None,
    ) -> Estimate:
        """Mean of V̂(x_0) over episodes; the interval resamples episodes with Q̂ held fixed.

        ``fitted`` reuses a previous :meth:`fit` of all rows (e.g. cross-fitted values).
        """
        eid = as_vector(episode_id, "episode_id", dtype=np.int64)
        st = as_vector(step, "step", n=eid.shape[0], dtype=np.int64)
        if obs.shape[0] != eid.shape[0] or target_probs.shape[0] != eid.shape[0]:
            raise DataError(
                f"obs has {obs.shape[0]} rows and target_probs {target_probs.shape[0]}, expected {eid.shape[0]}"
            )
        fit = fitted or self.fit(eid, st, obs, action, reward, target_probs)
        ep = Episodes.of(eid, st)
        v0 = fit.v_target[ep.first_rows()]
        value, lower, upper = interval_from_sums(
            v0[:, None], lambda s, m: s[:, 0] / m, rng=rng, alpha=alpha, n_boot=n_boot, influence=lambda c: c[:, 0]
        )
        return Estimate(value, lower, upper, ep.n_episodes, math.nan, math.nan, "bootstrap" if n_boot else "normal")


def _take_rows(probs: Probs, rows: np.ndarray) -> Probs:
    if sp.issparse(probs):
        return sp.csr_matrix(probs)[rows]
    return probs[rows]
