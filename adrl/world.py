"""Ground-truth world: users with hidden interests and fatigue, and the batched day dynamics every simulator shares.

Maths (per user u, creative c, slot s, impression hour h, fatigue f just before the impression):

    affinity    = interest_u · latent_c
    logit click = base + w_a·affinity + w_q·quality_c + log(attention_s) + log(activity_seg(h)) − w_f·f
    p_conv      = σ(base_conv + propensity_seg + w_ca·affinity)            (given a click)
    f'          = f + annoyance_s · fatigue_sens_seg · (1 + wearout · times c was already shown to u)
    p_leave     = σ(base_leave + w_l · churn_sens_seg · f')                (after the impression)

Fatigue halves every ``fatigue_half_life`` hours. The observable history keeps, per slot, today's impressions
weighted by the same decay (``exposure``) and also by how often the creative had been shown before
(``repeat_exposure``); with them fatigue at epoch e is exactly
``fatigue_sens_seg · Σ_s annoyance_s · (exposure_s + wearout · repeat_exposure_s)``, so a model of the logged
features can rebuild it (it still has to learn the weights).

An action (delay, slot, creative) taken at epoch t shows the ad at epoch t + delay; the next decision is at
t + delay + 1. A delay that runs past the day shows nothing and ends it. ``step`` is the one implementation of these
dynamics: the logger, the single env (a batch of one) and the vector env all call it, with the same draws in the
same order, so equal seeds give equal days.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import NamedTuple

import numpy as np

from adrl.errors import InvalidAction
from adrl.protocols import ResponseModel
from adrl.scenario import HOURS_PER_DAY, Scenario

NEVER = -(1 << 40)  # last_impression of a user who saw no ad today: hours since it exceed any cap


@dataclass
class UserBatch:
    """State of ``n`` users: static traits, hidden state (interest, fatigue) and observable history."""

    segment: np.ndarray  # (n,) int64
    interest: np.ndarray  # (n, n_categories) float64, hidden
    signal: np.ndarray  # (n, n_categories) float32, observed noisy proxy of interest
    epoch: np.ndarray  # (n,) int64, current decision epoch
    fatigue: np.ndarray  # (n,) float64 at `epoch`, hidden
    impression_mask: np.ndarray  # (n,) uint64, bit e set if an ad was shown at epoch e
    last_impression: np.ndarray  # (n,) int64 epoch of the last ad, NEVER if none
    clicks: np.ndarray  # (n,) int64 today
    conversions: np.ndarray  # (n,) int64 today
    slot_counts: np.ndarray  # (n, n_slots) int64 today
    creative_counts: np.ndarray  # (n, n_creatives) int64 today
    # columns s: Σ over today's impressions in slot s of growth^epoch (growth = 1 / hourly decay); columns
    # n_slots + s: the same, each times how often its creative had been shown before. × decay^epoch gives the
    # exposure features (one add per impression, no per-step decay)
    exposure_acc: np.ndarray  # (n, 2 * n_slots) float64

    def __len__(self) -> int:
        return int(self.segment.shape[0])

    def take(self, idx: np.ndarray | slice) -> UserBatch:
        """A copy of the users at ``idx``."""
        return UserBatch(**{f.name: np.array(getattr(self, f.name)[idx]) for f in fields(self)})

    def assign(self, idx: np.ndarray, other: UserBatch) -> None:
        """Overwrite the users at ``idx`` (bool mask or indices) with ``other``'s, in order."""
        for f in fields(self):
            getattr(self, f.name)[idx] = getattr(other, f.name)


class Response(NamedTuple):
    """Outcome probabilities for a batch of impressions, each shape (n,).

    Named tuples (here and in :class:`StepResult`) because the single env builds one per step, and a frozen
    dataclass's ``__init__`` costs several times more."""

    p_click: np.ndarray
    p_conversion: np.ndarray  # P(conversion | click)
    p_leave: np.ndarray

    @property
    def p_ctcvr(self) -> np.ndarray:
        """P(click and conversion) over all impressions."""
        return self.p_click * self.p_conversion


class StepResult(NamedTuple):
    """What happened to each user of the batch in one decision, each shape (n,)."""

    reward: np.ndarray
    shown: np.ndarray  # an impression happened (False when the delay ran past the day)
    click: np.ndarray
    conversion: np.ndarray
    leave: np.ndarray
    terminated: np.ndarray  # the user left
    truncated: np.ndarray  # the day ended
    hour: np.ndarray  # hour of day of the impression
    response: Response


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


