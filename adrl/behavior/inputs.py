"""What the behavior model reads: categorical ids and dense features, built from adrl observations or OBD rows.

An :class:`InputSpec` names the columns of the two arrays every model consumes, ``cat`` (int64, (n, n_categorical))
and ``dense`` (float32, (n, n_dense)), and which of them form the user and item vectors of the factorization term.
:class:`AdrlEncoder` builds those arrays from observations (n, obs_dim) and actions (n, 3) through the one feature
layout of ``adrl.features``, so a logged row and a simulator state are encoded identically.

Count inputs (clicks and conversions today, impression windows, per-slot and per-creative counts, times the chosen
creative was seen) are capped at the range the training logs cover (:func:`count_caps`, stored in ``model.json``):
a state past the logged range is encoded like the edge of that range, so the network never extrapolates a count it
was not trained on (a policy that steers users into such states cannot make the learned simulator run away).

An impression-time model (``FitConfig(impression_inputs=True)``, ``adrl fit --inputs impression``) reads the
user's state at the impression, not at the decision: the inputs that the impression-time ones supersede
(:func:`decision_time_inputs`: the delay's id, the decision hour's clock features, hours since the last ad and the
undecayed exposure) are held at 0 (``InputSpec.unused``). Waiting then acts only through the state it leads to
(impression hour, decayed exposure, hours since the last ad at the impression): with the delay's id the network
can fit each delay its own correction on the few logged delayed impressions and carry it to states where the
logger never waited. On a fixed PPO's ground-truth trajectories the main model's expected reward over the truth
fell from 2.12, 1.29, 1.26 to 1.76, 1.11, 1.07 (quickstart seeds 0, 1, 2; issue 16's report).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from adrl.errors import ArtifactError, InvalidAction
from adrl.features import FeatureLayout
from adrl.scenario import HOURS_PER_DAY

HEADS = ("click", "conversion", "leave")  # conversion is over all impressions: pCTCVR = pCTR * pCVR

# observation columns that enter as embeddings (not dense); the decision hour is replaced by the impression hour
_OBS_CATEGORICAL = ("segment", "hour")


def decision_time_inputs(layout: FeatureLayout) -> tuple[str, ...]:
    """Inputs an impression-time model does not read: the delay's id (categorical) and the observation's
    decision-time clock, recency and exposure features, which the action's impression-time features supersede."""
    exposure = tuple(layout.obs_names[i] for i in layout.exposure_cols)
    return ("delay", "hour_sin", "hour_cos", "day_progress", "hours_since_last_ad", *exposure)


def action_dense(layout: FeatureLayout) -> tuple[str, ...]:
    """Action features (see ``FeatureLayout.encode_actions``) that enter as dense values: the non-categorical ones."""
    return tuple(f.name for f in layout.action if f.kind != "categorical")


