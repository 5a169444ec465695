"""The result of an off-policy estimate and the resampling behind its confidence interval.

Every estimator in :mod:`adrl.ope` reduces its data to a few *column sums*: the estimate is a smooth function of
the sums of some per-row (or per-episode) columns, e.g. IPS = Σ w·r / n and SNIPS = Σ w·r / Σ w. The bootstrap
resamples rows with replacement and recomputes that function from the resampled sums, so a ratio is resampled
as a ratio. The sums of all resamples come from one vectorized pass: per resample, ``np.bincount`` of the drawn
row indices gives each row's multiplicity, and a matrix product turns multiplicities into sums of every column
at once (chunked so memory stays bounded for large ``n``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any

import numpy as np

# bytes of float64 multiplicities held at once by the bootstrap (rows x resamples per chunk)
_CHUNK_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class Estimate:
    """A policy value estimate with its ``1 - alpha`` confidence interval and importance-weight diagnostics.

    Attributes:
        value: the point estimate.
        lower: lower end of the confidence interval.
        upper: upper end of the confidence interval.
        n: rows (bandit estimators) or episodes (whole-episode estimators) used.
        ess: effective sample size of the importance weights, (Σ w)² / Σ w² (NaN for DM and FQE).
        max_weight: the largest importance weight (NaN for DM and FQE).
        interval: ``"bca"`` (bias-corrected and accelerated bootstrap), ``"bootstrap"`` (percentile bootstrap) or
            ``"normal"`` (delta method, when ``n_boot=0``).
    """

    value: float
    lower: float
    upper: float
    n: int
    ess: float = math.nan
    max_weight: float = math.nan
    interval: str = "bootstrap"

    def covers(self, truth: float) -> bool:
        """Whether the interval contains ``truth``."""
        return self.lower <= truth <= self.upper

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready fields (NaN becomes None)."""
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(self).items()}


def weight_diagnostics(weight: np.ndarray) -> tuple[float, float]:
    """Effective sample size (Σ w)² / Σ w² and max weight of importance weights ``weight``, shape (n,)."""
    if weight.size == 0:
        return math.nan, math.nan
    sq = float(np.dot(weight, weight))
    ess = float(weight.sum()) ** 2 / sq if sq > 0 else 0.0
    return ess, float(weight.max())


def check_interval_args(alpha: float, n_boot: int) -> None:
    if not 0.0 < alpha < 1.0:  # also rejects NaN
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    if n_boot < 0 or int(n_boot) != n_boot:
        raise ValueError(f"n_boot must be an integer >= 0 (0 = normal approximation), got {n_boot!r}")


