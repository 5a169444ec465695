"""Doubly robust returns with the learned simulator's Q̂ / V̂, and MAGIC's blend of model and importance weights.

Q̂(x_t, a_t) and V̂(x_t) of the target policy come from rollouts in the learned simulator (:mod:`adrl.ope.model_based`)
started at every logged decision's state: V̂ follows the target from x_t, Q̂ takes the logged action first and then
follows the target. Both average over the ensemble's members.

With the cumulative weight ρ_{i,t} (ρ_{i,−1} = 1) and per-step self-normalised sums (the grid layout of
:mod:`adrl.ope.sequential`),

    A_t = Σ_i ρ_{i,t} (r_{i,t} − Q̂_{i,t}) / Σ_i ρ_{i,t}        B_t = Σ_i ρ_{i,t−1} V̂_{i,t} / Σ_i ρ_{i,t−1}

the off-policy j-step return (Thomas & Brunskill 2016) trusts the weights for the first j+1 decisions and the model
after them: g^(j) = Σ_{t≤j} γ^t (A_t + B_t) + γ^{j+1} B_{j+1}. g^(−1) is the model alone (mean V̂ of the logged
starts), g^(H−1) is weighted doubly robust (:class:`ModelWDR`; Jiang & Li 2016, Thomas & Brunskill 2016).
:class:`MAGIC` picks the blend x on the simplex minimising x'(Ω + b b')x, with Ω the covariance of the g^(j)
and b_j the distance of g^(j) from the interval of g^(H−1) (its bias bound), and reports x·g with the interval
x·g ± z·√(x'(Ω + b b')x), the estimated root mean squared error.

Ω and every interval come from a Poisson multiplier bootstrap over episodes (each episode's weight ~ Poisson(1)):
memory stays at the episode grid, whatever the number of replicates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import ClassVar

import numpy as np
from scipy.optimize import minimize

from adrl.actions import unflatten
from adrl.errors import DataError
from adrl.ope.data import LoggedData, TargetProbs
from adrl.ope.estimate import Estimate, weight_diagnostics
from adrl.ope.model_based import ModelFamily, Simulators, rollout_returns, states_from_obs
from adrl.ope.sequential import Episodes

_CHUNK_EPISODES = 16_384


@dataclass(frozen=True)
class ModelQV:
    """The simulator's Q̂(x_t, a_t) and V̂(x_t) of the target policy at every logged row, shape (n,) each."""

    q_logged: np.ndarray
    v_target: np.ndarray


@dataclass(frozen=True)
class FamilyData:
    """What model-WDR, MAGIC, MIS and MDR read: the logged rows, π_e(a_t|x_t) of the logged actions (n,), the
    simulator's Q̂ / V̂ and the classifier's state ratios (n,), the last two computed once for all of them."""

    data: LoggedData
    target_prob: np.ndarray
    qv: ModelQV | None = None
    ratio: np.ndarray | None = None

    def require_qv(self) -> ModelQV:
        if self.qv is None:
            raise ValueError("this estimator needs the simulator's Q-hat / V-hat (qv)")
        return self.qv

    def require_ratio(self) -> np.ndarray:
        if self.ratio is None:
            raise ValueError("this estimator needs the state-marginal ratios (ratio)")
        return self.ratio


def model_q_v(data: LoggedData, probs: TargetProbs, sim: Simulators, *, rng: np.random.Generator) -> ModelQV:
    """One rollout per row and member for V̂ (target from x_t) and for Q̂ (logged action first), member-averaged."""
    states = states_from_obs(data.obs, sim.layout, sim.world)
    logged = unflatten(data.action, sim.world.scenario.action_nvec)
    q = np.zeros(data.n)
    v = np.zeros(data.n)
    for member, stream in zip(sim.members, rng.spawn(len(sim.members)), strict=True):
        v += rollout_returns(sim.world, member, probs, states, rng=stream)
        q += rollout_returns(sim.world, member, probs, states, rng=stream, first_action=logged)
    m = len(sim.members)
    return ModelQV(q_logged=q / m, v_target=v / m)


def poisson_sums(columns: np.ndarray, *, rng: np.random.Generator, n_boot: int) -> np.ndarray:
    """Σ_i W_{b,i} columns_i for ``n_boot`` replicates of Poisson(1) episode weights W: shape (n_boot, k).

    Episodes are drawn in chunks so memory is ``n_boot × chunk``; replicate b's weights depend only on ``rng``.
    """
    n, k = columns.shape
    out = np.zeros((n_boot, k))
    for lo in range(0, n, _CHUNK_EPISODES):
        hi = min(n, lo + _CHUNK_EPISODES)
        w = rng.poisson(1.0, size=(n_boot, hi - lo)).astype(np.float64)
        out += w @ columns[lo:hi]
    return out


def _partial_returns(sums: np.ndarray, h: int, disc: np.ndarray) -> np.ndarray:
    """g^(j) for j = −1 .. H−1 from sums laid out [ρ(r − Q̂) | ρ | ρ_prev V̂ | ρ_prev], shape (m, H + 1)."""

    def ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)

    a = ratio(sums[:, :h], sums[:, h : 2 * h]) * disc
    b = ratio(sums[:, 2 * h : 3 * h], sums[:, 3 * h :]) * disc
    b_next = np.concatenate([b, np.zeros((b.shape[0], 1))], axis=1)  # B_H = 0: nothing after the day
    cum = np.concatenate([np.zeros((a.shape[0], 1)), np.cumsum(a + b, axis=1)], axis=1)  # Σ_{t<j+1}
    return cum + b_next


