"""The return-per-user-day estimators that use the learned simulator, run together on one logged set.

Their shared pieces are computed once: the simulator's Q̂ / V̂ at every logged row (model-WDR, MAGIC, MDR) and the
classifier's state ratios (MIS, MDR).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from adrl.ope.data import LoggedData, TargetProbs
from adrl.ope.estimate import Estimate
from adrl.ope.marginal import MarginalDR, MarginalIS, state_ratios
from adrl.ope.model_based import ModelBased, Simulators
from adrl.ope.model_dr import MAGIC, ModelQV, ModelWDR, model_q_v

RETURN_ESTIMATORS = {e.name: e for e in (ModelBased, ModelWDR, MAGIC, MarginalIS, MarginalDR)}


def evaluate_returns(
    data: LoggedData,
    probs: TargetProbs,
    target_prob: np.ndarray,
    names: Sequence[str],
    sim: Simulators,
    *,
    rng: np.random.Generator,
    alpha: float = 0.05,
    n_boot: int = 200,
    n_rollouts: int = 1,
    gamma: float = 1.0,
) -> dict[str, Estimate]:
    """Estimates of the names in :data:`RETURN_ESTIMATORS` among ``names``, in that order."""
    wanted = [k for k in names if k in RETURN_ESTIMATORS]
    qv_rng, ratio_rng, model_rng, boot_rng = rng.spawn(4)
    n_boot = max(n_boot, 2)
    qv: ModelQV | None = None
    if any(k in ("model-wdr", "magic", "mdr") for k in wanted):
        qv = model_q_v(data, probs, sim, rng=qv_rng)
    ratio = state_ratios(data, probs, sim, rng=ratio_rng) if any(k in ("mis", "mdr") for k in wanted) else None
    out: dict[str, Estimate] = {}
    for k in wanted:
        if k == "model":
            out[k] = ModelBased(n_rollouts=n_rollouts, gamma=gamma).estimate(data, probs, sim, rng=model_rng,
                                                                             alpha=alpha)  # fmt: skip
        elif k == "model-wdr":
            assert qv is not None
            out[k] = ModelWDR(gamma).estimate(data, target_prob, qv, rng=boot_rng, alpha=alpha, n_boot=n_boot)
        elif k == "magic":
            assert qv is not None
            out[k] = MAGIC(gamma).estimate(data, target_prob, qv, rng=boot_rng, alpha=alpha, n_boot=n_boot)
        elif k == "mis":
            assert ratio is not None
            out[k] = MarginalIS(gamma).estimate(data, target_prob, ratio, rng=boot_rng, alpha=alpha, n_boot=n_boot)
        else:
            assert ratio is not None and qv is not None
            out[k] = MarginalDR(gamma).estimate(data, target_prob, ratio, qv, rng=boot_rng, alpha=alpha,
                                                n_boot=n_boot)  # fmt: skip
    return out


__all__ = ["RETURN_ESTIMATORS", "evaluate_returns"]
