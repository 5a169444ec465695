"""Per-decision (contextual-bandit) value estimators: DM, IPS, SNIPS, DR, SNDR and Switch-DR.

The estimand is V(π_e) = E_x[Σ_a π_e(a|x) E[r | x, a]], the expected immediate reward of the target policy π_e
over the logged contexts x. Inputs are per logged row, each shape (n,):

- ``reward`` r, the observed reward of the logged action a;
- ``propensity`` π_b(a|x) of the logging policy, in (0, 1];
- ``target_prob`` π_e(a|x) of the target policy for the same action, in [0, 1];
- for model-based estimators ``q_logged`` = q̂(x, a) and ``q_target`` = Σ_a' π_e(a'|x) q̂(x, a') from a reward
  model (cross-fitted, see :mod:`adrl.ope.reward_models`).

With w = target_prob / propensity:

    DM        = mean(q_target)
    IPS       = mean(min(w, clip) · r)                       unbiased when clip = ∞
    SNIPS     = Σ w·r / Σ w
    DR        = mean(q_target + min(w, clip) · (r − q_logged))   unbiased if the propensities are right
    SNDR      = mean(q_target) + Σ w·(r − q_logged) / Σ w
    Switch-DR = mean(q_target + 1[w ≤ τ] · w · (r − q_logged))    (the form of Open Bandit Pipeline's SwitchDR)

Each estimate reduces to sums of up to three columns (direct, correction, normalizer), so the bootstrap
resamples rows and recomputes ratios from resampled sums (see :mod:`adrl.ope.estimate`). The interval covers
the sampling of contexts and outcomes; a reward model is held fixed, so a DM interval ignores its fitting error.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np

from adrl.ope.estimate import (
    Estimate,
    bca_interval,
    check_interval_args,
    interval_from_sums,
    resampled_sums,
    weight_diagnostics,
)
from adrl.ope.validation import check_bandit_inputs


@dataclass(frozen=True)
class Terms:
    """Per-row columns of an estimate: ``mean(direct) + Σ correction / Σ normalizer``.

    A missing ``direct`` counts as 0, a missing ``normalizer`` as 1 per row (so the second part is a mean);
    ``weight`` is the effective importance weight, for diagnostics only.
    """

    direct: np.ndarray | None
    correction: np.ndarray | None
    normalizer: np.ndarray | None
    weight: np.ndarray | None

    def columns(self) -> list[np.ndarray]:
        return [c for c in (self.direct, self.correction, self.normalizer) if c is not None]

    def statistic(self, sums: np.ndarray, n: int | np.ndarray) -> np.ndarray:
        """The estimate from column sums ``sums`` (m, len(columns())) over ``n`` rows (one count per sum row)."""
        j = 0
        value = np.zeros(sums.shape[0])
        if self.direct is not None:
            value = value + sums[:, j] / n
            j += 1
        if self.correction is not None:
            num = sums[:, j]
            j += 1
            if self.normalizer is not None:
                den = sums[:, j]
                with np.errstate(divide="ignore", invalid="ignore"):
                    value = value + np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
            else:
                value = value + num / n
        return value

    def influence(self, columns: np.ndarray) -> np.ndarray:
        """Each row's influence on the estimate (delta method), shape (n,)."""
        j = 0
        psi = np.zeros(columns.shape[0])
        if self.direct is not None:
            psi = psi + columns[:, j]
            j += 1
        if self.correction is not None:
            c = columns[:, j]
            j += 1
            if self.normalizer is not None:
                w = columns[:, j]
                mean_w = float(w.mean())
                theta = float(c.sum() / w.sum()) if w.sum() > 0 else 0.0
                psi = psi + ((c - theta * w) / mean_w if mean_w > 0 else 0.0)
            else:
                psi = psi + c
        return psi