@dataclass(frozen=True)
class _Grid:
    columns: np.ndarray  # (N, 4H)
    horizon: int
    rho_final: np.ndarray  # (N,)


def _grid(data: LoggedData, target_prob: np.ndarray, qv: ModelQV) -> _Grid:
    if target_prob.shape != (data.n,) or qv.q_logged.shape != (data.n,) or qv.v_target.shape != (data.n,):
        raise DataError(f"target_prob, q_logged and v_target must each have shape ({data.n},)")
    ep = Episodes.of(data.episode_id, data.step)
    rho = np.cumprod(ep.grid(target_prob / data.propensity, fill=1.0), axis=1)
    rho_prev = np.concatenate([np.ones((ep.n_episodes, 1)), rho[:, :-1]], axis=1)
    cols = np.concatenate(
        [rho * (ep.grid(data.reward) - ep.grid(qv.q_logged)), rho, rho_prev * ep.grid(qv.v_target), rho_prev], axis=1
    )
    return _Grid(cols, ep.horizon, rho[:, -1])


def _check(alpha: float, n_boot: int, gamma: float) -> None:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    if n_boot < 2:
        raise ValueError(f"n_boot must be >= 2 (Poisson bootstrap replicates), got {n_boot!r}")
    if not 0.0 < gamma <= 1.0:
        raise ValueError(f"gamma must be in (0, 1], got {gamma!r}")


@dataclass(frozen=True)
class ModelWDR(ModelFamily):
    """Weighted doubly robust return (g^(H−1)) with the simulator's Q̂ / V̂; Poisson-bootstrap percentile interval."""

    gamma: float = 1.0
    name: ClassVar[str] = "model-wdr"

    def estimate(self, x: FamilyData, *, rng: np.random.Generator, alpha: float = 0.05, n_boot: int = 200) -> Estimate:
        _check(alpha, n_boot, self.gamma)
        g = _grid(x.data, x.target_prob, x.require_qv())
        disc = self.gamma ** np.arange(g.horizon)
        value = float(_partial_returns(g.columns.sum(axis=0, keepdims=True), g.horizon, disc)[0, -1])
        reps = _partial_returns(poisson_sums(g.columns, rng=rng, n_boot=n_boot), g.horizon, disc)[:, -1]
        lower, upper = np.quantile(reps, [alpha / 2.0, 1.0 - alpha / 2.0])
        ess, max_w = weight_diagnostics(g.rho_final)
        return Estimate(value, float(lower), float(upper), g.columns.shape[0], ess, max_w, "poisson-bootstrap")


@dataclass(frozen=True)
class MAGIC(ModelFamily):
    """Model and guided importance sampling combining (Thomas & Brunskill 2016) over g^(−1) .. g^(H−1).

    Attributes:
        gamma: discount per decision.
    """

    gamma: float = 1.0
    name: ClassVar[str] = "magic"

    def blend(
        self, x: FamilyData, *, rng: np.random.Generator, alpha: float, n_boot: int
    ) -> tuple[np.ndarray, np.ndarray, float, int, float]:
        """(weights w over j = −1..H−1, g, root-MSE, episodes, max weight)."""
        _check(alpha, n_boot, self.gamma)
        g = _grid(x.data, x.target_prob, x.require_qv())
        h = g.horizon
        disc = self.gamma ** np.arange(h)
        full = _partial_returns(g.columns.sum(axis=0, keepdims=True), h, disc)[0]
        reps = _partial_returns(poisson_sums(g.columns, rng=rng, n_boot=n_boot), h, disc)
        omega = np.cov(reps, rowvar=False)
        lo, hi = np.quantile(reps[:, -1], [alpha / 2.0, 1.0 - alpha / 2.0])
        bias = np.maximum(0.0, np.maximum(full - hi, lo - full))
        mse = omega + np.outer(bias, bias)
        k = full.size
        res = minimize(
            lambda x: float(x @ mse @ x),
            np.full(k, 1.0 / k),
            jac=lambda x: 2.0 * mse @ x,
            bounds=[(0.0, 1.0)] * k,
            constraints=[{"type": "eq", "fun": lambda x: float(x.sum() - 1.0)}],
            method="SLSQP",
        )
        w = np.clip(res.x, 0.0, None)
        w = w / w.sum()
        return w, full, math.sqrt(max(float(w @ mse @ w), 0.0)), g.columns.shape[0], float(g.rho_final.max())

    def estimate(self, x: FamilyData, *, rng: np.random.Generator, alpha: float = 0.05, n_boot: int = 200) -> Estimate:
        w, g, rmse, n, max_w = self.blend(x, rng=rng, alpha=alpha, n_boot=n_boot)
        value = float(w @ g)
        z = NormalDist().inv_cdf(1.0 - alpha / 2.0)
        # the ESS of a blend: the model's share counts every episode, the weights' share their ESS
        return Estimate(value, value - z * rmse, value + z * rmse, n, math.nan, max_w, "normal-rmse")


__all__ = ["MAGIC", "ModelQV", "ModelWDR", "model_q_v", "poisson_sums"]
