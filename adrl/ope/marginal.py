"""State-marginal importance weighting (Liu et al. 2018) and marginal doubly robust (Kallus & Uehara 2020) returns.

Instead of the product of every earlier decision's weight, each logged decision at step t is weighted by the ratio
of the target's distribution of states at step t to the logger's, d_e,t(x) / d_b,t(x), times that one decision's
π_e(a|x) / π_b(a|x). The ratio comes from a classifier between the target's states at step t, taken from its rollouts
in the learned simulator from the logged starts, and the logged states at step t (the density-ratio trick): with
N logged episodes and N_e rollouts, a logistic regression's odds P(target | x) / P(logged | x) on the two samples
give

    w_t(x) = odds_t(x) · N / N_e

which includes the share of users still in their day at t under each policy (both samples hold only those). Then

    MIS = Σ_t γ^t 1/N Σ_i w_t(x_it) · π_e/π_b(a_it|x_it) · r_it
    MDR = 1/N Σ_i V̂(x_i0) + Σ_t γ^t 1/N Σ_i w_t(x_it) · π_e/π_b(a_it|x_it) · (r_it + γ V̂_{i,t+1} − Q̂_it)

with Q̂ / V̂ the simulator's (:mod:`adrl.ope.model_dr`). Ratios are clipped at ``clip``. Intervals: Poisson
multiplier bootstrap over episodes with the ratios held fixed (so they leave out the classifier's own error).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from adrl.ope.data import LoggedData, TargetProbs
from adrl.ope.estimate import Estimate, weight_diagnostics
from adrl.ope.model_based import ModelFamily, Simulators, first_rows, rollout_returns, states_from_obs
from adrl.ope.model_dr import FamilyData, poisson_sums
from adrl.ope.sequential import Episodes

_MAX_FIT_ROWS = 50_000  # per class and step: enough for a linear classifier


def state_ratios(
    data: LoggedData,
    probs: TargetProbs,
    sim: Simulators,
    *,
    rng: np.random.Generator,
    clip: float = 50.0,
    max_rollouts: int = 50_000,
) -> np.ndarray:
    """w_t(x) of every logged row, shape (n,) (module docstring); rows at steps the target never reaches get 0."""
    ep = Episodes.of(data.episode_id, data.step)
    rows = first_rows(data)
    if rows.size > max_rollouts:
        rows = np.sort(rng.choice(rows, size=max_rollouts, replace=False))
    starts = states_from_obs(data.obs[rows], sim.layout, sim.world)
    target_obs: dict[int, list[np.ndarray]] = {}

    def keep(step: int, obs: np.ndarray) -> None:
        target_obs.setdefault(step, []).append(obs.copy())

    member_rng = rng.spawn(1)[0]
    n_e = 0
    for member in sim.members:
        rollout_returns(sim.world, member, probs, starts, rng=member_rng, on_step=keep)
        n_e += rows.size
    ratio = np.zeros(data.n)
    n = ep.n_episodes
    for t in range(ep.horizon):
        logged_rows = np.flatnonzero(ep.position == t)
        got = target_obs.get(t)
        if got is None or logged_rows.size == 0:
            continue
        xe = np.concatenate(got)
        xb = data.obs[logged_rows]
        fe = xe if xe.shape[0] <= _MAX_FIT_ROWS else xe[rng.choice(xe.shape[0], _MAX_FIT_ROWS, replace=False)]
        fb = xb if xb.shape[0] <= _MAX_FIT_ROWS else xb[rng.choice(xb.shape[0], _MAX_FIT_ROWS, replace=False)]
        x = np.concatenate([fe, fb]).astype(np.float64)
        y = np.concatenate([np.ones(fe.shape[0]), np.zeros(fb.shape[0])])
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=300))
        clf.fit(x, y)
        p = clf.predict_proba(xb.astype(np.float64))[:, 1]
        prior = fb.shape[0] / fe.shape[0]  # undo the classes' sizes in the fitted sample
        odds = p / np.maximum(1.0 - p, 1e-12) * prior
        # odds = d_e,t(x | in day) / d_b,t(x | in day); times the shares in their day, N_e,t / N_e over N_b,t / N
        ratio[logged_rows] = np.minimum(odds * (xe.shape[0] / n_e) / (xb.shape[0] / n), clip)
    return ratio


def _interval(
    per_episode: np.ndarray, *, rng: np.random.Generator, alpha: float, n_boot: int
) -> tuple[float, float, float]:
    n = per_episode.size
    value = float(per_episode.mean())
    reps = poisson_sums(per_episode[:, None], rng=rng, n_boot=n_boot)[:, 0] / n
    lower, upper = np.quantile(reps, [alpha / 2.0, 1.0 - alpha / 2.0])
    return value, float(lower), float(upper)


@dataclass(frozen=True)
class MarginalIS(ModelFamily):
    """State-marginal importance sampling of the return (Liu et al. 2018), ratios from a classifier."""

    gamma: float = 1.0
    name: ClassVar[str] = "mis"

    def estimate(self, x: FamilyData, *, rng: np.random.Generator, alpha: float = 0.05, n_boot: int = 200) -> Estimate:
        data = x.data
        ep = Episodes.of(data.episode_id, data.step)
        mu = x.require_ratio() * x.target_prob / data.propensity
        per_episode = np.bincount(
            ep.episode, weights=mu * data.reward * self.gamma**ep.position, minlength=ep.n_episodes
        )
        value, lower, upper = _interval(per_episode, rng=rng, alpha=alpha, n_boot=n_boot)
        ess, max_w = weight_diagnostics(mu)
        return Estimate(value, lower, upper, ep.n_episodes, ess, max_w, "poisson-bootstrap")


@dataclass(frozen=True)
class MarginalDR(ModelFamily):
    """Marginal doubly robust return (Kallus & Uehara 2020) with the simulator's Q̂ / V̂ and classifier ratios."""

    gamma: float = 1.0
    name: ClassVar[str] = "mdr"

    def estimate(self, x: FamilyData, *, rng: np.random.Generator, alpha: float = 0.05, n_boot: int = 200) -> Estimate:
        data, qv = x.data, x.require_qv()
        ep = Episodes.of(data.episode_id, data.step)
        nxt = ep.next_row()
        v_next = np.where(nxt >= 0, qv.v_target[np.maximum(nxt, 0)], 0.0)
        mu = x.require_ratio() * x.target_prob / data.propensity
        disc = self.gamma**ep.position
        corr = mu * (data.reward + self.gamma * v_next - qv.q_logged) * disc
        per_episode = np.bincount(ep.episode, weights=corr, minlength=ep.n_episodes)
        per_episode[ep.episode[ep.position == 0]] += qv.v_target[ep.position == 0]
        value, lower, upper = _interval(per_episode, rng=rng, alpha=alpha, n_boot=n_boot)
        ess, max_w = weight_diagnostics(mu)
        return Estimate(value, lower, upper, ep.n_episodes, ess, max_w, "poisson-bootstrap")


__all__ = ["MarginalDR", "MarginalIS", "state_ratios"]
