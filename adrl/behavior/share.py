"""The share head: P(share | click) learned from logs that carry a ``share`` column (the viral env's logs).

It is a :class:`~adrl.behavior.model.BehaviorModel` with one head enabled, trained on the clicked impressions with
the share as its label: the same inputs, network (embeddings, factorization term, wide part), training loop and
artifact as the click head, so ``BehaviorModel.load`` reads it back and ``predict(obs, action)[0]`` is
P(share | click). Its validation metrics sit beside a logistic regression on the same one-hot + dense inputs
(``metrics["share"]``). ``adrl.behavior.share.SHARE_DIR`` is where it is saved inside a behavior model directory.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from adrl.behavior.inputs import AdrlEncoder
from adrl.behavior.metrics import HeadMetrics, head_metrics, log_loss
from adrl.behavior.model import BehaviorModel
from adrl.behavior.training import (
    Encoded,
    FitConfig,
    _design,
    _make_net,
    _seed,
    _train,
    torch_threads,
    unit_hash,
)
from adrl.errors import DataError
from adrl.features import FeatureLayout
from adrl.logs import feature_columns, read_logs
from adrl.scenario import Scenario

SHARE_DIR = "share"
HEADS_ON = (True, False, False)  # the first ("click") head carries P(share | click)


@dataclass
class ShareReport:
    model: BehaviorModel
    metrics: dict[str, HeadMetrics]  # "model", "logistic_regression" (and "truth") on the validation users' clicks
    n_train: int
    n_validation: int
    seconds: float
    # the validation clicks behind ``metrics``: share labels, both fits' P(share | click) and the users (for
    # :func:`compare_to_logistic_regression`)
    validation_labels: np.ndarray = field(default_factory=lambda: np.zeros(0))
    validation_model: np.ndarray = field(default_factory=lambda: np.zeros(0))
    validation_lr: np.ndarray = field(default_factory=lambda: np.zeros(0))
    validation_users: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


@dataclass(frozen=True)
class HeadComparison:
    """Share head minus logistic regression on the same validation clicks, with user-clustered 95% intervals.

    ``auc`` > 0 and ``log_loss`` < 0 favour the head; ``beats`` is true when both intervals exclude 0 that way.
    """

    auc: float
    auc_ci95: tuple[float, float]
    log_loss: float
    log_loss_ci95: tuple[float, float]
    n_users: int
    n_boot: int

    @property
    def beats(self) -> bool:
        return self.auc_ci95[0] > 0 and self.log_loss_ci95[1] < 0

    def as_dict(self) -> dict[str, object]:
        return {
            "auc_difference": round(self.auc, 5),
            "auc_difference_ci95": [round(x, 5) for x in self.auc_ci95],
            "log_loss_difference": round(self.log_loss, 6),
            "log_loss_difference_ci95": [round(x, 6) for x in self.log_loss_ci95],
            "users": self.n_users,
            "bootstrap": self.n_boot,
            "beats": self.beats,
        }


def compare_to_logistic_regression(report: ShareReport, *, n_boot: int = 200, seed: int = 0) -> HeadComparison:
    """AUC and log-loss differences (head − regression) with percentile intervals from a Poisson bootstrap of the
    validation users: one user's clicks move together, so the user is the unit resampled.

    Raises:
        ValueError: the report carries no validation clicks, or ``n_boot`` < 20.
    """
    y, pm, pl = report.validation_labels, report.validation_model, report.validation_lr
    if y.size == 0:
        raise ValueError("the report carries no validation clicks; fit it with fit_share_head")
    if n_boot < 20:
        raise ValueError(f"n_boot must be >= 20 for a 95% interval, got {n_boot}")
    _, unit = np.unique(report.validation_users, return_inverse=True)
    n_units = int(unit.max()) + 1
    rng = np.random.default_rng(seed)

    def diffs(w: np.ndarray) -> tuple[float, float]:
        auc = roc_auc_score(y, pm, sample_weight=w) - roc_auc_score(y, pl, sample_weight=w)
        return float(auc), log_loss(y, pm, w) - log_loss(y, pl, w)

    point = diffs(np.ones_like(y, dtype=np.float64))
    reps = np.array([diffs(rng.poisson(1.0, n_units).astype(np.float64)[unit]) for _ in range(n_boot)])
    lo, hi = np.percentile(reps, [2.5, 97.5], axis=0)
    return HeadComparison(
        auc=point[0], auc_ci95=(float(lo[0]), float(hi[0])), log_loss=point[1],
        log_loss_ci95=(float(lo[1]), float(hi[1])), n_users=n_units, n_boot=n_boot,
    )  # fmt: skip


def _encoded(encoder: AdrlEncoder, obs: np.ndarray, action: np.ndarray, share: np.ndarray) -> Encoded:
    cat, dense = encoder.encode(obs, action)
    labels = np.zeros((len(share), 3), dtype=np.float32)
    labels[:, 0] = share
    return Encoded(cat, dense, labels, cat[:, 3].copy(), cat[:, 4].copy())


def fit_share_head(logs: Path | str, scenario: Scenario, cfg: FitConfig | None = None) -> ShareReport:
    """Fit P(share | click) on the clicked rows of ``logs``; validation users are a fixed hash of user_id.

    Raises:
        DataError: the log has no ``share`` column, or too few clicks or shares to fit and validate.
    """
    cfg = cfg or FitConfig()
    start = time.perf_counter()
    layout = FeatureLayout.from_scenario(scenario)
    cols = feature_columns(layout)
    df = read_logs(logs)
    if "share" not in df:
        raise DataError(f"{logs}: no 'share' column; log the population env (adrl.simulate.simulate_viral)")
    df = df[df["click"].to_numpy(dtype=bool)]
    share = df["share"].to_numpy(dtype=bool)
    if share.all() or not share.any():
        raise DataError(f"{logs}: {len(df)} clicks with {int(share.sum())} shares; need both shares and non-shares")
    category_of = np.array([scenario.categories.index(c.category) for c in scenario.creatives])
    encoder = AdrlEncoder(layout, category_of)
    enc = _encoded(encoder, df[cols].to_numpy(np.float32), df[["delay", "slot", "creative"]].to_numpy(), share)
    is_val = unit_hash(df["user_id"].to_numpy(dtype=np.int64)) < cfg.validation_fraction
    train, val = enc.take(~is_val), enc.take(is_val)
    if len(train) == 0 or len(val) == 0:
        raise DataError(f"{logs}: {len(enc)} clicks are too few to split by user; simulate more days")
    rng, torch_seed = _seed(cfg.seed)
    d64 = train.dense.astype(np.float64)
    mean, std = d64.mean(axis=0), np.maximum(d64.std(axis=0), 1e-6)
    net = _make_net(encoder.spec, cfg, mean, std, [train.labels[:, 0].mean(), 0.5, 0.5], torch_seed)

    def batches(r: np.random.Generator) -> Iterator[Encoded]:
        order = r.permutation(len(train))
        for i in range(0, len(order), cfg.batch_size):
            yield train.take(order[i : i + cfg.batch_size])

    with torch_threads(cfg.threads):
        _train(net, batches, val, HEADS_ON, cfg, rng, len(train), False, None)
    model = BehaviorModel(
        net, data_format="adrl", heads=HEADS_ON, layout=layout, category_of=category_of,
        scenario=scenario.model_dump(mode="json"), scenario_hash=scenario.content_hash,
        extra={"head": "share", "meaning": "the click head is P(share | click)"},
    )  # fmt: skip
    p_model = model.predict_inputs(val.cat, val.dense)[0].astype(np.float64)
    cards = tuple(int(max(c, m + 1)) for c, m in zip(encoder.spec.cardinalities, enc.cat.max(axis=0), strict=True))
    lr = LogisticRegression(C=1.0, max_iter=500).fit(_design(train, cards, mean, std), train.labels[:, 0])
    p_lr = lr.predict_proba(_design(val, cards, mean, std))[:, 1]
    y = val.labels[:, 0]
    metrics = {"model": head_metrics(y, p_model), "logistic_regression": head_metrics(y, p_lr)}
    if "p_share" in df:  # the ceiling: the true probabilities of the same rows
        metrics["truth"] = head_metrics(y, df["p_share"].to_numpy(dtype=np.float64)[is_val])
    model.metrics = {"share": {k: v.as_dict() for k, v in metrics.items()}}
    users = df["user_id"].to_numpy(dtype=np.int64)[is_val]
    return ShareReport(
        model, metrics, len(train), len(val), time.perf_counter() - start,
        validation_labels=y.astype(np.float64), validation_model=p_model, validation_lr=p_lr, validation_users=users,
    )  # fmt: skip