@dataclass(frozen=True)
class InputSpec:
    """Column names of the model's inputs and the fields that make up the factorization term.

    Attributes:
        categorical: ``(name, cardinality)`` of each column of ``cat``, in order.
        dense: names of the columns of ``dense``, in order.
        fm_user: categorical fields summed into the user vector.
        fm_user_dense: dense fields projected (linearly) into the user vector.
        fm_item: categorical fields summed into the item vector.
        unused: inputs held at 0 (categorical or dense names): what an impression-time model does not read.
    """

    categorical: tuple[tuple[str, int], ...]
    dense: tuple[str, ...]
    fm_user: tuple[str, ...]
    fm_user_dense: tuple[str, ...]
    fm_item: tuple[str, ...]
    unused: tuple[str, ...] = ()

    @property
    def cat_names(self) -> tuple[str, ...]:
        return tuple(n for n, _ in self.categorical)

    @property
    def cardinalities(self) -> tuple[int, ...]:
        return tuple(c for _, c in self.categorical)

    def cat_index(self, name: str) -> int:
        return self.cat_names.index(name)

    def dense_index(self, name: str) -> int:
        return self.dense.index(name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "categorical": [[n, c] for n, c in self.categorical],
            "dense": list(self.dense),
            "fm_user": list(self.fm_user),
            "fm_user_dense": list(self.fm_user_dense),
            "fm_item": list(self.fm_item),
            "unused": list(self.unused),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, source: str = "model.json") -> InputSpec:
        try:
            spec = cls(
                categorical=tuple((str(n), int(c)) for n, c in d["categorical"]),
                dense=tuple(str(n) for n in d["dense"]),
                fm_user=tuple(str(n) for n in d["fm_user"]),
                fm_user_dense=tuple(str(n) for n in d["fm_user_dense"]),
                fm_item=tuple(str(n) for n in d["fm_item"]),
                unused=tuple(str(n) for n in d.get("unused", [])),  # models saved before it read every input
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ArtifactError(f"{source}: 'inputs' is malformed ({e!r}); was the file edited by hand?") from e
        unknown = set(spec.fm_user + spec.fm_item) - set(spec.cat_names)
        unknown |= set(spec.fm_user_dense) - set(spec.dense)
        if unknown:
            raise ArtifactError(f"{source}: factorization fields {sorted(unknown)} are not model inputs")
        stray = set(spec.unused) - set(spec.cat_names) - set(spec.dense)
        if stray:
            raise ArtifactError(f"{source}: 'unused' names {sorted(stray)}, which are not model inputs")
        return spec


def count_caps(
    layout: FeatureLayout, category_of: np.ndarray, rows: Iterable[tuple[np.ndarray, np.ndarray]], quantile: float
) -> dict[str, float]:
    """Cap of every count input: its ``quantile`` over ``rows`` (chunks of observations (n, obs_dim), actions (n, 3)).

    The inputs are the observation's count features and the action's ``times_seen`` (how often the chosen creative
    was shown: pooled over creatives, it covers a wider range than each creative's own count). Counts are integers
    in ``[0, high]``, so exact histograms are kept while streaming. ``quantile`` 1 caps at the largest value seen;
    0.999 leaves out the last 0.1 % of rows, where the network has too little data to trust. A count never seen
    above 0 gets cap 0 (it cannot inform the model).
    """
    if not 0.0 < quantile <= 1.0:
        raise ValueError(f"quantile must be in (0, 1], got {quantile}")
    obs_cols = [i for i, f in enumerate(layout.obs) if f.kind == "count"]
    act_cols = [i for i, f in enumerate(layout.action) if f.kind == "count"]
    features = [layout.obs[i] for i in obs_cols] + [layout.action[i] for i in act_cols]
    highs = np.array([int(f.high) for f in features], dtype=np.int64)
    hist = np.zeros((len(features), int(highs.max(initial=0)) + 1), dtype=np.int64)
    for obs, action in rows:
        obs = np.asarray(obs, dtype=np.float32)
        act = layout.encode_actions(obs, np.asarray(action, dtype=np.int64), category_of)
        values = np.concatenate([obs[:, obs_cols], act[:, act_cols]], axis=1)
        values = np.clip(np.rint(values), 0, highs).astype(np.int64)
        for j in range(len(features)):
            hist[j] += np.bincount(values[:, j], minlength=hist.shape[1])
    n = int(hist[0].sum()) if features else 0
    if n == 0:
        raise ValueError("count_caps needs at least one row")
    cdf = np.cumsum(hist, axis=1)
    # smallest v with P(x <= v) >= quantile; the tolerance keeps quantile 1 at the largest value seen
    caps = np.argmax(cdf >= quantile * n - 1e-9 * n, axis=1)
    return {f.name: float(c) for f, c in zip(features, caps, strict=True)}


class AdrlEncoder:
    """Encode adrl observations and actions into the model's ``cat`` and ``dense`` arrays.

    Categorical: segment, creative, category, slot, impression hour, delay. Dense: every non-categorical
    observation column (interest signals, time of day, impression counts, clicks, ...) and the action's
    times-seen, hours-since-last-ad at the impression, and the signal of the creative's category.

    ``caps`` (feature name -> upper bound; count features of the observation and ``times_seen``) clips those
    inputs, in training and at inference alike. ``unused`` (e.g. :func:`decision_time_inputs`) are held at 0.
    """

    def __init__(
        self,
        layout: FeatureLayout,
        category_of: np.ndarray,
        caps: Mapping[str, float] | None = None,
        *,
        unused: Iterable[str] = (),
    ) -> None:
        self.layout = layout
        self.category_of = np.asarray(category_of, dtype=np.int64)
        if self.category_of.shape != (len(layout.creatives),):
            raise ArtifactError(
                f"category_of has shape {self.category_of.shape}, expected one category per creative "
                f"({len(layout.creatives)})"
            )
        names = layout.obs_names
        self.action_dense = action_dense(layout)
        self.action_dense_cols = [layout.action_names.index(n) for n in self.action_dense]
        self.obs_dense_cols = np.array([i for i, n in enumerate(names) if n not in _OBS_CATEGORICAL], dtype=np.int64)
        self.signal_names = tuple(f"signal_{c}" for c in layout.categories)
        self.spec = InputSpec(
            categorical=(
                ("segment", len(layout.segments)),
                ("creative", len(layout.creatives)),
                ("category", len(layout.categories)),
                ("slot", len(layout.slots)),
                ("hour", HOURS_PER_DAY),
                ("delay", len(layout.delays)),
            ),
            dense=tuple(names[i] for i in self.obs_dense_cols) + self.action_dense,
            fm_user=("segment",),
            fm_user_dense=self.signal_names,
            fm_item=("creative", "category"),
        )
        self.unused = tuple(unused)
        allowed = ("delay", *self.spec.dense)
        bad = [n for n in self.unused if n not in allowed]
        if bad:
            raise ArtifactError(f"unused inputs {bad}: only 'delay' and dense inputs {list(self.spec.dense)} can be")
        self.spec = replace(self.spec, unused=self.unused)
        self.delay_unused = "delay" in self.unused
        self.unused_dense = np.array([self.spec.dense_index(n) for n in self.unused if n != "delay"], dtype=np.intp)
        # raw input columns ([observation, action_dense]) behind them, for the folded predictor
        self.unused_raw = self._raw_dense_cols()[self.unused_dense]
        self.nvec = np.array([len(layout.delays), len(layout.slots), len(layout.creatives)], dtype=np.int64)
        self.caps = self._check_caps(caps or {})
        # upper bounds of the raw inputs [observation columns, then action_dense], None when nothing is capped
        self.raw_caps: np.ndarray | None = None
        if self.caps:
            features = [*layout.obs, *(layout.action[i] for i in self.action_dense_cols)]
            raw_names = [f.name for f in features]
            self.raw_caps = np.array([f.high for f in features], dtype=np.float32)
            for name, cap in self.caps.items():
                i = raw_names.index(name)
                self.raw_caps[i] = min(cap, self.raw_caps[i])
        self.dense_caps = None if self.raw_caps is None else self.raw_caps[self._raw_dense_cols()]

    def _raw_dense_cols(self) -> np.ndarray:
        """Columns of the raw inputs [observation, action_dense] that make up ``dense``, in order."""
        return np.concatenate([self.obs_dense_cols, self.layout.obs_dim + np.arange(len(self.action_dense))])

    def _check_caps(self, caps: Mapping[str, float]) -> dict[str, float]:
        kinds = {f.name: f.kind for f in self.layout.obs}
        kinds |= {f.name: f.kind for f in self.layout.action if f.name in self.action_dense}
        out = {}
        for name, cap in caps.items():
            if kinds.get(name) != "count":
                raise ArtifactError(f"input cap on {name!r}: only count features of the model's inputs can be capped")
            if not (isinstance(cap, int | float) and np.isfinite(cap) and cap >= 0):
                raise ArtifactError(f"input cap on {name!r} must be a finite number >= 0, got {cap!r}")
            out[str(name)] = float(cap)
        return out

    def check(self, obs: np.ndarray, action: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return ``obs`` as float32 (n, obs_dim) and ``action`` as int64 (n, 3), or raise naming the problem."""
        obs = np.asarray(obs, dtype=np.float32)
        action = np.asarray(action)
        if obs.ndim != 2 or obs.shape[1] != self.layout.obs_dim:
            raise ValueError(f"obs must have shape (n, {self.layout.obs_dim}), got {obs.shape}")
        if action.shape != (obs.shape[0], 3):
            raise InvalidAction(
                f"actions must have shape ({obs.shape[0]}, 3) = (delay, slot, creative), got {action.shape}"
            )
        action = action.astype(np.int64, copy=False)
        bad = (action < 0) | (action >= self.nvec)
        if bad.any():
            row, col = (int(x) for x in np.argwhere(bad)[0])
            part = ("delay", "slot", "creative")[col]
            raise InvalidAction(
                f"action {action[row].tolist()} has {part} index {int(action[row, col])}, "
                f"expected 0..{int(self.nvec[col]) - 1}"
            )
        return obs, action

    def encode(self, obs: np.ndarray, action: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``cat`` int64 (n, 6) and ``dense`` float32 (n, n_dense) for observations (n, obs_dim) and actions (n, 3)."""
        obs, action = self.check(obs, action)
        act = self.layout.encode_actions(obs, action, self.category_of)
        names = self.layout.action_names
        cat = np.empty((obs.shape[0], 6), dtype=np.int64)
        cat[:, 0] = obs[:, 0]
        cat[:, 1] = action[:, 2]
        cat[:, 2] = self.category_of[action[:, 2]]
        cat[:, 3] = action[:, 1]
        cat[:, 4] = act[:, names.index("impression_hour")]
        cat[:, 5] = 0 if self.delay_unused else action[:, 0]
        dense = np.concatenate([obs[:, self.obs_dense_cols], act[:, self.action_dense_cols]], axis=1)
        if self.dense_caps is not None:
            np.minimum(dense, self.dense_caps, out=dense)
        dense[:, self.unused_dense] = 0.0
        return cat, dense.astype(np.float32, copy=False)