class BanditEstimator:
    """Shared driver: validate, build :class:`Terms`, compute the value, interval and weight diagnostics."""

    name: ClassVar[str]
    scope: ClassVar[str] = "per-decision"
    needs_model: ClassVar[bool] = False

    def terms(
        self,
        reward: np.ndarray,
        propensity: np.ndarray,
        target_prob: np.ndarray,
        q_logged: np.ndarray | None,
        q_target: np.ndarray | None,
    ) -> Terms:
        raise NotImplementedError

    def per_decision(
        self,
        reward: np.ndarray,
        propensity: np.ndarray,
        target_prob: np.ndarray,
        q_logged: np.ndarray | None = None,
        q_target: np.ndarray | None = None,
    ) -> np.ndarray:
        """Per-row contributions whose mean is the estimate, shape (n,) (self-normalised: scaled by 1/mean(w))."""
        r, p, t, ql, qt = self._check(reward, propensity, target_prob, q_logged, q_target)
        terms = self.terms(r, p, t, ql, qt)
        out = np.zeros(r.shape[0]) if terms.direct is None else terms.direct.copy()
        if terms.correction is not None:
            scale = 1.0 if terms.normalizer is None else 1.0 / float(terms.normalizer.mean())
            out += terms.correction * scale
        return out

    def estimate(
        self,
        reward: np.ndarray,
        propensity: np.ndarray,
        target_prob: np.ndarray,
        q_logged: np.ndarray | None = None,
        q_target: np.ndarray | None = None,
        *,
        rng: np.random.Generator,
        alpha: float = 0.05,
        n_boot: int = 1000,
    ) -> Estimate:
        """Estimate V(π_e) with a ``1 - alpha`` interval.

        Args:
            reward: observed rewards, shape (n,).
            propensity: π_b(a|x) of the logged actions, shape (n,), in (0, 1].
            target_prob: π_e(a|x) of the logged actions, shape (n,), in [0, 1].
            q_logged: q̂(x, a) of the logged actions, shape (n,); required by model-based estimators.
            q_target: Σ_a' π_e(a'|x) q̂(x, a'), shape (n,); required by model-based estimators.
            rng: source of the bootstrap draws.
            alpha: one minus the confidence level.
            n_boot: bootstrap resamples (percentile interval); 0 gives the normal (delta-method) interval.

        Returns:
            The :class:`Estimate`, with ESS and max weight of the importance weights.

        Raises:
            DataError: invalid inputs (see :func:`adrl.ope.validation.check_bandit_inputs`).
            ValueError: a model-based estimator without ``q_logged`` / ``q_target``, or a bad ``alpha``/``n_boot``.
        """
        return estimate_all(
            [self], reward, propensity, target_prob, q_logged, q_target, rng=rng, alpha=alpha, n_boot=n_boot
        )[self.name]

    def _check(
        self,
        reward: object,
        propensity: object,
        target_prob: object,
        q_logged: object | None,
        q_target: object | None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
        if self.needs_model and (q_logged is None or q_target is None):
            raise ValueError(f"{self.name} needs reward-model predictions q_logged and q_target")
        return check_bandit_inputs(reward, propensity, target_prob, q_logged, q_target)


def _clip_check(value: float, what: str) -> None:
    if not value > 0:  # also rejects NaN
        raise ValueError(f"{what} must be > 0, got {value!r}")


@dataclass(frozen=True)
class DM(BanditEstimator):
    """Direct method: mean of the reward model's value of the target policy, mean(q_target).

    Biased when the reward model is; its interval ignores the model's own fitting error.
    """

    name: ClassVar[str] = "dm"
    needs_model: ClassVar[bool] = True

    def terms(
        self,
        reward: np.ndarray,
        propensity: np.ndarray,
        target_prob: np.ndarray,
        q_logged: np.ndarray | None,
        q_target: np.ndarray | None,
    ) -> Terms:
        return Terms(direct=q_target, correction=None, normalizer=None, weight=None)


@dataclass(frozen=True)
class IPS(BanditEstimator):
    """Inverse propensity scoring: mean of min(w, clip) · r with w = target_prob / propensity (unbiased if clip=∞)."""

    clip: float = math.inf
    name: ClassVar[str] = "ips"

    def __post_init__(self) -> None:
        _clip_check(self.clip, "clip")

    def terms(
        self,
        reward: np.ndarray,
        propensity: np.ndarray,
        target_prob: np.ndarray,
        q_logged: np.ndarray | None,
        q_target: np.ndarray | None,
    ) -> Terms:
        w = np.minimum(target_prob / propensity, self.clip)
        return Terms(direct=None, correction=w * reward, normalizer=None, weight=w)


@dataclass(frozen=True)
class SNIPS(BanditEstimator):
    """Self-normalised IPS: Σ w·r / Σ w; slightly biased, bounded by the reward range, lower variance."""

    name: ClassVar[str] = "snips"

    def terms(
        self,
        reward: np.ndarray,
        propensity: np.ndarray,
        target_prob: np.ndarray,
        q_logged: np.ndarray | None,
        q_target: np.ndarray | None,
    ) -> Terms:
        w = target_prob / propensity
        return Terms(direct=None, correction=w * reward, normalizer=w, weight=w)


@dataclass(frozen=True)
class DR(BanditEstimator):
    """Doubly robust: mean(q_target + min(w, clip) · (r − q_logged)); unbiased with true propensities (clip=∞)."""

    clip: float = math.inf
    name: ClassVar[str] = "dr"
    needs_model: ClassVar[bool] = True

    def __post_init__(self) -> None:
        _clip_check(self.clip, "clip")

    def terms(
        self,
        reward: np.ndarray,
        propensity: np.ndarray,
        target_prob: np.ndarray,
        q_logged: np.ndarray | None,
        q_target: np.ndarray | None,
    ) -> Terms:
        assert q_logged is not None and q_target is not None  # checked in _check
        w = np.minimum(target_prob / propensity, self.clip)
        return Terms(direct=q_target, correction=w * (reward - q_logged), normalizer=None, weight=w)


@dataclass(frozen=True)
class SNDR(BanditEstimator):
    """Self-normalised DR: mean(q_target) + Σ w·(r − q_logged) / Σ w."""

    name: ClassVar[str] = "sndr"
    needs_model: ClassVar[bool] = True

    def terms(
        self,
        reward: np.ndarray,
        propensity: np.ndarray,
        target_prob: np.ndarray,
        q_logged: np.ndarray | None,
        q_target: np.ndarray | None,
    ) -> Terms:
        assert q_logged is not None and q_target is not None
        w = target_prob / propensity
        return Terms(direct=q_target, correction=w * (reward - q_logged), normalizer=w, weight=w)


@dataclass(frozen=True)
class SwitchDR(BanditEstimator):
    """Switch-DR: DR on rows whose weight is at most ``tau``, the direct method alone on the others.

    mean(q_target + 1[w ≤ τ] · w · (r − q_logged)); τ = ∞ is DR, τ → 0 is DM.
    """

    tau: float = math.inf
    name: ClassVar[str] = "switch-dr"
    needs_model: ClassVar[bool] = True

    def __post_init__(self) -> None:
        _clip_check(self.tau, "tau")

    def terms(
        self,
        reward: np.ndarray,
        propensity: np.ndarray,
        target_prob: np.ndarray,
        q_logged: np.ndarray | None,
        q_target: np.ndarray | None,
    ) -> Terms:
        assert q_logged is not None and q_target is not None
        w = target_prob / propensity
        w = np.where(w <= self.tau, w, 0.0)
        return Terms(direct=q_target, correction=w * (reward - q_logged), normalizer=None, weight=w)


def _group_sums(columns: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-group column sums and row counts: shapes (G, k) and (G,)."""
    g = np.asarray(groups)
    if g.shape != (columns.shape[0],):
        raise ValueError(f"groups must have shape ({columns.shape[0]},), got {g.shape}")
    _, inverse = np.unique(g, return_inverse=True)
    per_group = np.empty((int(inverse.max()) + 1 if inverse.size else 0, columns.shape[1]))
    for c in range(columns.shape[1]):
        per_group[:, c] = np.bincount(inverse, weights=columns[:, c], minlength=per_group.shape[0])
    return per_group, np.bincount(inverse, minlength=per_group.shape[0]).astype(np.float64)


def estimate_all(
    estimators: Sequence[BanditEstimator],
    reward: object,
    propensity: object,
    target_prob: object,
    q_logged: object | None = None,
    q_target: object | None = None,
    *,
    rng: np.random.Generator,
    alpha: float = 0.05,
    n_boot: int = 1000,
    groups: np.ndarray | None = None,
    interval: Literal["bca", "percentile"] = "bca",
) -> dict[str, Estimate]:
    """Run several estimators on the same rows with one shared set of bootstrap resamples.

    Validates once, stacks every estimator's columns and resamples them together, so ``k`` estimators cost
    about one bootstrap. With ``groups`` (e.g. episode ids, shape (n,)) the bootstrap resamples whole groups:
    decisions of one user-day are correlated, and resampling them one by one would give too narrow intervals.
    ``interval`` is ``"bca"`` (bias-corrected and accelerated, the default: it corrects the right skew of
    importance-weighted means, whose percentile intervals under-cover when weights are heavy) or ``"percentile"``.
    Returns ``{estimator.name: Estimate}`` in the given order.
    """
    if interval not in ("bca", "percentile"):
        raise ValueError(f"interval must be 'bca' or 'percentile', got {interval!r}")
    check_interval_args(alpha, n_boot)
    if not estimators:
        return {}
    names = [e.name for e in estimators]
    if len(set(names)) != len(names):
        raise ValueError(f"estimator names must be unique, got {names}")
    need_q = any(e.needs_model for e in estimators)
    r, p, t, ql, qt = estimators[0]._check(
        reward, propensity, target_prob, q_logged if need_q else None, q_target if need_q else None
    )
    for e in estimators:
        if e.needs_model and (ql is None or qt is None):
            raise ValueError(f"{e.name} needs reward-model predictions q_logged and q_target")
    n = r.shape[0]
    all_terms = [e.terms(r, p, t, ql, qt) for e in estimators]
    blocks = [np.column_stack(tm.columns()) for tm in all_terms]
    out: dict[str, Estimate] = {}
    sums = None
    counts: int | np.ndarray = n
    units: np.ndarray | None = None  # rows or groups: what the bootstrap resamples and the jackknife leaves out
    unit_counts: np.ndarray | float = 1.0
    if n_boot > 0:
        stacked = np.column_stack(blocks)
        if groups is None:
            units = stacked
            sums = resampled_sums(stacked, rng=rng, n_boot=n_boot)
        else:
            units, unit_counts = _group_sums(stacked, groups)
            both = resampled_sums(np.column_stack([units, unit_counts]), rng=rng, n_boot=n_boot)
            sums, counts = both[:, :-1], both[:, -1]
    j = 0
    for e, tm, cols in zip(estimators, all_terms, blocks, strict=True):
        k = cols.shape[1]
        if sums is None:
            value, lower, upper = interval_from_sums(
                cols, tm.statistic, rng=rng, alpha=alpha, n_boot=0, influence=tm.influence
            )
        else:
            value = float(tm.statistic(cols.sum(axis=0, keepdims=True), n)[0])
            stats = tm.statistic(sums[:, j : j + k], counts)
            stats = stats[np.isfinite(stats)]
            if not stats.size:
                lower, upper = math.nan, math.nan
            elif interval == "bca" and units is not None:
                left_out = units[:, j : j + k].sum(axis=0, keepdims=True) - units[:, j : j + k]
                with np.errstate(divide="ignore", invalid="ignore"):
                    jackknife = tm.statistic(left_out, n - unit_counts)
                lower, upper = bca_interval(value, stats, jackknife, alpha)
            else:
                lower, upper = (float(q) for q in np.quantile(stats, [alpha / 2, 1 - alpha / 2]))
        j += k
        ess, max_w = weight_diagnostics(tm.weight) if tm.weight is not None else (math.nan, math.nan)
        out[e.name] = Estimate(
            value=value,
            lower=lower,
            upper=upper,
            n=n,
            ess=ess,
            max_weight=max_w,
            interval=("bca" if interval == "bca" else "bootstrap") if n_boot > 0 else "normal",
        )
    return out
