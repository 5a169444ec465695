"""The one definition of the observation and action-feature vectors.

The environment's observation space, the behavior model's inputs, the log columns and the policy server's request
parsing all derive from :class:`FeatureLayout`. Values are float32 and capped to finite bounds, so the observation
always lies in its ``Box``. Categorical fields (segment, hour, slot, creative, ...) are stored as integer-valued
floats; their ``kind`` is ``"categorical"`` and ``high + 1`` is their cardinality.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal

import numpy as np

from adrl.errors import ConfigError
from adrl.scenario import HOURS_PER_DAY, Scenario
from adrl.world import UserBatch

Kind = Literal["categorical", "continuous", "count"]
SIGNAL_BOUND = 4.0
WINDOWS = (1, 6, 24)  # hours covered by the impression-count features
LOG_PREFIX = "x_"  # feature columns in logs are named x_<feature>
FRIENDS_LOG_CAP = 10.0  # log1p(friends) is capped here (22,000 friends)
# last columns of a social market's observation: log1p(number of friends) and creatives friends shared today. The
# population env fills them; a user outside it (the single-user ids, the server) has no friends: both are 0.
SOCIAL_FEATURES = ("friends_log", "shared_with_me")


@dataclass(frozen=True)
class Feature:
    name: str
    kind: Kind
    low: float
    high: float

    @property
    def cardinality(self) -> int:
        return int(self.high) + 1


@dataclass(frozen=True)
class FeatureLayout:
    """Names, kinds and bounds of the observation (``obs``) and of the action features (``action``)."""

    obs: tuple[Feature, ...]
    action: tuple[Feature, ...]
    horizon: int
    categories: tuple[str, ...]
    segments: tuple[str, ...]
    slots: tuple[str, ...]
    creatives: tuple[str, ...]
    delays: tuple[int, ...]
    start_hour: int = 0
    exposure_half_life: float = 3.0  # hours; the decay of the exposure features
    social: bool = False  # the market has a social graph: two more observation features (see SOCIAL_FEATURES)

    @classmethod
    def from_scenario(cls, sc: Scenario) -> FeatureLayout:
        cap = float(sc.horizon)
        obs = [Feature("segment", "categorical", 0, sc.n_segments - 1)]
        obs += [Feature(f"signal_{c}", "continuous", -SIGNAL_BOUND, SIGNAL_BOUND) for c in sc.categories]
        obs += [
            Feature("hour", "categorical", 0, HOURS_PER_DAY - 1),
            Feature("hour_sin", "continuous", -1, 1),
            Feature("hour_cos", "continuous", -1, 1),
            Feature("day_progress", "continuous", 0, 1),
        ]
        obs += [Feature(f"impressions_{w}h", "count", 0, min(cap, w)) for w in WINDOWS]
        obs += [
            Feature("hours_since_last_ad", "continuous", 0, HOURS_PER_DAY),
            Feature("clicks_today", "count", 0, cap),
            Feature("conversions_today", "count", 0, cap),
        ]
        obs += [Feature(f"slot_count_{s.name}", "count", 0, cap) for s in sc.slots]
        obs += [Feature(f"creative_count_{c.name}", "count", 0, cap) for c in sc.creatives]
        # impressions per slot decayed with the fatigue half-life; repeat: each also weighted by its creative's
        # earlier showings today. Bounds: at most one impression an hour, so a geometric series caps both.
        obs += [Feature(f"exposure_{s.name}", "continuous", 0, cap) for s in sc.slots]
        obs += [Feature(f"repeat_exposure_{s.name}", "continuous", 0, cap * cap) for s in sc.slots]
        if sc.social is not None:
            obs += [
                Feature(SOCIAL_FEATURES[0], "continuous", 0, FRIENDS_LOG_CAP),
                Feature(SOCIAL_FEATURES[1], "count", 0, sc.n_creatives),
            ]
        action = (
            Feature("delay", "categorical", 0, sc.n_delays - 1),
            Feature("slot", "categorical", 0, sc.n_slots - 1),
            Feature("creative", "categorical", 0, sc.n_creatives - 1),
            Feature("category", "categorical", 0, sc.n_categories - 1),
            Feature("impression_hour", "categorical", 0, HOURS_PER_DAY - 1),
            Feature("times_seen", "count", 0, cap),
            Feature("hours_since_last_ad_at_impression", "continuous", 0, HOURS_PER_DAY),
            Feature("signal_of_category", "continuous", -SIGNAL_BOUND, SIGNAL_BOUND),
            # the exposures decayed on to the impression hour: what the fatigue there is made of
            *(Feature(f"exposure_{s.name}_at_impression", "continuous", 0, cap) for s in sc.slots),
            *(Feature(f"repeat_exposure_{s.name}_at_impression", "continuous", 0, cap * cap) for s in sc.slots),
        )
        return cls(
            obs=tuple(obs),
            action=action,
            horizon=sc.horizon,
            categories=sc.categories,
            segments=tuple(s.name for s in sc.segments),
            slots=tuple(s.name for s in sc.slots),
            creatives=tuple(c.name for c in sc.creatives),
            delays=sc.delays,
            start_hour=sc.start_hour,
            exposure_half_life=sc.dynamics.fatigue_half_life,
            social=sc.social is not None,
        )

    # ---- derived ---------------------------------------------------------------------------------------
    @property
    def obs_dim(self) -> int:
        return len(self.obs)

    @property
    def obs_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.obs)

    @property
    def action_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.action)

    @property
    def obs_low(self) -> np.ndarray:
        return np.array([f.low for f in self.obs], dtype=np.float32)

    @property
    def obs_high(self) -> np.ndarray:
        return np.array([f.high for f in self.obs], dtype=np.float32)

    def index(self, name: str) -> int:
        return self.obs_names.index(name)

    @cached_property
    def creative_count_col(self) -> int:
        """Column of the first ``creative_count_*`` feature (the creatives' counts are contiguous, in catalog order)."""
        return self.index(f"creative_count_{self.creatives[0]}")

    def to_dict(self) -> dict[str, object]:
        social = {"social": True} if self.social else {}  # absent for markets without a graph: same hash as before
        return {
            "obs": [[f.name, f.kind, f.low, f.high] for f in self.obs],
            "action": [[f.name, f.kind, f.low, f.high] for f in self.action],
            "horizon": self.horizon,
            "categories": list(self.categories),
            "segments": list(self.segments),
            "slots": list(self.slots),
            "creatives": list(self.creatives),
            "delays": list(self.delays),
            "start_hour": self.start_hour,
            "exposure_half_life": self.exposure_half_life,
            **social,
        }

    @cached_property
    def hash(self) -> str:
        """Stable hash of names, kinds, bounds and catalog: artifacts built for another layout are refused."""
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    # ---- encoding ----------------------------------------------------------------------------------------
    @cached_property
    def _encode_tables(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Per-epoch lookup tables for ``encode``: time features (hour, sin, cos, progress), window bit masks and
        exposure decay; then the bounds."""
        # every epoch a day can reach, and enough for all later epochs to encode alike (windows past bit 63 are empty)
        n_epochs = max(self.horizon + max(self.delays) + 2, 64 + max(WINDOWS) + 1)
        epoch = np.arange(n_epochs)
        hour = (self.start_hour + np.minimum(epoch, self.horizon - 1)) % HOURS_PER_DAY
        angle = 2.0 * np.pi * hour / HOURS_PER_DAY
        time = np.empty((n_epochs, 4), dtype=np.float32)
        time[:, 0] = hour
        time[:, 1] = np.sin(angle)
        time[:, 2] = np.cos(angle)
        time[:, 3] = np.minimum(epoch, self.horizon) / self.horizon
        windows = np.stack([_window_mask(epoch, w) for w in WINDOWS], axis=1)  # (n_epochs, len(WINDOWS)) uint64
        decay = 0.5 ** (epoch / self.exposure_half_life)  # turns UserBatch's exposure accumulators into exposures
        return time, windows, decay, self.obs_low, self.obs_high

    def encode(self, batch: UserBatch) -> np.ndarray:
        """Observation of every user in ``batch``: float32 (n, obs_dim), inside [obs_low, obs_high]."""
        time, windows, decay, low, high = self._encode_tables
        n = len(batch)
        k = len(self.categories)
        out = np.empty((n, self.obs_dim), dtype=np.float32)
        out[:, 0] = batch.segment
        out[:, 1 : 1 + k] = batch.signal
        j = 1 + k
        # mode="clip": epochs past the tables encode like the last one (they all encode alike)
        out[:, j : j + 4] = time.take(batch.epoch, axis=0, mode="clip")  # hour, hour_sin, hour_cos, day_progress
        j += 4
        masks = windows.take(batch.epoch, axis=0, mode="clip")
        out[:, j : j + len(WINDOWS)] = np.bitwise_count(batch.impression_mask[:, None] & masks)
        j += len(WINDOWS)
        out[:, j] = batch.epoch - batch.last_impression  # NEVER makes it huge: capped at a day below
        out[:, j + 1] = batch.clicks
        out[:, j + 2] = batch.conversions
        j += 3
        out[:, j : j + len(self.slots)] = batch.slot_counts
        j += len(self.slots)
        out[:, j : j + len(self.creatives)] = batch.creative_counts
        j += len(self.creatives)
        end = j + 2 * len(self.slots)
        np.multiply(batch.exposure_acc, decay.take(batch.epoch, mode="clip")[:, None], out=out[:, j:end])
        if self.social:
            out[:, end:] = 0.0  # no friends outside the population env, which fills these columns
        np.maximum(out, low, out=out)  # caps every feature, e.g. hours_since_last_ad at a day
        np.minimum(out, high, out=out)
        return out

    def encode_actions(self, obs: np.ndarray, action: np.ndarray, category_of: np.ndarray) -> np.ndarray:
        """Action features for observations ``obs`` (n, obs_dim) and actions (n, 3): float32 (n, n_action).

        ``category_of`` maps creative index to category index. Uses only observable values, so a logged row
        can be re-encoded exactly.
        """
        n = obs.shape[0]
        d, s, c = action[:, 0], action[:, 1], action[:, 2]
        delay_hours = np.asarray(self.delays, dtype=np.float32)[d]
        k = len(self.categories)
        hour_col = 1 + k
        since_col = self.index("hours_since_last_ad")
        creative0 = self.creative_count_col
        rows = np.arange(n)
        out = np.empty((n, len(self.action)), dtype=np.float32)
        out[:, 0] = d
        out[:, 1] = s
        out[:, 2] = c
        cat = category_of[c]
        out[:, 3] = cat
        out[:, 4] = (obs[:, hour_col] + delay_hours) % HOURS_PER_DAY
        out[:, 5] = obs[rows, creative0 + c]
        out[:, 6] = np.minimum(obs[:, since_col] + delay_hours, HOURS_PER_DAY)
        out[:, 7] = obs[rows, 1 + cat]
        k = len(self.slots)
        out[:, 8 : 8 + 2 * k] = obs[:, self.exposure_cols] * self.exposure_decay_of_delay[d][:, None]
        return out

    @cached_property
    def social_cols(self) -> np.ndarray:
        """Observation columns of SOCIAL_FEATURES (empty without a graph)."""
        return np.array([self.index(n) for n in SOCIAL_FEATURES] if self.social else [], dtype=np.intp)

    @cached_property
    def exposure_cols(self) -> np.ndarray:
        """Observation columns of ``exposure_*`` then ``repeat_exposure_*`` (slot order)."""
        names = [f"exposure_{s}" for s in self.slots] + [f"repeat_exposure_{s}" for s in self.slots]
        return np.array([self.index(n) for n in names], dtype=np.intp)

    @cached_property
    def exposure_decay_of_delay(self) -> np.ndarray:
        """float32 factor that carries an exposure from the decision to the impression, by delay index."""
        return (0.5 ** (np.asarray(self.delays, dtype=np.float64) / self.exposure_half_life)).astype(np.float32)


def _window_mask(epoch: np.ndarray, hours: int) -> np.ndarray:
    """Bit masks (uint64) selecting bits ``max(epoch - hours, 0) .. min(epoch, 64) - 1``."""
    e = np.minimum(epoch, 64).astype(np.uint64)
    lo = np.maximum(epoch - hours, 0).astype(np.uint64)
    full = np.uint64(0xFFFFFFFFFFFFFFFF)
    # bits [lo, e): (all ones below e) & ~(all ones below lo); shifting by 64 is undefined, so special-case it
    below_e = np.where(e >= 64, full, (np.uint64(1) << np.minimum(e, np.uint64(63))) - np.uint64(1))
    below_lo = (np.uint64(1) << np.minimum(lo, np.uint64(63))) - np.uint64(1)
    below_lo = np.where(lo >= 64, full, below_lo)
    return below_e & ~below_lo


# ---- binned states: the tabular agents' state and the learned simulator's logged-support cells ----------------
DEFAULT_BINS: dict[str, Sequence[float] | None] = {
    "segment": None,  # categorical: one bin per value
    "hour": None,
    "hours_since_last_ad": (2, 3, 5, 9, 24),  # 1 | 2 | 3-4 | 5-8 | 9-23 | none today
    "impressions_6h": (1, 2, 4),  # 0 | 1 | 2-3 | 4+
}
PREFERRED_CATEGORY = "preferred_category"  # derived: the category with the strongest interest signal


class StateDiscretizer:
    """Maps observations to integer states: a mixed-radix index over binned features.

    Each feature in ``bins`` is binned by ``np.digitize(value, edges)`` (``len(edges) + 1`` bins), or, with edges
    None, is a categorical feature with one bin per value. The derived feature ``preferred_category`` (edges None)
    is the category whose ``signal_<category>`` is highest, one bin per category. The default (segment × hour ×
    time since the last ad × impressions in the last 6 h) has 4 · 24 · 6 · 4 = 2304 states in the default scenario.

    Args:
        layout: the feature layout of the observations.
        bins: feature name -> increasing bin edges, or None for a categorical feature.

    Example:
        >>> from adrl.scenario import Scenario
        >>> d = StateDiscretizer(FeatureLayout.from_scenario(Scenario()))
        >>> d.n_states
        2304
    """

    def __init__(self, layout: FeatureLayout, bins: Mapping[str, Sequence[float] | None] | None = None) -> None:
        bins = dict(DEFAULT_BINS if bins is None else bins)
        if not bins:
            raise ConfigError("bins must name at least one observation feature")
        self.layout = layout
        self.features = tuple(bins)
        self._columns: list[int] = []
        self._edges: list[np.ndarray | None] = []
        sizes = []
        self._signals = np.array([layout.index(f"signal_{c}") for c in layout.categories], dtype=np.int64)
        for name, edges in bins.items():
            if name == PREFERRED_CATEGORY:
                if edges is not None:
                    raise ConfigError(f"bins: {PREFERRED_CATEGORY!r} is derived and categorical; give None as edges")
                self._edges.append(None)
                sizes.append(len(layout.categories))
                self._columns.append(-1)
                continue
            if name not in layout.obs_names:
                raise ConfigError(f"bins: unknown observation feature {name!r}; expected one of {layout.obs_names}")
            feature = layout.obs[layout.index(name)]
            if edges is None:
                if feature.kind != "categorical":
                    raise ConfigError(f"bins: {name!r} is {feature.kind}; give its bin edges")
                self._edges.append(None)
                sizes.append(feature.cardinality)
            else:
                e = np.asarray(edges, dtype=np.float64)
                if e.ndim != 1 or e.size == 0 or np.any(np.diff(e) <= 0):
                    raise ConfigError(f"bins: edges of {name!r} must strictly increase, got {list(edges)}")
                self._edges.append(e)
                sizes.append(e.size + 1)
            self._columns.append(layout.index(name))
        self.sizes = tuple(sizes)
        self.n_states = int(np.prod(sizes))
        self._radix = np.cumprod((1, *sizes[::-1]))[-2::-1].astype(np.int64)  # place value of each feature

    def discretize(self, obs: np.ndarray) -> Any:
        """State of one observation (an ``int``) or of a batch ``(n, obs_dim)`` (int64 array ``(n,)``)."""
        x = np.asarray(obs)
        single = x.ndim == 1
        x2 = x[None, :] if single else x
        if x2.ndim != 2 or x2.shape[1] != self.layout.obs_dim:
            raise ValueError(f"observations must have shape (n, {self.layout.obs_dim}), got {x.shape}")
        state = np.zeros(x2.shape[0], dtype=np.int64)
        for col, edges, size, radix in zip(self._columns, self._edges, self.sizes, self._radix, strict=True):
            if col < 0:  # preferred_category
                b = x2[:, self._signals].argmax(axis=1)
                state += b * radix
                continue
            v = x2[:, col]
            b = np.clip(v, 0, size - 1).astype(np.int64) if edges is None else np.digitize(v, edges)
            state += b * radix
        return int(state[0]) if single else state