class World:
    """The ground-truth market of a scenario: samples users, gives true probabilities, steps days."""

    def __init__(self, scenario: Scenario) -> None:
        sc = scenario
        self.scenario = sc
        dyn = sc.dynamics
        self.latents = sc.creative_latents()  # (C, K)
        cat_index = {c: i for i, c in enumerate(sc.categories)}
        self.creative_category = np.array([cat_index[c.category] for c in sc.creatives], dtype=np.int64)
        self.quality = np.array([c.quality for c in sc.creatives])
        self.conversion_value = np.array([c.conversion_value for c in sc.creatives])
        self.log_attention = np.log(np.array([s.attention for s in sc.slots]))
        self.annoyance = np.array([s.annoyance for s in sc.slots])
        self.slot_cost = np.array([s.cost for s in sc.slots])
        shares = np.array([s.share for s in sc.segments])
        self.segment_share = shares / shares.sum()
        self.interest_mean = np.array([[s.interest.get(c, 0.0) for c in sc.categories] for s in sc.segments])
        self.interest_spread = np.array([s.interest_spread for s in sc.segments])
        self.log_activity = np.log(np.array([s.activity for s in sc.segments]))  # (S, 24)
        self.fatigue_sens = np.array([s.fatigue_sensitivity for s in sc.segments])
        self.churn_sens = np.array([s.churn_sensitivity for s in sc.segments])
        self.conv_propensity = np.array([s.conversion_propensity for s in sc.segments])
        self.delays = np.array(sc.delays, dtype=np.int64)
        self.hour_of_epoch = (sc.start_hour + np.arange(sc.horizon + int(self.delays[-1]) + 1)) % HOURS_PER_DAY
        self.decay_per_hour = 0.5 ** (1.0 / dyn.fatigue_half_life)
        self.dyn = dyn
        # lookup tables for the hot path (same values and arithmetic order as the formulas in the module docstring)
        self._nvec = np.array(sc.action_nvec, dtype=np.int64)
        self._nvec_u64 = self._nvec.astype(np.uint64)  # negative int64 indices read as uint64 are huge: one compare
        self._epoch_bit = np.left_shift(np.uint64(1), np.arange(64, dtype=np.uint64))  # impression_mask bit of epoch
        self._decay_of_delay = self.decay_per_hour**self.delays  # by delay index
        self._growth_of_epoch = self.decay_per_hour ** -np.arange(self.hour_of_epoch.shape[0], dtype=np.float64)
        self._growth_list = self._growth_of_epoch.tolist()  # Python floats for the single-user path
        self._n_slots = sc.n_slots
        self._log_activity_of_epoch = self.log_activity[:, self.hour_of_epoch]  # (S, epochs)
        self._quality_term = dyn.quality_weight * self.quality  # (C,)
        self._conv_base = dyn.base_conversion_logit + self.conv_propensity  # (S,)
        self._leave_slope = dyn.leave_fatigue_weight * self.churn_sens  # (S,)
        self._annoyance_of = self.annoyance[None, :] * self.fatigue_sens[:, None]  # (S, slots)
        self._rewards = sc.reward_table
        self._horizon = sc.horizon

    # ---- users -----------------------------------------------------------------------------------------
    def sample_users(self, n: int, rng: np.random.Generator, *, segment: np.ndarray | None = None) -> UserBatch:
        """``n`` fresh users at the start of their day; draws segment, interest, signal in that order.

        A given ``segment`` (n,) (a social graph's blocks) is kept and not drawn; interest and signal still are."""
        sc = self.scenario
        if segment is None:
            segment = rng.choice(sc.n_segments, size=n, p=self.segment_share).astype(np.int64)
        else:
            segment = np.array(segment, dtype=np.int64)
        noise = rng.standard_normal((n, sc.n_categories))
        interest = self.interest_mean[segment] + self.interest_spread[segment, None] * noise
        signal = interest + self.dyn.signal_noise * rng.standard_normal((n, sc.n_categories))
        return UserBatch(
            segment=segment,
            interest=interest,
            signal=np.clip(signal, -4.0, 4.0).astype(np.float32),
            epoch=np.zeros(n, dtype=np.int64),
            fatigue=np.zeros(n),
            impression_mask=np.zeros(n, dtype=np.uint64),
            last_impression=np.full(n, NEVER, dtype=np.int64),
            clicks=np.zeros(n, dtype=np.int64),
            conversions=np.zeros(n, dtype=np.int64),
            slot_counts=np.zeros((n, sc.n_slots), dtype=np.int64),
            creative_counts=np.zeros((n, sc.n_creatives), dtype=np.int64),
            exposure_acc=np.zeros((n, 2 * sc.n_slots)),
        )

    # ---- response ----------------------------------------------------------------------------------------
    def affinity(self, interest: np.ndarray, creative: np.ndarray) -> np.ndarray:
        return np.einsum("nk,nk->n", interest, self.latents[creative])

    def probabilities(self, batch: UserBatch, action: np.ndarray) -> Response:
        """True probabilities of click, conversion given click, and leave for ``action`` (n, 3)."""
        return self._respond(batch, action)[0]

    def _respond(
        self, batch: UserBatch, action: np.ndarray
    ) -> tuple[Response, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Response plus what ``step`` reuses: impression epoch, decayed fatigue, the impression's fatigue increment
        and the probabilities as one (3, n) array (click, conversion, leave)."""
        d_idx, s, c = action[:, 0], action[:, 1], action[:, 2]
        dyn = self.dyn
        seg = batch.segment
        at = batch.epoch + self.delays[d_idx]
        fatigue = batch.fatigue * self._decay_of_delay[d_idx]
        aff = np.einsum("nk,nk->n", batch.interest, self.latents[c])  # = affinity(interest, c)
        n = aff.shape[0]
        logits = np.empty((3, n))  # click, conversion, leave: one sigmoid call for all three
        logits[0] = (
            dyn.base_click_logit
            + dyn.affinity_weight * aff
            + self._quality_term[c]
            + self.log_attention[s]
            + self._log_activity_of_epoch[seg, at]
            - dyn.fatigue_weight * fatigue
        )
        logits[1] = self._conv_base[seg] + dyn.conversion_affinity_weight * aff
        seen = batch.creative_counts[np.arange(n), c]
        increment = self._annoyance_of[seg, s] * (1.0 + dyn.wearout * seen)  # = fatigue_increment(seg, s, seen)
        logits[2] = dyn.base_leave_logit + self._leave_slope[seg] * (fatigue + increment)
        p = _sigmoid(logits)
        return Response(p_click=p[0], p_conversion=p[1], p_leave=p[2]), at, fatigue, increment, p

    def _increment(self, batch: UserBatch, slot: np.ndarray, creative: np.ndarray) -> np.ndarray:
        """Fatigue one impression of ``creative`` in ``slot`` would add (``fatigue_increment`` via lookup tables)."""
        seen = batch.creative_counts[np.arange(len(creative)), creative]
        return self._annoyance_of[batch.segment, slot] * (1.0 + self.dyn.wearout * seen)

    def leave_grid(self, fatigue: np.ndarray, segment: np.ndarray, seen: np.ndarray) -> np.ndarray:
        """P(leave) after an impression of every (delay, slot, creative), shape (n, D, S, C), from the fatigue at each
        delay's impression epoch (n, D), the segment (n,) and how often each creative was already shown (n, C):
        the leave formula of :meth:`probabilities`, broadcast (dtype follows ``fatigue``)."""
        dt = fatigue.dtype
        increment = self._annoyance_of[segment].astype(dt)[:, :, None] * (
            1 + dt.type(self.dyn.wearout) * seen[:, None, :]
        )
        logit = dt.type(self.dyn.base_leave_logit) + self._leave_slope[segment].astype(dt)[:, None, None, None] * (
            fatigue[:, :, None, None] + increment[:, None, :, :]
        )
        return _sigmoid(logit)

    def fatigue_increment(self, segment: np.ndarray, slot: np.ndarray, seen: np.ndarray) -> np.ndarray:
        return self.annoyance[slot] * self.fatigue_sens[segment] * (1.0 + self.dyn.wearout * seen)

    def expected_reward(self, response: Response, action: np.ndarray) -> np.ndarray:
        """Immediate expected reward of ``action`` under ``response`` (before any delay overrun)."""
        return self._rewards.expected(response.p_click, response.p_ctcvr, action[:, 1], action[:, 2], response.p_leave)

    # ---- dynamics ----------------------------------------------------------------------------------------
    def check_actions(self, action: np.ndarray) -> np.ndarray:
        """Return ``action`` as int64 (n, 3) or raise ``InvalidAction`` naming the bad entry."""
        a = np.asarray(action)
        if a.ndim != 2 or a.shape[1] != 3:
            raise InvalidAction(f"actions must have shape (n, 3) = (delay, slot, creative), got {a.shape}")
        if a.dtype.kind not in "iu" and (
            a.dtype.kind not in "fb" or not (np.all(np.isfinite(a)) and np.all(a == np.round(a)))
        ):
            raise InvalidAction(f"actions must be integers, got dtype {a.dtype}")
        a = a.astype(np.int64, copy=False)
        if np.count_nonzero(a.view(np.uint64) >= self._nvec_u64):
            bad = (a < 0) | (a >= self._nvec)
            row, col = (int(x) for x in np.argwhere(bad)[0])
            part = ("delay", "slot", "creative")[col]
            raise InvalidAction(
                f"action {a[row].tolist()} has {part} index {int(a[row, col])}, expected 0..{int(self._nvec[col]) - 1}"
            )
        return a

    def step(
        self, batch: UserBatch, action: np.ndarray, rng: np.random.Generator, response: ResponseModel | None = None
    ) -> StepResult:
        """Advance every user of ``batch`` by one decision, in place.

        Draws ``rng.random((n, 3))`` (click, conversion, leave; always in this order, one row per user) and
        samples outcomes from ``response`` (the ground truth when None). Hidden fatigue follows the true process
        whatever drives the outcomes, so a learned backend only replaces the probabilities.
        """
        action = self.check_actions(action)
        n = len(batch)
        s, c = action[:, 1], action[:, 2]
        if (response is None or response is self) and type(self).probabilities is World.probabilities:
            resp, at, fatigue, increment, p = self._respond(batch, action)  # one pass shared with the bookkeeping
        else:
            resp = (self if response is None else response).probabilities(batch, action)
            at = batch.epoch + self.delays[action[:, 0]]
            fatigue = batch.fatigue * self._decay_of_delay[action[:, 0]]
            increment = self._increment(batch, s, c)
            p = np.stack([resp.p_click, resp.p_conversion, resp.p_leave])
        u = rng.random((n, 3))
        hit = u < p.T  # (n, 3): click, conversion given click, leave
        shown = at < self._horizon
        click = shown & hit[:, 0]
        conversion = click & hit[:, 1]
        leave = shown & hit[:, 2]
        reward = self._rewards.realised(click, conversion, s, c, leave=leave)
        hour = self.hour_of_epoch[at]
        # bookkeeping (observable history and hidden fatigue)
        if np.count_nonzero(shown) == n:
            rows, at_rows, s_rows, c_rows = np.arange(n), at, s, c
        else:
            not_shown = ~shown
            reward[not_shown] = 0.0
            increment[not_shown] = 0.0
            rows = np.flatnonzero(shown)
            at_rows, s_rows, c_rows = at[rows], s[rows], c[rows]
        batch.fatigue = (fatigue + increment) * self.decay_per_hour
        batch.last_impression[rows] = at_rows
        np.add(batch.clicks, click, out=batch.clicks)
        np.add(batch.conversions, conversion, out=batch.conversions)
        if n == 1:  # the single env: scalar updates cost a fraction of ufunc.at's per-call overhead
            if rows.size:
                e0, s0, c0 = int(at_rows[0]), int(s_rows[0]), int(c_rows[0])
                g0 = self._growth_list[e0]
                acc, counts = batch.exposure_acc, batch.creative_counts
                batch.impression_mask[0] |= self._epoch_bit[e0]
                acc[0, s0] += g0
                acc[0, self._n_slots + s0] += g0 * counts[0, c0]
                batch.slot_counts[0, s0] += 1
                counts[0, c0] += 1
        else:
            bits = self._epoch_bit[at_rows]
            growth = self._growth_of_epoch[at_rows]
            repeat_growth = growth * batch.creative_counts[rows, c_rows]
            if n <= 32:  # ufunc.at has the least overhead on tiny batches, fancy += wins on large ones
                np.bitwise_or.at(batch.impression_mask, rows, bits)
                np.add.at(batch.exposure_acc, (rows, s_rows), growth)
                np.add.at(batch.exposure_acc, (rows, s_rows + self._n_slots), repeat_growth)
                np.add.at(batch.slot_counts, (rows, s_rows), 1)
                np.add.at(batch.creative_counts, (rows, c_rows), 1)
            else:
                batch.impression_mask[rows] |= bits
                batch.exposure_acc[rows, s_rows] += growth
                batch.exposure_acc[rows, s_rows + self._n_slots] += repeat_growth
                batch.slot_counts[rows, s_rows] += 1
                batch.creative_counts[rows, c_rows] += 1
        batch.epoch = at + 1
        terminated = leave
        truncated = ~terminated & (batch.epoch >= self._horizon)
        return StepResult(
            reward=reward,
            shown=shown,
            click=click,
            conversion=conversion,
            leave=leave,
            terminated=terminated,
            truncated=truncated,
            hour=hour,
            response=resp,
        )
