"""Fit the behavior model: stream logs, split by user, train with early stopping, compare with baselines.

``fit_adrl`` reads adrl parquet logs chunk by chunk (memory is bounded by the shuffle buffer, the validation sample
and the baseline sample, whatever the file size); ``fit_obd`` reads the Open Bandit Dataset and fits the click head
on a time-ordered split. Both return a :class:`FitReport` whose model carries the metrics into ``model.json``.

Rows with ``shown == False`` had no impression and never train or score a head.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from scipy import sparse
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from adrl.behavior.inputs import HEADS, AdrlEncoder, InputSpec, count_caps, decision_time_inputs
from adrl.behavior.metrics import HeadMetrics, head_metrics
from adrl.behavior.model import BehaviorModel
from adrl.behavior.net import BehaviorNet, multitask_loss
from adrl.behavior.profiling import UserProfiler
from adrl.errors import ConfigError, DataError, FeatureMismatch
from adrl.features import FeatureLayout
from adrl.logs import (
    TRUTH_COLUMNS,
    check_ranges,
    check_values,
    feature_columns,
    iter_batches,
    log_files,
    validate_schema,
)
from adrl.obd import ObdData, read_obd
from adrl.scenario import HOURS_PER_DAY, Scenario

SOURCES = ("model", "logistic_regression", "random_forest", "truth")


@dataclass(frozen=True)
class FitConfig:
    """Settings of one fit; every field is validated (``ConfigError`` names the field and value)."""

    epochs: int = 30
    patience: int = 3
    batch_size: int = 2048
    learning_rate: float = 3e-3
    weight_decay: float = 1e-6
    embedding_dim: int = 8
    fm_dim: int = 8
    hidden: tuple[int, ...] = (64, 64)
    # a wide part beside the network: per-segment linear terms on the dense inputs and a segment x hour table
    wide: bool = True
    validation_fraction: float = 0.2
    seed: int | None = 0
    read_rows: int = 65_536
    shuffle_rows: int = 1_048_576
    max_validation_rows: int = 1_000_000
    baselines: bool = True
    baseline_rows: int = 200_000
    forest_rows: int = 100_000
    forest_trees: int = 40
    clusters: int = 8
    # torch threads while fitting: small nets gain little from more, and lose a lot when the cores are oversubscribed
    threads: int = 1
    # count features are capped at this quantile of the training rows (adrl logs; None: no caps), so the model
    # never extrapolates a count past what the logs cover (see adrl.behavior.inputs.count_caps)
    input_cap_quantile: float | None = 0.999
    # True: read the user's state at the impression only; the decision-time inputs the impression-time ones
    # supersede (delay id, decision clock, recency, undecayed exposure) are held at 0, so waiting acts through the
    # state it leads to (adrl.behavior.inputs). Off by default: on quickstart seeds 0-2 it cut the main model's
    # optimism on a fixed PPO's ground-truth trajectories (expected reward 2.12, 1.29, 1.26 x the truth -> 1.76,
    # 1.11, 1.07), but PPO trained on it earned 0.568, 0.462, 0.490 against 0.565, 0.463, 0.473 (issue 16's report)
    impression_inputs: bool = False
    # validation, early stopping and the saved model use an exponential moving average of the weights over about
    # this many epochs (None: the raw weights): it averages out the noise of the last minibatch steps
    ema_epochs: float | None = 2.5

    def __post_init__(self) -> None:
        positive: tuple[str, ...] = (
            "epochs",
            "patience",
            "batch_size",
            "embedding_dim",
            "fm_dim",
            "read_rows",
            "shuffle_rows",
        )
        positive += ("max_validation_rows", "baseline_rows", "forest_rows", "forest_trees", "clusters", "threads")
        for name in positive:
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {v!r}")
        if not self.learning_rate > 0:
            raise ConfigError(f"learning_rate must be > 0, got {self.learning_rate!r}")
        if not self.weight_decay >= 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if not 0.0 < self.validation_fraction < 1.0:
            raise ConfigError(f"validation_fraction must be in (0, 1), got {self.validation_fraction!r}")
        q = self.input_cap_quantile
        if q is not None and not (isinstance(q, int | float) and 0.0 < q <= 1.0):
            raise ConfigError(f"input_cap_quantile must be in (0, 1] or None, got {q!r}")
        if not self.hidden or any(h < 1 for h in self.hidden):
            raise ConfigError(f"hidden must list one or more layer widths >= 1, got {list(self.hidden)}")
        if not isinstance(self.wide, bool):
            raise ConfigError(f"wide must be true or false, got {self.wide!r}")
        if not isinstance(self.impression_inputs, bool):
            raise ConfigError(f"impression_inputs must be true or false, got {self.impression_inputs!r}")
        e = self.ema_epochs
        if e is not None and not (isinstance(e, int | float) and not isinstance(e, bool) and 0.0 < e < 1000.0):
            raise ConfigError(f"ema_epochs must be a number of epochs in (0, 1000) or None, got {e!r}")


@dataclass
class Encoded:
    """Encoded impressions: model inputs, labels (click, conversion, leave), slot/hour for calibration, truth."""

    cat: np.ndarray
    dense: np.ndarray
    labels: np.ndarray
    slot: np.ndarray
    hour: np.ndarray
    truth: np.ndarray | None = None  # true (p_click, p_ctcvr, p_leave) when the log carries them

    def __len__(self) -> int:
        return int(self.cat.shape[0])

    def take(self, idx: np.ndarray | slice) -> Encoded:
        return Encoded(
            self.cat[idx],
            self.dense[idx],
            self.labels[idx],
            self.slot[idx],
            self.hour[idx],
            None if self.truth is None else self.truth[idx],
        )

    @staticmethod
    def concat(parts: list[Encoded]) -> Encoded:
        if len(parts) == 1:
            return parts[0]
        truth = None if any(p.truth is None for p in parts) else np.concatenate([p.truth for p in parts])
        return Encoded(
            np.concatenate([p.cat for p in parts]),
            np.concatenate([p.dense for p in parts]),
            np.concatenate([p.labels for p in parts]),
            np.concatenate([p.slot for p in parts]),
            np.concatenate([p.hour for p in parts]),
            truth,
        )


@dataclass
class FitReport:
    """What a fit produced: the model, held-out metrics per head and source, the training curve, the data sizes."""

    model: BehaviorModel
    metrics: dict[str, dict[str, HeadMetrics]]
    history: list[dict[str, float]]
    n_train: int
    n_validation: int
    n_baseline: int
    n_forest: int
    split: str
    seconds: float
    notes: list[str] = field(default_factory=list)

    def metrics_json(self) -> dict[str, Any]:
        return {
            "validation": {h: {s: m.as_dict() for s, m in by.items()} for h, by in self.metrics.items()},
            "n_train": self.n_train,
            "n_validation": self.n_validation,
            "n_baseline": self.n_baseline,
            "n_forest": self.n_forest,
            "split": self.split,
            "notes": self.notes,
        }


# ---- hashing and sampling ------------------------------------------------------------------------------------
def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: a fixed, well-mixed uint64 hash."""
    z = x.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def unit_hash(key: np.ndarray) -> np.ndarray:
    """Deterministic uniform [0, 1) value of each integer key (the same user always lands in the same split)."""
    return (_mix64(np.asarray(key).astype(np.int64).view(np.uint64)) >> np.uint64(11)).astype(np.float64) / 2.0**53


