"""Behavior-model members for model-based estimates: load fitted ones, or fit K on bootstrap resamples of user-days.

Any sequence of :class:`~adrl.world.ResponseModel` is an ensemble for :class:`~adrl.ope.model_based.Simulators`;
this module only finds artifacts on disk (``adrl ope --behavior DIR``, repeatable, or one directory holding member
directories) and offers the small bootstrap fit the brief of an estimate needs.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from adrl.errors import ArtifactError, DataError
from adrl.features import FeatureLayout
from adrl.logs import feature_columns, iter_batches, log_files
from adrl.protocols import ResponseModel
from adrl.scenario import Scenario
from adrl.world import Response, UserBatch

MODEL_FILE = "model.json"


def member_dirs(paths: Sequence[Path | str]) -> list[Path]:
    """Each path that is a behavior-model artifact, or the artifacts directly inside it (sorted by name).

    Raises:
        ArtifactError: a path is neither an artifact nor a directory holding some.
    """
    out: list[Path] = []
    for p in map(Path, paths):
        if (p / MODEL_FILE).is_file():
            out.append(p)
            continue
        inner = sorted(d for d in p.iterdir() if (d / MODEL_FILE).is_file()) if p.is_dir() else []
        if not inner:
            raise ArtifactError(
                f"{p}: not a behavior-model artifact (no {MODEL_FILE}) nor a directory of them; fit one with adrl fit"
            )
        out.extend(inner)
    return out


def load_members(paths: Sequence[Path | str], scenario: Scenario | None = None) -> tuple[ResponseModel, ...]:
    """The learned response models of ``paths`` (see :func:`member_dirs`) for ``scenario`` (default: the stored one)."""
    from adrl.behavior.response import LearnedResponse

    return tuple(LearnedResponse.load(d, scenario) for d in member_dirs(paths))


def bootstrap_log(logs: Path | str, out: Path, rng: np.random.Generator) -> Path:
    """Write a resample of ``logs``' user-days (episodes drawn with replacement, renumbered) to ``out``."""
    table = pa.concat_tables([pq.read_table(f) for f in log_files(logs)])
    episode = table.column("episode_id").to_numpy()
    uniq, inverse = np.unique(episode, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    starts = np.searchsorted(inverse[order], np.arange(uniq.size + 1))
    drawn = rng.integers(0, uniq.size, size=uniq.size)
    rows = np.concatenate([order[starts[k] : starts[k + 1]] for k in drawn])
    copy = np.repeat(np.arange(uniq.size), starts[drawn + 1] - starts[drawn])
    sample = table.take(pa.array(rows))
    for name in ("episode_id", "user_id"):  # a user drawn twice is two users
        i = sample.schema.get_field_index(name)
        sample = sample.set_column(i, sample.schema.field(name), pa.array(copy.astype(np.int64)))
    pq.write_table(sample, out)
    return out


def fit_bootstrap_members(
    logs: Path | str,
    scenario: Scenario,
    out: Path,
    *,
    n_members: int,
    seed: int | None,
    epochs: int,
    progress: bool = False,
    impression_inputs: bool = False,
) -> list[Path]:
    """Fit ``n_members`` behavior models, each on its own bootstrap resample of the logged user-days.

    Members are saved as ``out/member_<k>`` (a directory ``adrl ope --behavior`` reads). The resamples' seeds are
    spawned from ``seed``; the fit of member k is seeded with its own stream too. ``impression_inputs``: see
    :class:`~adrl.behavior.FitConfig`.
    """
    from adrl.behavior import FitConfig, fit_adrl

    if n_members < 1:
        raise ValueError(f"n_members must be >= 1, got {n_members}")
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, ss in enumerate(np.random.SeedSequence(seed).spawn(n_members)):
        rng = np.random.default_rng(ss)
        with tempfile.TemporaryDirectory() as tmp:
            sample = bootstrap_log(logs, Path(tmp) / "resample.parquet", rng)
            cfg = FitConfig(epochs=epochs, seed=int(rng.integers(2**31)), baselines=False,
                            impression_inputs=impression_inputs)  # fmt: skip
            report = fit_adrl(sample, scenario, cfg, progress=progress)
        paths.append(report.model.save(out / f"member_{k}"))
    return paths


class CalibratedResponse:
    """A response model whose three heads are shifted on the logit scale by ``offsets`` (click, conversion given a
    click, leave): calibration in the large, so the mean predicted rates match the logged ones."""

    def __init__(self, base: Any, offsets: np.ndarray) -> None:
        self.base, self.offsets = base, np.asarray(offsets, dtype=np.float64)

    def _shift(self, r: Response) -> Response:
        out = []
        for p, b in zip((r.p_click, r.p_conversion, r.p_leave), self.offsets, strict=True):
            q = np.clip(np.asarray(p, dtype=np.float64), 1e-12, 1.0 - 1e-12)
            out.append(1.0 / (1.0 + np.exp(-(np.log(q / (1.0 - q)) + b))))
        return Response(p_click=out[0], p_conversion=out[1], p_leave=out[2])

    def probabilities(self, batch: UserBatch, action: np.ndarray) -> Response:
        return self._shift(self.base.probabilities(batch, action))

    def probabilities_from_obs(self, obs: np.ndarray, action: np.ndarray) -> Response:
        return self._shift(self.base.probabilities_from_obs(obs, action))


def _offset(p: np.ndarray, target: float) -> float:
    """b with mean σ(logit(p) + b) = target (bisection; the mean is increasing in b)."""
    z = np.log(np.clip(p, 1e-12, 1 - 1e-12) / np.clip(1 - p, 1e-12, 1))
    lo, hi = -10.0, 10.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if float(np.mean(1.0 / (1.0 + np.exp(-(z + mid))))) < target:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def calibrate_members(
    members: Sequence[Any], logs: Path | str, layout: FeatureLayout, *, max_rows: int = 500_000, seed: int = 0
) -> tuple[CalibratedResponse, ...]:
    """Each member with per-head logit offsets that make its mean click, conversion-given-click and leave rates on
    (up to ``max_rows``, a uniform sample of) the logged impressions equal the logged rates.

    Raises:
        DataError: the log has no impressions, or lacks the outcome columns.
    """
    from adrl.ope.stream import unit_key

    cols = ["episode_id", "step", "shown", "click", "conversion", "leave", "delay", "slot", "creative",
            *feature_columns(layout)]  # fmt: skip
    total = sum(pq.ParquetFile(f).metadata.num_rows for f in log_files(logs))
    keep = min(1.0, 2.0 * max_rows / max(total, 1))  # thin while streaming, so memory stays near max_rows
    parts = []
    for df in iter_batches(logs, columns=cols):
        shown_part = df[df["shown"]].copy()
        # a keyed hash of (episode, step), not a stream of draws: the sample is the same however the log is split
        # into files and ordered
        with np.errstate(over="ignore"):
            mixed = shown_part["episode_id"].to_numpy().astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
            mixed = mixed + shown_part["step"].to_numpy().astype(np.uint64)
        shown_part["_key"] = unit_key(mixed, seed, 11)
        parts.append(shown_part if keep >= 1.0 else shown_part[shown_part["_key"] < keep])
    shown = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=[*cols, "_key"])
    if len(shown) == 0:
        raise DataError(f"{logs}: no impressions to calibrate the behavior models on")
    if len(shown) > max_rows:
        shown = shown.nsmallest(max_rows, "_key")
    shown = shown.sort_values(["episode_id", "step"], kind="stable")
    obs = shown[feature_columns(layout)].to_numpy(dtype=np.float32)
    action = shown[["delay", "slot", "creative"]].to_numpy(dtype=np.int64)
    click = shown["click"].to_numpy(dtype=bool)
    rates = (click.mean(), shown["conversion"].to_numpy()[click].mean() if click.any() else 0.0, shown["leave"].mean())
    out = []
    for m in members:
        r = m.probabilities_from_obs(obs, action)
        offsets = [
            _offset(np.asarray(r.p_click, dtype=np.float64), float(rates[0])),
            _offset(np.asarray(r.p_conversion, dtype=np.float64)[click], float(rates[1])) if click.any() else 0.0,
            _offset(np.asarray(r.p_leave, dtype=np.float64), float(rates[2])),
        ]
        out.append(CalibratedResponse(m, np.array(offsets)))
    return tuple(out)


__all__ = [
    "CalibratedResponse",
    "bootstrap_log",
    "calibrate_members",
    "fit_bootstrap_members",
    "load_members",
    "member_dirs",
]
