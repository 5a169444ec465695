"""Held-out quality of probability predictions: discrimination (AUC), fit (log loss, normalized entropy), calibration.

* normalized entropy (NE) = log loss / entropy of the base rate: 1 is no better than predicting the base rate.
* calibration = mean predicted / observed rate (1 is calibrated), overall and per slot and per hour.
* ECE = sum over bins of (bin share) * |mean predicted - observed rate|, with ``n_bins`` equal-count bins of the
  predictions (equal-width bins would put nearly every rare-event prediction in the first bin).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

_EPS = 1e-7


@dataclass(frozen=True)
class HeadMetrics:
    """Quality of one head's predictions on ``n`` held-out impressions."""

    n: int
    base_rate: float
    auc: float
    log_loss: float
    normalized_entropy: float
    calibration: float
    ece: float
    calibration_by_slot: dict[str, float] = field(default_factory=dict)
    calibration_by_hour: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-able (NaN becomes None)."""
        return _nan_to_none(asdict(self))


def _nan_to_none(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _nan_to_none(v) for k, v in x.items()}
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def log_loss(y: np.ndarray, p: np.ndarray, weight: np.ndarray | None = None) -> float:
    """Mean binary cross-entropy (nats) of probabilities ``p`` for labels ``y`` (weighted by ``weight`` if given)."""
    p = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1 - _EPS)
    y = np.asarray(y, dtype=np.float64)
    return float(-np.average(y * np.log(p) + (1 - y) * np.log1p(-p), weights=weight))


def auc(y: np.ndarray, p: np.ndarray) -> float:
    """ROC AUC; NaN when only one class is present."""
    y = np.asarray(y, dtype=bool)
    if y.all() or not y.any():
        return float("nan")
    return float(roc_auc_score(y, p))


def expected_calibration_error(y: np.ndarray, p: np.ndarray, n_bins: int = 15) -> float:
    """ECE over ``n_bins`` equal-count bins of ``p``."""
    p = np.asarray(p, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if p.size == 0:
        return float("nan")
    order = np.argsort(p, kind="stable")
    bins = np.array_split(order, min(n_bins, p.size))
    return float(sum(len(b) * abs(p[b].mean() - y[b].mean()) for b in bins) / p.size)


def _ratio(p: np.ndarray, y: np.ndarray) -> float:
    observed = float(np.mean(y)) if y.size else 0.0
    return float(np.mean(p)) / observed if observed > 0 else float("nan")


def head_metrics(
    y: np.ndarray,
    p: np.ndarray,
    *,
    slot: np.ndarray | None = None,
    hour: np.ndarray | None = None,
    slot_names: tuple[str, ...] | None = None,
    n_bins: int = 15,
) -> HeadMetrics:
    """Metrics of predictions ``p`` for binary labels ``y`` (both shape (n,)); groups by ``slot``/``hour`` if given."""
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    if y.shape != p.shape:
        raise ValueError(f"labels and predictions must have the same shape, got {y.shape} and {p.shape}")
    base = float(y.mean()) if y.size else float("nan")
    ll = log_loss(y, p) if y.size else float("nan")
    b = min(max(base, _EPS), 1 - _EPS) if y.size else float("nan")
    entropy = -(b * math.log(b) + (1 - b) * math.log(1 - b)) if y.size else float("nan")
    by_slot: dict[str, float] = {}
    if slot is not None:
        for s in np.unique(slot):
            name = slot_names[int(s)] if slot_names is not None and int(s) < len(slot_names) else str(int(s))
            m = slot == s
            by_slot[name] = _ratio(p[m], y[m])
    by_hour: dict[str, float] = {}
    if hour is not None:
        for h in np.unique(hour):
            m = hour == h
            by_hour[str(int(h))] = _ratio(p[m], y[m])
    return HeadMetrics(
        n=int(y.size),
        base_rate=base,
        auc=auc(y, p),
        log_loss=ll,
        normalized_entropy=ll / entropy if entropy > 0 else float("nan"),
        calibration=_ratio(p, y),
        ece=expected_calibration_error(y, p, n_bins),
        calibration_by_slot=by_slot,
        calibration_by_hour=by_hour,
    )
