"""Off-policy evaluation: estimate a policy's value from logged decisions before it ships.

Per-decision (contextual-bandit) value: :class:`DM`, :class:`IPS`, :class:`SNIPS`, :class:`DR`, :class:`SNDR`,
:class:`SwitchDR`. Whole-episode value: :class:`PDIS`, :class:`WIS` (weighted per-decision IS), :class:`WDR`,
:class:`FQE`. Each returns an :class:`Estimate` (value, bootstrap interval, n, ESS, max weight);
:func:`evaluate` runs several on a :class:`LoggedData` set with cross-fitted reward models.
"""

from adrl.ope.bandit import DM, DR, IPS, SNDR, SNIPS, BanditEstimator, SwitchDR, estimate_all
from adrl.ope.data import LoggedData, from_adrl_frame, read_adrl_logs
from adrl.ope.estimate import Estimate, bootstrap_mean, resampled_sums
from adrl.ope.reward_models import FittedRidge, MaskedQ, QFunction, RidgeRewardModel, cross_fit, q_terms
from adrl.ope.run import ALL_ESTIMATORS, DEFAULT_ESTIMATORS, ESTIMATORS, OPEResult, evaluate, parse_estimators
from adrl.ope.sequential import FQE, PDIS, WDR, WIS, FQEFit
from adrl.ope.validation import check_bandit_inputs, check_sequential_inputs

__all__ = [
    "ALL_ESTIMATORS",
    "DEFAULT_ESTIMATORS",
    "DM",
    "DR",
    "ESTIMATORS",
    "FQE",
    "IPS",
    "PDIS",
    "SNDR",
    "SNIPS",
    "WDR",
    "WIS",
    "BanditEstimator",
    "Estimate",
    "FQEFit",
    "FittedRidge",
    "LoggedData",
    "MaskedQ",
    "OPEResult",
    "QFunction",
    "RidgeRewardModel",
    "SwitchDR",
    "bootstrap_mean",
    "check_bandit_inputs",
    "check_sequential_inputs",
    "cross_fit",
    "estimate_all",
    "evaluate",
    "from_adrl_frame",
    "parse_estimators",
    "q_terms",
    "read_adrl_logs",
    "resampled_sums",
]