class _CappedSample:
    """The (at most) ``cap`` rows with the smallest hash keys seen so far: a deterministic, bounded uniform sample."""

    def __init__(self, cap: int) -> None:
        self.cap, self.threshold = cap, np.inf
        self.parts: list[tuple[Encoded, np.ndarray]] = []
        self.n = 0

    def add(self, enc: Encoded, key: np.ndarray) -> None:
        keep = key < self.threshold
        if keep.any():
            self.parts.append((enc.take(keep), key[keep]))
            self.n += int(keep.sum())
        if self.n > 2 * self.cap:  # compact now and then, so memory stays within twice the cap
            self._compact()

    def _compact(self) -> None:
        if self.n <= self.cap:
            return
        self.threshold = float(np.partition(np.concatenate([k for _, k in self.parts]), self.cap)[self.cap])
        self.parts = [(e.take(k < self.threshold), k[k < self.threshold]) for e, k in self.parts]
        self.n = sum(len(e) for e, _ in self.parts)

    def result(self) -> Encoded | None:
        self._compact()
        parts = [e for e, _ in self.parts if len(e)]
        return Encoded.concat(parts) if parts else None


# ---- adrl logs -------------------------------------------------------------------------------------------------
class AdrlLogSource:
    """Streams an adrl log (a parquet file or a directory of them) as encoded impressions, split by user."""

    def __init__(self, path: Path | str, scenario: Scenario, cfg: FitConfig) -> None:
        self.path, self.scenario, self.cfg = Path(path), scenario, cfg
        self.layout = FeatureLayout.from_scenario(scenario)
        self.category_of = np.array([scenario.categories.index(c.category) for c in scenario.creatives])
        self.unused = decision_time_inputs(self.layout) if cfg.impression_inputs else ()
        self.encoder = AdrlEncoder(self.layout, self.category_of, unused=self.unused)
        truth = True
        for f in log_files(self.path):
            try:
                schema = pq.read_schema(f)
            except (pa.ArrowInvalid, OSError) as e:
                raise DataError(f"{f}: not a readable parquet file ({e}); is it truncated or empty?") from e
            meta = schema.metadata or {}
            logged = meta.get(b"adrl.layout_hash", b"").decode()
            if logged and logged != self.layout.hash:
                raise FeatureMismatch(
                    f"{f} was logged with feature layout {logged}, the scenario gives {self.layout.hash}; "
                    "pass the scenario the log was simulated with (--scenario)"
                )
            validate_schema(schema, str(f), layout=self.layout)
            truth &= all(n in schema.names for n, _, _ in TRUTH_COLUMNS)
        self.has_truth = truth
        self.feature_cols = feature_columns(self.layout)
        self.columns = ["user_id", "step", "delay", "slot", "creative", "shown", "click", "conversion", "leave"]
        self.columns += self.feature_cols + ([n for n, _, _ in TRUTH_COLUMNS] if truth else [])

    def training_rows(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Observations (n, obs_dim) and actions (n, 3) of the shown rows of training users, chunk by chunk."""
        for df in self.frames():
            df = df[df["shown"].to_numpy(dtype=bool)]
            df = df[unit_hash(df["user_id"].to_numpy(dtype=np.int64)) >= self.cfg.validation_fraction]
            yield df[self.feature_cols].to_numpy(dtype=np.float32), df[["delay", "slot", "creative"]].to_numpy()

    def cap_inputs(self, quantile: float) -> dict[str, float]:
        """Set the encoder's count caps to ``quantile`` of the training rows (one extra pass) and return them."""
        caps = count_caps(self.layout, self.category_of, self.training_rows(), quantile)
        self.encoder = AdrlEncoder(self.layout, self.category_of, caps, unused=self.unused)
        return caps

    def frames(self) -> Iterator[pd.DataFrame]:
        for df in iter_batches(self.path, columns=self.columns, batch_size=self.cfg.read_rows):
            check_values(df, str(self.path))
            check_ranges(df, self.layout, str(self.path))
            yield df

    def encode(self, df: pd.DataFrame) -> tuple[Encoded, np.ndarray, np.ndarray]:
        """Encoded shown rows of ``df``, with each row's user hash and row hash."""
        df = df[df["shown"].to_numpy(dtype=bool)]
        obs = df[self.feature_cols].to_numpy(dtype=np.float32)
        action = df[["delay", "slot", "creative"]].to_numpy(dtype=np.int64)
        cat, dense = self.encoder.encode(obs, action)
        click = df["click"].to_numpy(dtype=bool)
        labels = np.stack(
            [click, df["conversion"].to_numpy(dtype=bool) & click, df["leave"].to_numpy(dtype=bool)], axis=1
        ).astype(np.float32)
        truth = None
        if self.has_truth:
            pc = df["p_click"].to_numpy(dtype=np.float64)
            truth = np.stack([pc, pc * df["p_conversion"].to_numpy(), df["p_leave"].to_numpy()], axis=1)
        enc = Encoded(cat, dense, labels, cat[:, 3].copy(), cat[:, 4].copy(), truth)
        user = df["user_id"].to_numpy(dtype=np.int64)
        row_key = user * 1024 + df["step"].to_numpy(dtype=np.int64)
        return enc, unit_hash(user), unit_hash(row_key + 0x5EED)

    def train_batches(self, rng: np.random.Generator) -> Iterator[Encoded]:
        """Minibatches of training rows, shuffled within windows of ``shuffle_rows`` rows."""
        cfg = self.cfg
        buffer: list[Encoded] = []
        n = 0
        for df in self.frames():
            enc, u, _ = self.encode(df)
            enc = enc.take(u >= cfg.validation_fraction)
            if len(enc):
                buffer.append(enc)
                n += len(enc)
            if n >= cfg.shuffle_rows:
                window = Encoded.concat(buffer).take(rng.permutation(n))
                full = n - n % cfg.batch_size
                for i in range(0, full, cfg.batch_size):
                    yield window.take(slice(i, i + cfg.batch_size))
                buffer, n = ([window.take(slice(full, None))], n - full) if full < n else ([], 0)
        if n:
            window = Encoded.concat(buffer).take(rng.permutation(n))
            for i in range(0, n, cfg.batch_size):
                yield window.take(slice(i, i + cfg.batch_size))


@dataclass
class _Scan:
    n_rows: int = 0
    n_shown: int = 0
    n_train: int = 0
    dense_sum: np.ndarray | None = None
    dense_sq: np.ndarray | None = None
    label_sum: np.ndarray | None = None


def _scan(source: AdrlLogSource, cfg: FitConfig) -> tuple[_Scan, Encoded, Encoded | None, int]:
    """One pass: counts, dense moments and base rates of training rows, the validation and baseline samples."""
    scan = _Scan()
    val = _CappedSample(cfg.max_validation_rows)
    base = _CappedSample(cfg.baseline_rows)
    n_val_all = 0
    for df in source.frames():
        scan.n_rows += len(df)
        enc, u, r = source.encode(df)
        scan.n_shown += len(enc)
        is_val = u < cfg.validation_fraction
        n_val_all += int(is_val.sum())
        val.add(enc.take(is_val), u[is_val] / cfg.validation_fraction)
        tr = enc.take(~is_val)
        base.add(tr, r[~is_val])
        if len(tr):
            d = tr.dense.astype(np.float64)
            scan.n_train += len(tr)
            scan.dense_sum = d.sum(axis=0) + (0 if scan.dense_sum is None else scan.dense_sum)
            scan.dense_sq = (d**2).sum(axis=0) + (0 if scan.dense_sq is None else scan.dense_sq)
            ls = tr.labels.astype(np.float64).sum(axis=0)
            scan.label_sum = ls + (0 if scan.label_sum is None else scan.label_sum)
    where = source.path
    if scan.n_rows == 0:
        raise DataError(f"{where}: the log is empty (no rows)")
    if scan.n_shown == 0:
        raise DataError(f"{where}: none of its {scan.n_rows} decisions had an impression (shown is False everywhere)")
    validation = val.result()
    if scan.n_train == 0 or validation is None:
        raise DataError(
            f"{where}: {scan.n_shown} impressions are too few to split by user into training and validation "
            f"(validation_fraction={cfg.validation_fraction:g}); simulate more users"
        )
    return scan, validation, base.result(), n_val_all


def fit_adrl(
    logs: Path | str,
    scenario: Scenario | None = None,
    cfg: FitConfig | None = None,
    *,
    progress: bool = True,
    console: Console | None = None,
) -> FitReport:
    """Fit click, conversion (ESMM) and leave heads on adrl logs; validation users are a fixed hash of user_id.

    Args:
        logs: a parquet log or a directory of them (streamed; never read whole).
        scenario: the scenario the log was simulated with (default: the default scenario); its layout must match.
        cfg: fit settings.
        progress: show a progress bar.
        console: where the progress bar goes.

    Raises:
        DataError: missing or unreadable file, missing columns, wrong dtypes, bad values, no impressions.
        FeatureMismatch: the log was written for another feature layout.
    """
    cfg = cfg or FitConfig()
    scenario = scenario or Scenario()
    start = time.perf_counter()
    rng, torch_seed = _seed(cfg.seed)
    source = AdrlLogSource(logs, scenario, cfg)
    if cfg.input_cap_quantile is not None:
        with contextlib.suppress(ValueError):  # no shown training rows: _scan names the problem
            source.cap_inputs(cfg.input_cap_quantile)
    scan, val, base, n_val_all = _scan(source, cfg)
    assert scan.dense_sum is not None and scan.dense_sq is not None and scan.label_sum is not None
    mean = scan.dense_sum / scan.n_train
    std = np.sqrt(np.maximum(scan.dense_sq / scan.n_train - mean**2, 0.0))
    rates = scan.label_sum / scan.n_train
    rates[1] = rates[1] / max(rates[0], 1e-9)  # the cvr logit starts at conversions per click
    heads = (True, True, True)
    net = _make_net(source.encoder.spec, cfg, mean, std, rates, torch_seed)
    with torch_threads(cfg.threads):  # small nets gain little from more, and lose a lot on busy cores
        history = _train(net, source.train_batches, val, heads, cfg, rng, scan.n_train, progress, console)
    notes = []
    if len(val) < n_val_all:
        notes.append(f"validation metrics use a user-hash sample of {len(val):,} of {n_val_all:,} validation rows")
    metrics, n_base, n_forest, base_notes = _evaluate(net, val, base, heads, cfg, source.layout.slots, rng)
    notes += base_notes
    model = BehaviorModel(
        net,
        data_format="adrl",
        heads=heads,
        layout=source.layout,
        category_of=source.category_of,
        scenario=scenario.model_dump(mode="json"),
        scenario_hash=scenario.content_hash,
        input_caps=source.encoder.caps,
    )
    report = FitReport(
        model=model,
        metrics=metrics,
        history=history,
        n_train=scan.n_train,
        n_validation=len(val),
        n_baseline=n_base,
        n_forest=n_forest,
        split=f"by user: hash(user_id) < {cfg.validation_fraction:g} is validation",
        seconds=time.perf_counter() - start,
        notes=notes,
    )
    _finish(report, cfg, source=str(logs), data_format="adrl")
    return report


# ---- OBD -------------------------------------------------------------------------------------------------------
class ObdEncoder:
    """Encode OBD impressions: hashed user features, KMeans segment, item and its features, position, hour.

    Dense inputs are the affinity of the shown item, ``item_feature_0`` and every user-item affinity.
    Categories unseen at fit time map to id 0.
    """

    def __init__(
        self,
        user_vocab: dict[str, list[str]],
        item_vocab: dict[str, list[str]],
        item_context: pd.DataFrame,
        n_items: int,
        positions: tuple[int, ...],
        profiler: UserProfiler,
    ) -> None:
        self.user_vocab, self.item_vocab = user_vocab, item_vocab
        self.n_items, self.positions, self.profiler = n_items, positions, profiler
        self.item_codes = np.stack(
            [_codes(item_context[c].astype(str).to_numpy(), v) for c, v in item_vocab.items()], axis=1
        )
        self.item_feature_0 = item_context["item_feature_0"].to_numpy(dtype=np.float32)
        self.spec = InputSpec(
            categorical=(
                *((c, len(v) + 1) for c, v in user_vocab.items()),
                ("segment", profiler.n_clusters),
                ("item", n_items),
                *((c, len(v) + 1) for c, v in item_vocab.items()),
                ("position", len(positions)),
                ("hour", HOURS_PER_DAY),
            ),
            dense=("affinity_shown", "item_feature_0", *(f"affinity_{i}" for i in range(n_items))),
            fm_user=(*user_vocab, "segment"),
            fm_user_dense=(),
            fm_item=("item", *item_vocab),
        )

    @classmethod
    def fit(cls, data: ObdData, n_clusters: int, rng: np.random.Generator) -> ObdEncoder:
        user_vocab = {c: sorted(data.frame[c].astype(str).unique()) for c in data.user_feature_names}
        item_cats = [c for c in data.item_context.columns if c.startswith("item_feature_") and c != "item_feature_0"]
        item_vocab = {c: sorted(data.item_context[c].astype(str).unique()) for c in item_cats}
        profile = _profile_features(data, user_vocab)
        profiler = UserProfiler.fit(profile, min(n_clusters, len(profile)), rng=rng)
        return cls(user_vocab, item_vocab, data.item_context, data.n_items, data.positions, profiler)

    def to_extra(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        extra = {
            "user_vocab": self.user_vocab,
            "item_vocab": self.item_vocab,
            "n_items": self.n_items,
            "positions": list(self.positions),
        }
        return extra, self.profiler.to_arrays()

    @classmethod
    def from_model(cls, model: BehaviorModel, item_context: pd.DataFrame) -> ObdEncoder:
        """The encoder of an OBD-format model, for items described by ``item_context``."""
        obd = model.extra.get("obd")
        if model.data_format != "obd" or not isinstance(obd, dict):
            raise DataError(f"this behavior model was fit on {model.data_format!r} data, not OBD")
        profiler = UserProfiler.from_arrays(model.extra_arrays)
        enc = cls(
            obd["user_vocab"], obd["item_vocab"], item_context, int(obd["n_items"]), tuple(obd["positions"]), profiler
        )
        if enc.spec != model.spec:
            raise FeatureMismatch("the OBD data does not match the inputs the model was fit on (items or features)")
        return enc

    def encode(self, data: ObdData) -> tuple[np.ndarray, np.ndarray]:
        if data.n_items != self.n_items:
            raise FeatureMismatch(f"the model was fit on {self.n_items} items, the data has {data.n_items}")
        n = data.n_rounds
        item = data.action
        user = [_codes(data.frame[c].astype(str).to_numpy(), v) for c, v in self.user_vocab.items()]
        segment = self.profiler.assign(_profile_features(data, self.user_vocab))
        position = np.searchsorted(np.asarray(self.positions), data.frame["position"].to_numpy())
        position = np.minimum(position, len(self.positions) - 1)
        cat = np.column_stack([*user, segment, item, self.item_codes[item], position, data.hour]).astype(np.int64)
        aff = data.affinity().astype(np.float32)
        dense = np.column_stack([aff[np.arange(n), item], self.item_feature_0[item], aff]).astype(np.float32)
        return cat, dense


def _codes(values: np.ndarray, vocab: list[str]) -> np.ndarray:
    """1-based index of each value in the sorted ``vocab``; 0 for values not in it."""
    v = np.asarray(vocab)
    pos = np.searchsorted(v, values)
    pos = np.minimum(pos, max(len(v) - 1, 0))
    found = (v[pos] == values) if len(v) else np.zeros(len(values), dtype=bool)
    return np.where(found, pos + 1, 0).astype(np.int64)


def _profile_features(data: ObdData, user_vocab: dict[str, list[str]]) -> np.ndarray:
    """One-hot user features (by ``user_vocab``) then affinities: what KMeans clusters users on."""
    cols = []
    for c, v in user_vocab.items():
        codes = _codes(data.frame[c].astype(str).to_numpy(), v)
        cols.append(np.eye(len(v) + 1, dtype=np.float32)[codes][:, 1:])
    return np.concatenate([*cols, data.affinity().astype(np.float32)], axis=1)


def predict_obd(model: BehaviorModel, data: ObdData) -> np.ndarray:
    """pCTR of each impression of ``data`` under an OBD-format model, float32 (n,)."""
    cat, dense = ObdEncoder.from_model(model, data.item_context).encode(data)
    return model.predict_inputs(cat, dense)[0]


def fit_obd(
    path: Path | str,
    cfg: FitConfig | None = None,
    *,
    behavior_policy: str = "random",
    campaign: str = "all",
    progress: bool = True,
    console: Console | None = None,
) -> FitReport:
    """Fit the click head on Open Bandit Dataset impressions; conversion and leave heads are disabled.

    Split in time: the last ``validation_fraction`` of impressions is the test set the metrics are reported on;
    the last eighth of the earlier part decides early stopping. Users are segmented with KMeans
    (``cfg.clusters``), since OBD has no segment column.
    """
    cfg = cfg or FitConfig()
    start = time.perf_counter()
    rng, torch_seed = _seed(cfg.seed)
    data = read_obd(path, behavior_policy=behavior_policy, campaign=campaign)
    train_all, test = data.time_split(cfg.validation_fraction)
    fit_part, stop_part = train_all.time_split(0.125)
    encoder = ObdEncoder.fit(fit_part, cfg.clusters, rng)

    def encoded(d: ObdData) -> Encoded:
        cat, dense = encoder.encode(d)
        labels = np.zeros((d.n_rounds, 3), dtype=np.float32)
        labels[:, 0] = d.reward
        pos = cat[:, encoder.spec.cat_index("position")]
        return Encoded(cat, dense, labels, pos, d.hour)

    fit_enc, stop_enc, test_enc = encoded(fit_part), encoded(stop_part), encoded(test)
    if fit_enc.labels[:, 0].sum() == 0:
        raise DataError(f"{data.source}: no clicks in the training part ({fit_part.n_rounds} rows); cannot fit")
    d64 = fit_enc.dense.astype(np.float64)
    rate = float(fit_enc.labels[:, 0].mean())
    heads = (True, False, False)
    net = _make_net(encoder.spec, cfg, d64.mean(axis=0), d64.std(axis=0), [rate, 0.5, 0.5], torch_seed)

    def batches(r: np.random.Generator) -> Iterator[Encoded]:
        perm = r.permutation(len(fit_enc))
        for i in range(0, len(perm), cfg.batch_size):
            yield fit_enc.take(perm[i : i + cfg.batch_size])

    with torch_threads(cfg.threads):  # small nets gain little from more, and lose a lot on busy cores
        history = _train(net, batches, stop_enc, heads, cfg, rng, len(fit_enc), progress, console)
    # baselines see all of the earlier part (they need no early-stopping set)
    train_enc = Encoded.concat([fit_enc, stop_enc])
    positions = tuple(str(p) for p in data.positions)
    metrics, n_base, n_forest, notes = _evaluate(net, test_enc, train_enc, heads, cfg, positions, rng)
    extra, arrays = encoder.to_extra()
    extra |= {"behavior_policy": data.behavior_policy, "campaign": data.campaign, "clusters": cfg.clusters}
    model = BehaviorModel(net, data_format="obd", heads=heads, extra={"obd": extra}, extra_arrays=arrays)
    report = FitReport(
        model=model,
        metrics=metrics,
        history=history,
        n_train=len(fit_enc),
        n_validation=len(test_enc),
        n_baseline=n_base,
        n_forest=n_forest,
        split=(
            f"by time: first {1 - cfg.validation_fraction:g} of impressions train (its last eighth stops early), "
            f"last {cfg.validation_fraction:g} test"
        ),
        seconds=time.perf_counter() - start,
        notes=[*notes, "OBD has no conversions or churn: the conversion and leave heads are disabled"],
    )
    _finish(report, cfg, source=str(data.source), data_format="obd")
    return report


# ---- shared ------------------------------------------------------------------------------------------------------
def _seed(seed: int | None) -> tuple[np.random.Generator, int]:
    """A numpy generator and a torch seed from independent streams of ``seed``; torch is seeded here, once."""
    np_ss, torch_ss = np.random.SeedSequence(seed).spawn(2)
    torch_seed = int(torch_ss.generate_state(1)[0])
    torch.manual_seed(torch_seed)
    return np.random.default_rng(np_ss), torch_seed


def _make_net(
    spec: InputSpec, cfg: FitConfig, mean: np.ndarray, std: np.ndarray, rates: Any, torch_seed: int
) -> BehaviorNet:
    torch.manual_seed(torch_seed)
    net = BehaviorNet(spec, embedding_dim=cfg.embedding_dim, fm_dim=cfg.fm_dim, hidden=cfg.hidden, wide=cfg.wide)
    net.set_normalization(torch.as_tensor(mean, dtype=torch.float32), torch.as_tensor(std, dtype=torch.float32))
    net.set_base_rates([float(r) for r in rates])
    return net


def _tensors(b: Encoded) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return torch.from_numpy(b.cat), torch.from_numpy(b.dense), torch.from_numpy(b.labels)


def _validation_loss(net: BehaviorNet, val: Encoded, heads: tuple[bool, bool, bool]) -> np.ndarray:
    """Per-head mean loss on ``val`` (0 for disabled heads)."""
    total = np.zeros(len(HEADS))
    with torch.no_grad():
        for i in range(0, len(val), 65_536):
            cat, dense, labels = _tensors(val.take(slice(i, i + 65_536)))
            _, per_head = multitask_loss(net(cat, dense), labels, heads)
            total += per_head.numpy() * cat.shape[0]
    return total / max(len(val), 1)


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch threads, then restore the previous count."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _train(
    net: BehaviorNet,
    batches: Callable[[np.random.Generator], Iterator[Encoded]],
    val: Encoded,
    heads: tuple[bool, bool, bool],
    cfg: FitConfig,
    rng: np.random.Generator,
    n_train: int,
    progress: bool,
    console: Console | None,
) -> list[dict[str, float]]:
    """Adam on minibatches; after each epoch the validation loss of the (averaged) weights decides: keep the best,
    halve the learning rate when it did not improve, stop after ``patience`` epochs without improvement."""
    opt = torch.optim.Adam(net.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    ema = None
    if cfg.ema_epochs is not None:
        decay = 1.0 - 1.0 / max(cfg.ema_epochs * n_train / cfg.batch_size, 1.0)
        ema = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
    scored = net if ema is None else cast(BehaviorNet, ema.module)
    best, best_state, stale = math.inf, copy.deepcopy(net.state_dict()), 0
    history: list[dict[str, float]] = []
    columns = (
        TextColumn("[bold]fit[/bold] epoch {task.fields[epoch]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("rows  val loss {task.fields[val]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, disable=not progress, transient=True) as bar:
        task = bar.add_task("fit", total=n_train, epoch=f"1/{cfg.epochs}", val="-")
        last = "-"
        for epoch in range(cfg.epochs):
            bar.reset(task, total=n_train, epoch=f"{epoch + 1}/{cfg.epochs}", val=last)  # reset replaces all fields
            net.train()
            seen, train_loss = 0, 0.0
            for b in batches(rng):
                cat, dense, labels = _tensors(b)
                loss, _ = multitask_loss(net(cat, dense), labels, heads)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if ema is not None:
                    ema.update_parameters(net)
                seen += len(b)
                train_loss += loss.detach().item() * len(b)
                bar.advance(task, len(b))
            scored.eval()
            per_head = _validation_loss(scored, val, heads)
            val_loss = float(per_head.sum())
            row = {"epoch": epoch + 1, "train_loss": train_loss / max(seen, 1), "validation_loss": val_loss}
            row |= {f"validation_loss_{h}": float(x) for h, x in zip(HEADS, per_head, strict=True) if x}
            row["learning_rate"] = float(opt.param_groups[0]["lr"])
            history.append(row)
            last = f"{val_loss:.5f}"
            bar.update(task, val=last)
            if val_loss < best - 1e-6:
                best, best_state, stale = val_loss, copy.deepcopy(scored.state_dict()), 0
            else:
                stale += 1
                for g in opt.param_groups:
                    g["lr"] *= 0.5
                if stale >= cfg.patience:
                    break
    net.load_state_dict(best_state)
    net.eval()
    return history


def _design(enc: Encoded, cards: tuple[int, ...], mean: np.ndarray, std: np.ndarray) -> sparse.csr_matrix:
    """One-hot categoricals beside standardised dense features: the logistic regression's inputs."""
    n = len(enc)
    offsets = np.concatenate([[0], np.cumsum(cards)[:-1]])
    cols = (enc.cat + offsets[None, :]).ravel()
    rows = np.repeat(np.arange(n), enc.cat.shape[1])
    one_hot = sparse.csr_matrix((np.ones(cols.size), (rows, cols)), shape=(n, int(sum(cards))))
    dense = (enc.dense.astype(np.float64) - mean) / std
    return sparse.hstack([one_hot, sparse.csr_matrix(dense)], format="csr")


def _evaluate(
    net: BehaviorNet,
    val: Encoded,
    base: Encoded | None,
    heads: tuple[bool, bool, bool],
    cfg: FitConfig,
    slot_names: tuple[str, ...],
    rng: np.random.Generator,
) -> tuple[dict[str, dict[str, HeadMetrics]], int, int, list[str]]:
    """Metrics per enabled head of the model, the baselines (fit on ``base``) and the truth (when known)."""
    preds: dict[str, np.ndarray] = {}
    with torch.no_grad():
        parts = [
            torch.sigmoid(net(*_tensors(val.take(slice(i, i + 65_536)))[:2])).numpy()
            for i in range(0, len(val), 65_536)
        ]
    p = np.concatenate(parts).astype(np.float64)
    preds["model"] = np.stack([p[:, 0], p[:, 0] * p[:, 1], p[:, 2]], axis=1)
    notes: list[str] = []
    n_base = n_forest = 0
    if cfg.baselines and base is not None and len(base) > 0:
        n_base = len(base)
        forest = base
        if len(base) > cfg.forest_rows:
            forest = base.take(np.sort(rng.permutation(len(base))[: cfg.forest_rows]))
        n_forest = len(forest)
        notes.append(
            f"logistic regression fit on {n_base:,} training rows, random forest ({cfg.forest_trees} trees) on "
            f"{n_forest:,} (bounded samples, hash-selected)"
        )
        d64 = base.dense.astype(np.float64)
        mean, std = d64.mean(axis=0), np.maximum(d64.std(axis=0), 1e-6)
        cards = tuple(int(max(c, m + 1)) for c, m in zip(net.spec.cardinalities, base.cat.max(axis=0), strict=True))
        x_base, x_val = _design(base, cards, mean, std), _design(val, cards, mean, std)
        forest_x = np.column_stack([forest.cat, forest.dense]).astype(np.float32)
        val_x = np.column_stack([val.cat, val.dense]).astype(np.float32)
        lr = np.full((len(val), 3), np.nan)
        rf = np.full((len(val), 3), np.nan)
        seed = int(rng.integers(2**31 - 1))
        for h, on in enumerate(heads):
            y = base.labels[:, h]
            if not on or y.min() == y.max():
                continue
            clf = LogisticRegression(C=1.0, max_iter=500)
            lr[:, h] = clf.fit(x_base, y).predict_proba(x_val)[:, 1]
            yf = forest.labels[:, h]
            if yf.min() == yf.max():
                continue
            rfc = RandomForestClassifier(
                n_estimators=cfg.forest_trees, max_depth=12, min_samples_leaf=20, n_jobs=1, random_state=seed
            )
            rf[:, h] = rfc.fit(forest_x, yf).predict_proba(val_x)[:, 1]
        preds["logistic_regression"], preds["random_forest"] = lr, rf
    if val.truth is not None:
        preds["truth"] = val.truth
    out: dict[str, dict[str, HeadMetrics]] = {}
    for h, name in enumerate(HEADS):
        if not heads[h]:
            continue
        y = val.labels[:, h]
        out[name] = {
            src: head_metrics(y, pr[:, h], slot=val.slot, hour=val.hour, slot_names=slot_names)
            for src, pr in preds.items()
            if not np.isnan(pr[:, h]).all()
        }
    return out, n_base, n_forest, notes


def _finish(report: FitReport, cfg: FitConfig, *, source: str, data_format: str) -> None:
    settings = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(cfg).items()}
    report.model.metrics = report.metrics_json()
    report.model.training = {
        "logs": source,
        "format": data_format,
        "config": settings,
        "history": report.history,
        "seconds": report.seconds,
    }


def with_overrides(cfg: FitConfig, **changes: Any) -> FitConfig:
    """``cfg`` with the given fields replaced (None values are ignored), validated again."""
    return replace(cfg, **{k: v for k, v in changes.items() if v is not None})


__all__ = [
    "AdrlLogSource",
    "Encoded",
    "FitConfig",
    "FitReport",
    "ObdEncoder",
    "fit_adrl",
    "fit_obd",
    "predict_obd",
    "unit_hash",
    "with_overrides",
]
