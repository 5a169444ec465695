"""Evaluate a target policy on logged data with several estimators at once (what ``adrl ope`` runs).

Bandit (per-decision) estimators share one validation pass and one set of bootstrap resamples. Reward models
for DM / DR are either given (any ``q(obs) -> (n, n_actions)``, e.g. a behavior-model artifact) or fitted on the
spot with K-fold cross-fitting by episode. FQE (and so WDR) is cross-fitted by episode as well.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

from adrl.errors import ConfigError
from adrl.ope.bandit import DM, DR, IPS, SNDR, SNIPS, BanditEstimator, SwitchDR, estimate_all
from adrl.ope.data import LoggedData, TargetProbs
from adrl.ope.estimate import Estimate
from adrl.ope.inputs import EpisodeInputs
from adrl.ope.marginal import MarginalDR, MarginalIS
from adrl.ope.model_based import ModelBased, Simulators
from adrl.ope.model_dr import MAGIC, ModelWDR
from adrl.ope.reward_models import MaskedQ, QFunction, RidgeRewardModel, cross_fit, default_reward_model, q_terms
from adrl.ope.sequential import FQE, PDIS, WDR, WIS

# The one table of estimators, per-decision and whole-episode alike: name -> class. A per-decision estimator is a
# BanditEstimator (they share one validation pass and one set of resamples); an episode-level one has
# ``run(EpisodeInputs) -> Estimate`` (the model-based family shares its rollouts through the inputs). Adding an
# estimator is its own module plus one entry here.
ESTIMATORS: dict[str, Any] = {
    e.name: e
    for e in (
        DM,
        IPS,
        SNIPS,
        DR,
        SNDR,
        SwitchDR,
        PDIS,
        WIS,
        WDR,
        FQE,
        ModelBased,
        ModelWDR,
        MAGIC,
        MarginalIS,
        MarginalDR,
    )
}
ALL_ESTIMATORS = tuple(ESTIMATORS)
DEFAULT_ESTIMATORS = ("dm", "ips", "snips", "dr", "sndr", "switch-dr", "pdis", "wis", "wdr", "fqe")
# the estimand of `adrl ope`: the return per user-day (model-based ones need a behavior model), or the one-step value
ESTIMAND_DEFAULTS = {
    "return": ("magic", "model", "model-wdr", "mis", "mdr", "pdis", "wis", "wdr", "fqe"),
    "step": ("dm", "ips", "snips", "dr", "sndr", "switch-dr"),
}
# below this effective sample size an importance-weighted estimate is flagged as unreliable
MIN_ESS = 100.0
SCOPE = {k: e.scope for k, e in ESTIMATORS.items()}


@dataclass(frozen=True)
class OPEResult:
    """Estimates by estimator name, with what produced them."""

    estimates: dict[str, Estimate]
    n_rows: int
    n_episodes: int
    reward_model: str
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "n_rows": self.n_rows,
            "n_episodes": self.n_episodes,
            "reward_model": self.reward_model,
            "seconds": round(self.seconds, 3),
            "estimates": {k: {"scope": SCOPE.get(k, "?"), **e.as_dict()} for k, e in self.estimates.items()},
            "warnings": self.warnings(),
            **self.extra,
        }

    def warnings(self, min_ess: float = MIN_ESS) -> list[str]:
        """One line per group of importance-weighted estimators whose effective sample size is below ``min_ess``.

        Below it the estimate rests on a handful of heavily weighted rows (or episodes), and neither it nor its
        bootstrap interval can be trusted: the interval can look narrow because the rare large weights were never
        drawn.
        """
        low: dict[tuple[str, float, int], list[str]] = {}
        for name, e in self.estimates.items():
            if not math.isnan(e.ess) and e.ess < min_ess:
                low.setdefault((SCOPE.get(name, "?"), e.ess, e.n), []).append(name)
        unit = {"per-decision": "decisions", "episode": "episodes"}
        return [
            f"{', '.join(names)}: effective sample size {ess:,.1f} of {n:,} {unit.get(scope, 'rows')} (below "
            f"{min_ess:g}); the logs rarely chose this policy's actions, so the estimate and its interval are "
            "unreliable: log more, or explore more where this policy acts"
            for (scope, ess, n), names in low.items()
        ]


def parse_estimators(spec: str | Sequence[str]) -> list[str]:
    """Estimator names from ``"dm,ips"`` or a list; unknown names raise ``ConfigError`` listing the known ones."""
    names = [s.strip().lower() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    unknown = [s for s in names if s not in ALL_ESTIMATORS]
    if unknown or not names:
        raise ConfigError(f"unknown estimator(s) {unknown or names}; choose from {', '.join(ALL_ESTIMATORS)}")
    return list(dict.fromkeys(names))


def target_probabilities(
    data: LoggedData,
    probs: TargetProbs,
    *,
    chunk: int = 65_536,
    keep: bool = False,
    folds: Sequence[tuple[QFunction, np.ndarray]] | None = None,
) -> tuple[np.ndarray, sp.csr_matrix | None, tuple[np.ndarray, np.ndarray] | None]:
    """π_e(a_i|x_i) of every logged action (n,), all of π_e(·|x_i) as sparse rows when ``keep``, and, given
    reward-model ``folds``, the model terms ``(q_logged, q_target)`` of every row from the model of the fold holding
    it. The target's probabilities are computed once per chunk and shared by all three (they are the costly part
    for a policy that ranks actions with a behavior model)."""
    n = data.n
    target_prob = np.empty(n)
    kept: list[sp.csr_matrix] = []
    models: list[QFunction] = []
    fold_of = q = None
    if folds is not None:
        fold_of = np.full(n, -1, dtype=np.int64)
        for k, (model, rows) in enumerate(folds):
            fold_of[rows] = k
            models.append(MaskedQ(model, data.zero_reward) if data.zero_reward is not None else model)
        if np.any(fold_of < 0):
            raise ValueError("the reward-model folds must cover every logged row")
        q = np.empty((2, n))  # q_logged, q_target
    for lo in range(0, n, chunk):
        hi = min(n, lo + chunk)
        p = np.asarray(probs(data.obs[lo:hi]), dtype=np.float64)
        if p.shape != (hi - lo, data.n_actions):
            raise ConfigError(
                f"target policy returned probabilities of shape {p.shape}, expected ({hi - lo}, {data.n_actions}); "
                "does it belong to the logs' scenario?"
            )
        target_prob[lo:hi] = p[np.arange(hi - lo), data.action[lo:hi]]
        if keep:
            kept.append(sp.csr_matrix(p))
        if q is not None and fold_of is not None:
            for k, model in enumerate(models):
                local = np.flatnonzero(fold_of[lo:hi] == k)
                if local.size:
                    idx = lo + local
                    q[0, idx], q[1, idx] = q_terms(model, data.obs[idx], data.action[idx], p[local])
    terms = None if q is None else (q[0], q[1])
    return target_prob, (sp.vstack(kept, format="csr") if keep else None), terms


def model_terms(
    data: LoggedData,
    probs: TargetProbs,
    folds: Sequence[tuple[QFunction, np.ndarray]],
    *,
    chunk: int = 65_536,
) -> tuple[np.ndarray, np.ndarray]:
    """``(q_logged, q_target)`` of every row from the model of the fold holding it."""
    terms = target_probabilities(data, probs, chunk=chunk, folds=folds)[2]
    assert terms is not None
    return terms


def evaluate(
    data: LoggedData,
    probs: TargetProbs,
    estimators: Sequence[str] = DEFAULT_ESTIMATORS,
    *,
    rng: np.random.Generator,
    q: QFunction | None = None,
    reward_model: RidgeRewardModel | None = None,
    n_folds: int = 2,
    alpha: float = 0.05,
    n_boot: int = 1000,
    gamma: float = 1.0,
    sim: Simulators | None = None,
    max_starts: int | None = None,
    max_episodes: int | None = None,
) -> OPEResult:
    """Estimate the value of the policy with probabilities ``probs`` from ``data`` with each of ``estimators``.

    Args:
        data: the logged decisions.
        probs: the target policy, ``obs (m, obs_dim) -> (m, n_actions)`` action probabilities.
        estimators: names from :data:`ALL_ESTIMATORS`.
        rng: randomness for folds and bootstrap draws.
        q: a fixed reward model for DM / DR (e.g. a behavior model); None fits ``reward_model`` with cross-fitting.
        reward_model: the on-the-spot model (default: :class:`RidgeRewardModel` on the data's features).
        n_folds: cross-fitting folds (by episode).
        alpha: one minus the confidence level.
        n_boot: bootstrap resamples (0: normal-approximation intervals).
        gamma: discount of the whole-episode estimators.
        sim: the learned simulator (behavior-model members) for the model-based return estimators.
        max_starts: logged starts the model-based estimate rolls out from (None: all).
        max_episodes: episodes model-WDR / MAGIC / MIS / MDR use (None: all).
    """
    start = time.perf_counter()
    names = parse_estimators(list(estimators))
    fold_rng, boot_rng, seq_rng = rng.spawn(3)
    bandit = [ESTIMATORS[k]() for k in names if issubclass(ESTIMATORS[k], BanditEstimator)]
    episodic = [k for k in names if not issubclass(ESTIMATORS[k], BanditEstimator)]
    need_probs_matrix = any(ESTIMATORS[k].needs_probs_matrix for k in episodic)
    estimates: dict[str, Estimate] = {}
    model_name = "none"
    folds: list[tuple[QFunction, np.ndarray]] | None = None
    if any(e.needs_model for e in bandit):
        if q is not None:
            folds = [(q, np.arange(data.n))]
            model_name = "given"
        else:
            spec = reward_model or default_reward_model(data)
            folds = cross_fit(spec, data.obs, data.action, data.reward, n_folds=n_folds, rng=fold_rng,
                              groups=data.episode_id)  # fmt: skip
            model_name = f"ridge per action (alpha={spec.alpha:g}), {n_folds}-fold cross-fitted"
    target_prob, probs_matrix, terms = target_probabilities(data, probs, keep=need_probs_matrix, folds=folds)
    ql, qt = terms if terms is not None else (None, None)
    results = estimate_all(
        _ordered(bandit, names), data.reward, data.propensity, target_prob, ql, qt, rng=boot_rng, alpha=alpha,
        n_boot=n_boot, groups=data.episode_id,  # decisions of one user-day are resampled together
    )  # fmt: skip
    estimates.update(results)
    inputs = EpisodeInputs(
        data, target_prob, probs_matrix, gamma=gamma, rng=seq_rng, fold_rng=fold_rng, alpha=alpha, n_boot=n_boot,
        n_folds=n_folds, reward_model=reward_model, probs=probs, sim=sim, requested=tuple(episodic),
        max_starts=max_starts, max_episodes=max_episodes,
    )  # fmt: skip
    for k in episodic:
        estimates[k] = ESTIMATORS[k].run(inputs)
    ordered = {k: estimates[k] for k in names}
    return OPEResult(ordered, data.n, data.n_episodes, model_name, time.perf_counter() - start)


def _ordered(bandit: list[BanditEstimator], names: list[str]) -> list[BanditEstimator]:
    by_name = {e.name: e for e in bandit}
    return [by_name[k] for k in names if k in by_name]