def resampled_sums(columns: np.ndarray, *, rng: np.random.Generator, n_boot: int) -> np.ndarray:
    """Column sums of ``n_boot`` bootstrap resamples of the rows of ``columns`` (n, k): shape (n_boot, k).

    Each resample draws ``n`` row indices uniformly with replacement from ``rng``; the draws of resample ``b``
    do not depend on the chunk size, so the same ``rng`` state gives the same sums.
    """
    cols = np.asarray(columns, dtype=np.float64)
    if cols.ndim == 1:
        cols = cols[:, None]
    n = cols.shape[0]
    out = np.empty((n_boot, cols.shape[1]))
    if n == 0:
        out.fill(0.0)
        return out
    per_chunk = max(1, _CHUNK_ELEMENTS // n)
    index_dtype = np.int32 if n < 2**31 else np.int64
    counts = np.empty((min(per_chunk, n_boot), n))
    for start in range(0, n_boot, per_chunk):
        b = min(per_chunk, n_boot - start)
        idx = rng.integers(0, n, size=(b, n), dtype=index_dtype)
        for j in range(b):
            counts[j] = np.bincount(idx[j], minlength=n)
        out[start : start + b] = counts[:b] @ cols
    return out


def interval_from_sums(
    columns: np.ndarray,
    statistic: Callable[[np.ndarray, int], np.ndarray],
    *,
    rng: np.random.Generator,
    alpha: float,
    n_boot: int,
    influence: Callable[[np.ndarray], np.ndarray] | None = None,
) -> tuple[float, float, float]:
    """Point estimate and ``1 - alpha`` interval of a statistic of column sums.

    Args:
        columns: per-row (or per-episode) values, shape (n, k).
        statistic: maps sums of shape (m, k) and the row count ``n`` to ``m`` statistic values.
        rng: source of the bootstrap draws.
        alpha: one minus the confidence level.
        n_boot: bootstrap resamples; 0 gives a normal-approximation interval from ``influence``.
        influence: maps ``columns`` to each row's influence on the statistic, shape (n,); needed when
            ``n_boot == 0``. The standard error is then ``std(influence) / sqrt(n)``.

    Returns:
        ``(value, lower, upper)``; the percentile interval of the resampled statistics (NaN-free ones).
    """
    check_interval_args(alpha, n_boot)
    n = columns.shape[0]
    value = float(statistic(columns.sum(axis=0, keepdims=True), n)[0])
    if n_boot == 0:
        if influence is None:
            raise ValueError("n_boot=0 needs an influence function for the normal approximation")
        psi = influence(columns)
        se = float(np.std(psi, ddof=1)) / math.sqrt(n) if n > 1 else math.inf
        z = _normal_quantile(1.0 - alpha / 2.0)
        return value, value - z * se, value + z * se
    stats = statistic(resampled_sums(columns, rng=rng, n_boot=n_boot), n)
    stats = stats[np.isfinite(stats)]  # a resample can miss every weighted row of a ratio
    if stats.size == 0:
        return value, math.nan, math.nan
    lower, upper = np.quantile(stats, [alpha / 2.0, 1.0 - alpha / 2.0])
    return value, float(lower), float(upper)


def bootstrap_mean(
    values: np.ndarray, *, rng: np.random.Generator, alpha: float = 0.05, n_boot: int = 1000
) -> tuple[float, float, float]:
    """Mean of ``values`` (n,) with a percentile-bootstrap interval (normal interval when ``n_boot == 0``).

    >>> rng = np.random.default_rng(0)
    >>> value, lower, upper = bootstrap_mean(np.arange(10.0), rng=rng, n_boot=200)
    >>> value, lower < value < upper
    (4.5, True)
    """
    cols = np.asarray(values, dtype=np.float64).reshape(-1, 1)
    return interval_from_sums(
        cols, lambda s, n: s[:, 0] / n, rng=rng, alpha=alpha, n_boot=n_boot, influence=lambda c: c[:, 0]
    )


def bca_interval(
    value: float,
    stats: np.ndarray,
    jackknife: np.ndarray,
    alpha: float,
) -> tuple[float, float]:
    """Bias-corrected and accelerated (BCa) bootstrap interval (Efron, 1987).

    Importance-weighted means are right-skewed: a resample rarely holds the few rows with the largest weights, so
    the percentile interval sits too low and covers less than it claims. BCa moves both quantiles by the bootstrap
    distribution's median bias ``z0`` and by the skewness of the statistic, the acceleration ``a``, measured from
    the leave-one-out (jackknife) values.

    Args:
        value: the statistic on the full data.
        stats: the statistic on each bootstrap resample (finite values only), shape (B,).
        jackknife: the statistic with each row (or group) left out, shape (n,).
        alpha: one minus the confidence level.

    Returns:
        ``(lower, upper)``; the acceleration is 0 when the jackknife values are all equal (constant data).
    """
    b = stats.size
    if b == 0:
        return math.nan, math.nan
    share = float(np.count_nonzero(stats < value) + 0.5 * np.count_nonzero(stats == value)) / b
    z0 = _normal_quantile(min(max(share, 1.0 / (b + 1)), b / (b + 1)))
    jk = jackknife[np.isfinite(jackknife)]
    d = jk.mean() - jk if jk.size else jk
    ss = float(np.dot(d, d))
    a = float(np.sum(d**3)) / (6.0 * ss**1.5) if ss > 0 else 0.0
    probs = []
    for q in (alpha / 2.0, 1.0 - alpha / 2.0):
        z = z0 + _normal_quantile(q)
        denom = 1.0 - a * z
        probs.append(NormalDist().cdf(z0 + z / denom) if denom > 0 else (0.0 if q < 0.5 else 1.0))
    lower, upper = np.quantile(stats, probs)
    return float(lower), float(upper)


def _normal_quantile(p: float) -> float:
    return NormalDist().inv_cdf(p)
