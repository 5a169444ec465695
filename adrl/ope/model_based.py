"""Model-based off-policy estimate of the return per user-day: the target policy rolled out in a learned simulator.

The logged users' starting states are rebuilt from the first logged observation of each episode (segment, interest
signal, hour and whatever history the day already had), so no ground-truth state is needed: a server's decision log
works as well as a simulated one. From each start the target policy is rolled out ``n_rollouts`` times in every
member of an ensemble of response models (e.g. behavior models fitted on bootstrap resamples of user-days, or any
sequence of :class:`~adrl.world.ResponseModel`), with :meth:`adrl.world.World.step` doing the day's bookkeeping. A
rollout adds the model's *expected* reward of each action it takes (a conditional expectation of the sampled reward
with the same mean and less noise) and samples the outcomes that move the state on.

With R[m, i] the mean return of start i in member m (N starts, M members):

    value = 1/(M N) Σ_m Σ_i R[m, i]
    se²   = var_i(R̄[·, i]) / N + (1 + 1/M) · var_m(R̄[m, ·])          (Rubin's rule for multiple imputation)

so the interval holds both the sampling of users (first term) and the model's own uncertainty, the spread between
members (second term). Its half-width is t · se with Student's t at the Barnard-Rubin degrees of freedom
(``"t-users+models"``), since a handful of members estimate the second term poorly; with one member only the first
term is left and the interval says so (``"normal-users"``).
The estimate is exact, up to Monte-Carlo noise, when the model is the world (tested with a deterministic world).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from adrl.actions import sample_from, unflatten
from adrl.errors import ConfigError, DataError
from adrl.features import FeatureLayout
from adrl.ope.data import LoggedData, TargetProbs
from adrl.ope.estimate import Estimate
from adrl.ope.sequential import Episodes
from adrl.protocols import ResponseModel
from adrl.scenario import HOURS_PER_DAY
from adrl.world import NEVER, Response, UserBatch, World

if TYPE_CHECKING:
    from adrl.ope.inputs import EpisodeInputs


class ModelFamily:
    """The registry's entry point of the estimators that share the learned simulator's rollouts (model, model-wdr,
    magic, mis, mdr): they are computed together, once per evaluation (:attr:`EpisodeInputs.model_family`)."""

    name: ClassVar[str]
    scope: ClassVar[str] = "episode"
    needs_probs_matrix: ClassVar[bool] = False

    @classmethod
    def run(cls, inputs: EpisodeInputs) -> Estimate:
        return inputs.model_family[cls.name]


@dataclass(frozen=True)
class Simulators:
    """The learned world an estimate rolls policies out in: the dynamics and one or more response models.

    Attributes:
        world: the bookkeeping of a day (:class:`~adrl.world.World` of the scenario the logs follow); its own
            ground-truth probabilities are not used unless it is one of ``members``.
        members: response models, e.g. the members of a behavior-model ensemble; their spread is the model's
            uncertainty.
    """

    world: World
    members: tuple[ResponseModel, ...]

    def __post_init__(self) -> None:
        if not self.members:
            raise ConfigError("a model-based estimate needs at least one response model (behavior model)")

    @property
    def layout(self) -> FeatureLayout:
        return FeatureLayout.from_scenario(self.world.scenario)


def states_from_obs(obs: np.ndarray, layout: FeatureLayout, world: World) -> UserBatch:
    """Users whose observable state encodes to ``obs`` (n, obs_dim): the start of a rollout from a logged row.

    Exact for a fresh day (no ad shown yet, as at the first decision of an adrl log); for a day already under way
    the counts, the last impression and the exposures are rebuilt exactly, the impression times behind the window
    counts are placed at the latest epochs that fit them. The hidden interest is set to the observed signal and
    fatigue to 0: a learned response model reads only observable features.
    """
    x = np.asarray(obs, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != layout.obs_dim:
        raise DataError(f"observations have shape {x.shape}, expected (n, {layout.obs_dim})")
    sc = world.scenario
    n = x.shape[0]
    k = len(layout.categories)
    col = layout.index
    segment = np.rint(x[:, 0]).astype(np.int64)
    if n and (segment.min() < 0 or segment.max() >= sc.n_segments):
        i = int(np.flatnonzero((segment < 0) | (segment >= sc.n_segments))[0])
        raise DataError(f"segment {int(segment[i])} at row {i} is outside 0..{sc.n_segments - 1}")
    epoch = np.rint(x[:, col("day_progress")] * layout.horizon).astype(np.int64)
    since = x[:, col("hours_since_last_ad")]
    seen_any = since < HOURS_PER_DAY  # capped at a day: no ad yet today (or over a day ago, which a day excludes)
    last = np.where(seen_any, epoch - np.rint(since).astype(np.int64), NEVER)
    mask = np.zeros(n, dtype=np.uint64)
    counts = {w: np.rint(x[:, col(f"impressions_{w}h")]).astype(np.int64) for w in (1, 6, 24)}
    for row in np.flatnonzero(seen_any):  # only rows of a day under way; a first decision has none
        bits, e, inner = {int(last[row])}, int(epoch[row]), 0
        for w in (1, 6, 24):  # fill each window's ring (outside the narrower one) with its latest free epochs
            top = min(int(last[row]), e - inner - 1)
            candidates = [t for t in range(top, max(e - w, 0) - 1, -1) if t not in bits]
            missing = int(counts[w][row]) - sum(1 for t in bits if e - w <= t < e)
            bits.update(candidates[: max(missing, 0)])
            inner = w
        for t in bits:
            if 0 <= t < 64:
                mask[row] |= np.uint64(1) << np.uint64(t)
    slot_cols = [col(f"slot_count_{s}") for s in layout.slots]
    creative_cols = [col(f"creative_count_{c}") for c in layout.creatives]
    growth = world.decay_per_hour ** -epoch.astype(np.float64)  # exposure = acc · decay^epoch
    signal = x[:, 1 : 1 + k]
    return UserBatch(
        segment=segment,
        interest=signal.copy(),
        signal=signal.astype(np.float32),
        epoch=epoch,
        fatigue=np.zeros(n),
        impression_mask=mask,
        last_impression=last.astype(np.int64),
        clicks=np.rint(x[:, col("clicks_today")]).astype(np.int64),
        conversions=np.rint(x[:, col("conversions_today")]).astype(np.int64),
        slot_counts=np.rint(x[:, slot_cols]).astype(np.int64),
        creative_counts=np.rint(x[:, creative_cols]).astype(np.int64),
        exposure_acc=x[:, layout.exposure_cols] * growth[:, None],
    )


def expected_reward(world: World, response: Response, action: np.ndarray, shown: np.ndarray) -> np.ndarray:
    """E[r | state, action] under ``response``; 0 where the delay runs past the day."""
    return np.where(shown, world.expected_reward(response, action), 0.0)


def rollout_returns(
    sim: World,
    response: ResponseModel,
    probs: TargetProbs,
    starts: UserBatch,
    *,
    rng: np.random.Generator,
    first_action: np.ndarray | None = None,
    gamma: float = 1.0,
    chunk: int = 65_536,
    on_step: Callable[[int, np.ndarray], None] | None = None,
) -> np.ndarray:
    """Return of one rollout of the target policy from each of ``starts`` in ``response``, shape (n,).

    Args:
        sim: the day's dynamics.
        response: the response model driving the outcomes.
        probs: the target policy, ``obs (m, obs_dim) -> (m, n_actions)``.
        starts: the users to start from (not modified).
        rng: draws the actions and outcomes.
        first_action: (n, 3) actions forced at the first decision (Q-values), or None (the policy's).
        gamma: discount per decision.
        chunk: users rolled out at once.
        on_step: called with (decision index, observations of the users still in their day) before each decision.
    """
    layout = FeatureLayout.from_scenario(sim.scenario)
    nvec = sim.scenario.action_nvec
    n = len(starts)
    out = np.zeros(n)
    for lo in range(0, n, chunk):
        hi = min(n, lo + chunk)
        batch = starts.take(slice(lo, hi))
        active = np.arange(hi - lo)
        total = np.zeros(hi - lo)
        discount = 1.0
        step = 0
        while active.size:
            obs = layout.encode(batch)
            if on_step is not None:
                on_step(step, obs)
            if step == 0 and first_action is not None:
                action = np.asarray(first_action[lo:hi], dtype=np.int64)
            else:
                p = np.asarray(probs(obs), dtype=np.float64)
                if p.shape != (active.size, int(np.prod(nvec))):
                    raise ConfigError(
                        f"target policy returned probabilities of shape {p.shape}, expected "
                        f"({active.size}, {int(np.prod(nvec))}); does it belong to the logs' scenario?"
                    )
                action = unflatten(sample_from(p, rng), nvec)
            res = sim.step(batch, action, rng, response=response)
            total[active] += discount * expected_reward(sim, res.response, action, res.shown)
            going = ~(res.terminated | res.truncated)
            if not going.all():
                active, batch = active[going], batch.take(going)
            discount *= gamma
            step += 1
        out[lo:hi] = total
    return out


def members_interval(returns: np.ndarray, alpha: float) -> tuple[float, float, float, str]:
    """Mean of ``returns`` (M, N) and its interval over users and members (module docstring).

    With M > 1 the between-member variance is estimated from M values only, so the reference distribution is
    Student's t with the Barnard-Rubin (1999) degrees of freedom rather than the normal: with three members and the
    members' spread dominating, a normal interval covers about 81% (the coverage of t with 2 degrees of freedom at
    ±1.96), the t interval 95%.
    """
    m, n = returns.shape
    value = float(returns.mean())
    per_user = returns.mean(axis=0)
    within = float(per_user.var(ddof=1)) / n if n > 1 else math.inf
    if m == 1:
        z = NormalDist().inv_cdf(1.0 - alpha / 2.0)
        se = math.sqrt(within)
        return value, value - z * se, value + z * se, "normal-users"
    if not math.isfinite(within):  # one start: no estimate of the users' part
        return value, -math.inf, math.inf, "t-users+models"
    between = (1.0 + 1.0 / m) * float(returns.mean(axis=1).var(ddof=1))
    total = within + between
    se = math.sqrt(total)
    q = _t_quantile(1.0 - alpha / 2.0, rubin_dof(within, between, m, n))
    return value, value - q * se, value + q * se, "t-users+models"


def rubin_dof(within: float, between: float, m: int, n: int) -> float:
    """Barnard-Rubin degrees of freedom of ``within + between`` (``between`` already scaled by 1 + 1/M), with the
    complete-data degrees of freedom n − 1; infinite when both parts vanish."""
    total = within + between
    if total <= 0.0:
        return math.inf
    lam = between / total  # the share of the variance that is the model's
    nu_com = float(max(n - 1, 1))
    nu_obs = (nu_com + 1.0) / (nu_com + 3.0) * nu_com * (1.0 - lam)
    if lam == 0.0:
        return nu_obs
    nu_old = (m - 1) / lam**2
    return nu_old * nu_obs / (nu_old + nu_obs) if nu_obs > 0.0 else nu_old


def _t_quantile(p: float, dof: float) -> float:
    from scipy.stats import t

    return float(NormalDist().inv_cdf(p)) if not math.isfinite(dof) else float(t.ppf(p, dof))


def first_rows(data: LoggedData) -> np.ndarray:
    """Row of each episode's first logged decision, shape (N,), in episode-id order."""
    return Episodes.of(data.episode_id, data.step).first_rows()


