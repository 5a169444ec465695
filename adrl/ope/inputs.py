"""What every whole-episode estimator reads, behind one type: :class:`EpisodeInputs`.

An episode-level estimator is a class with ``name``, ``scope = "episode"`` and ``run(inputs) -> Estimate``;
``adrl.ope.run.ESTIMATORS`` lists it. The costly shared parts (the target's full action distribution, the
cross-fitted FQE) are computed once, on first use, and reused by every estimator of one evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import scipy.sparse as sp

from adrl.errors import ConfigError
from adrl.ope.data import LoggedData, TargetProbs
from adrl.ope.estimate import Estimate
from adrl.ope.model_based import Simulators
from adrl.ope.reward_models import RidgeRewardModel, default_reward_model, fold_ids
from adrl.ope.sequential import FQE, FQEFit


@dataclass
class EpisodeInputs:
    """The logged data with the target's probabilities and the evaluation's settings.

    Attributes:
        target_prob: π_e(a_i|x_i) of every logged action, shape (n,).
        probs_matrix: π_e(·|x_i) of every row as sparse rows (n, n_actions), when an estimator needs them.
        rng: the stream of the episode estimators' bootstrap draws, used in the order they run.
        fold_rng: the stream of cross-fitting folds.
    """

    data: LoggedData
    target_prob: np.ndarray
    probs_matrix: sp.csr_matrix | None
    gamma: float
    rng: np.random.Generator
    fold_rng: np.random.Generator
    alpha: float
    n_boot: int
    n_folds: int
    reward_model: RidgeRewardModel | None = None
    probs: TargetProbs | None = None  # the target policy itself, for the estimators that roll it out
    sim: Simulators | None = None  # the learned simulator's members (model-based family)
    requested: tuple[str, ...] = ()  # the episode estimators asked for, in order
    max_starts: int | None = None
    max_episodes: int | None = None

    @property
    def weights_args(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(episode_id, step, reward, propensity, target_prob): the inputs of the importance-weighted ones."""
        d = self.data
        return d.episode_id, d.step, d.reward, d.propensity, self.target_prob

    @property
    def interval(self) -> dict[str, Any]:
        return {"rng": self.rng, "alpha": self.alpha, "n_boot": self.n_boot}

    def require_probs(self) -> sp.csr_matrix:
        if self.probs_matrix is None:
            raise ValueError("this estimator needs the target's full action distribution (needs_probs_matrix)")
        return self.probs_matrix

    @cached_property
    def model_family(self) -> dict[str, Estimate]:
        """The model-based family's estimates (model, model-wdr, magic, mis, mdr), computed together so they share
        the simulator's Q̂ / V̂ and the state ratios."""
        from adrl.ope.returns import RETURN_ESTIMATORS, evaluate_returns

        wanted = [k for k in self.requested if k in RETURN_ESTIMATORS]
        if self.sim is None or self.probs is None:
            raise ConfigError(f"estimators {wanted} roll the policy out in a behavior model; pass one (--behavior)")
        return evaluate_returns(
            self.data, self.probs, self.target_prob, wanted, self.sim, rng=self.rng, alpha=self.alpha,
            n_boot=min(self.n_boot, 200) if self.n_boot else 200, gamma=self.gamma, max_starts=self.max_starts,
            max_episodes=self.max_episodes,
        )  # fmt: skip

    @cached_property
    def fqe_fit(self) -> FQEFit:
        """Q̂ / V̂ of every row from FQE fitted on the other folds' episodes (cross-fitted by episode)."""
        data, probs = self.data, self.require_probs()
        fqe = FQE(self.reward_model or default_reward_model(data), gamma=self.gamma)
        folds = fold_ids(data.n, self.n_folds, self.fold_rng, groups=data.episode_id)
        q_logged = np.empty(data.n)
        v_target = np.empty(data.n)
        for k in range(self.n_folds):
            held = np.flatnonzero(folds == k)
            fit = fqe.fit(
                data.episode_id, data.step, data.obs, data.action, data.reward, probs,
                predict_rows=held, fit_rows=np.flatnonzero(folds != k),
            )  # fmt: skip
            q_logged[held], v_target[held] = fit.q_logged, fit.v_target
        return FQEFit(q_logged=q_logged, v_target=v_target)
