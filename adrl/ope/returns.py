"""The return-per-user-day estimators that use the learned simulator, run together on one logged set.

Their shared pieces are computed once: the simulator's Q̂ / V̂ at every logged row (model-WDR, MAGIC, MDR) and the
classifier's state ratios (MIS, MDR).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from adrl.ope.data import LoggedData, TargetProbs
from adrl.ope.estimate import Estimate
from adrl.ope.marginal import MarginalDR, MarginalIS, state_ratios
from adrl.ope.model_based import ModelBased, Simulators
from adrl.ope.model_dr import MAGIC, FamilyData, ModelQV, ModelWDR, model_q_v

_ON_LOGGED_ROWS: dict[str, type[ModelWDR | MAGIC | MarginalIS | MarginalDR]] = {
    e.name: e for e in (ModelWDR, MAGIC, MarginalIS, MarginalDR)
}  # the ones that correct the simulator with the logged rows
RETURN_ESTIMATORS = {ModelBased.name: ModelBased, **_ON_LOGGED_ROWS}


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
    max_starts: int | None = None,
    max_episodes: int | None = None,
) -> dict[str, Estimate]:
    """Estimates of the names in :data:`RETURN_ESTIMATORS` among ``names``, in that order.

    ``max_starts`` caps the logged starts of the model-based estimate; ``max_episodes`` the episodes (a uniform
    subsample) that model-WDR, MAGIC, MIS and MDR use, as their rollouts start at every logged decision.
    """
    wanted = [k for k in names if k in RETURN_ESTIMATORS]
    qv_rng, ratio_rng, model_rng, boot_rng, sub_rng = rng.spawn(5)
    n_boot = max(n_boot, 2)
    full = data
    if max_episodes is not None and data.n_episodes > max_episodes and any(k != "model" for k in wanted):
        keep = sub_rng.choice(np.unique(data.episode_id), size=max_episodes, replace=False)
        rows = np.flatnonzero(np.isin(data.episode_id, keep))
        data = replace(data, obs=data.obs[rows], action=data.action[rows], propensity=data.propensity[rows],
                       reward=data.reward[rows], episode_id=data.episode_id[rows], step=data.step[rows])  # fmt: skip
        target_prob = target_prob[rows]
    qv: ModelQV | None = None
    if any(k in ("model-wdr", "magic", "mdr") for k in wanted):
        qv = model_q_v(data, probs, sim, rng=qv_rng)
    ratio = state_ratios(data, probs, sim, rng=ratio_rng) if any(k in ("mis", "mdr") for k in wanted) else None
    inputs = FamilyData(data, target_prob, qv, ratio)
    out: dict[str, Estimate] = {}
    for k in wanted:  # in the order asked, drawing from one bootstrap stream
        if k == "model":
            mb = ModelBased(n_rollouts=n_rollouts, max_starts=max_starts, gamma=gamma)
            out[k] = mb.estimate(full, probs, sim, rng=model_rng, alpha=alpha)
        else:
            out[k] = _ON_LOGGED_ROWS[k](gamma).estimate(inputs, rng=boot_rng, alpha=alpha, n_boot=n_boot)
    return out


__all__ = ["RETURN_ESTIMATORS", "evaluate_returns"]