@dataclass(frozen=True)
class ModelBased(ModelFamily):
    """The target policy rolled out in the learned simulator from the logged starts (module docstring).

    Attributes:
        n_rollouts: rollouts per start and member (their mean is the start's return).
        max_starts: at most this many starts (a uniform subsample, same for every member), None for all.
        gamma: discount per decision.
    """

    n_rollouts: int = 1
    max_starts: int | None = None
    gamma: float = 1.0
    name: ClassVar[str] = "model"

    def __post_init__(self) -> None:
        if self.n_rollouts < 1:
            raise ValueError(f"n_rollouts must be >= 1, got {self.n_rollouts!r}")
        if self.max_starts is not None and self.max_starts < 2:
            raise ValueError(f"max_starts must be >= 2 or None, got {self.max_starts!r}")
        if not 0.0 < self.gamma <= 1.0:
            raise ValueError(f"gamma must be in (0, 1], got {self.gamma!r}")

    def returns(self, data: LoggedData, probs: TargetProbs, sim: Simulators, *, rng: np.random.Generator) -> np.ndarray:
        """R[m, i]: mean return of start i in member m, shape (M, N)."""
        rows = first_rows(data)
        if self.max_starts is not None and rows.size > self.max_starts:
            rows = np.sort(rng.choice(rows, size=self.max_starts, replace=False))
        starts = states_from_obs(data.obs[rows], sim.layout, sim.world)
        out = np.zeros((len(sim.members), rows.size))
        streams = rng.spawn(len(sim.members))
        for m, (member, stream) in enumerate(zip(sim.members, streams, strict=True)):
            for _ in range(self.n_rollouts):
                out[m] += rollout_returns(sim.world, member, probs, starts, rng=stream, gamma=self.gamma)
        return out / self.n_rollouts

    def estimate(
        self,
        data: LoggedData,
        probs: TargetProbs,
        sim: Simulators,
        *,
        rng: np.random.Generator,
        alpha: float = 0.05,
    ) -> Estimate:
        """Mean return per user-day with an interval over users and members."""
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
        r = self.returns(data, probs, sim, rng=rng)
        value, lower, upper, kind = members_interval(r, alpha)
        return Estimate(value, lower, upper, r.shape[1], interval=kind)


def logged_return(data: LoggedData, *, alpha: float = 0.05, gamma: float = 1.0) -> Estimate:
    """The logging policy's own value: the mean (discounted) logged return per episode, with a normal interval."""
    ep = Episodes.of(data.episode_id, data.step)
    per_episode = np.bincount(ep.episode, weights=data.reward * gamma**ep.position, minlength=ep.n_episodes)
    n = ep.n_episodes
    value = float(per_episode.mean())
    se = float(per_episode.std(ddof=1)) / math.sqrt(n) if n > 1 else math.inf
    z = NormalDist().inv_cdf(1.0 - alpha / 2.0)
    return Estimate(value, value - z * se, value + z * se, n, interval="normal")


__all__ = [
    "ModelBased",
    "Simulators",
    "expected_reward",
    "first_rows",
    "logged_return",
    "members_interval",
    "rollout_returns",
    "rubin_dof",
    "states_from_obs",
]


def check_members(members: Sequence[ResponseModel]) -> tuple[ResponseModel, ...]:
    """The members as a tuple; a non-:class:`ResponseModel` raises ``ConfigError`` naming it."""
    bad = [type(m).__name__ for m in members if not isinstance(m, ResponseModel)]
    if bad:
        raise ConfigError(f"response models must have probabilities(batch, action); got {bad}")
    return tuple(members)
