"""Behavior-model members for model-based estimates: load fitted ones, or fit K on bootstrap resamples of user-days.

Any sequence of :class:`~adrl.world.ResponseModel` is an ensemble for :class:`~adrl.ope.model_based.Simulators`;
this module only finds artifacts on disk (``adrl ope --behavior DIR``, repeatable, or one directory holding member
directories) and offers the small bootstrap fit the brief of an estimate needs.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from adrl.errors import ArtifactError
from adrl.logs import log_files
from adrl.scenario import Scenario
from adrl.world import ResponseModel

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
) -> list[Path]:
    """Fit ``n_members`` behavior models, each on its own bootstrap resample of the logged user-days.

    Members are saved as ``out/member_<k>`` (a directory ``adrl ope --behavior`` reads). The resamples' seeds are
    spawned from ``seed``; the fit of member k is seeded with its own stream too.
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
            cfg = FitConfig(epochs=epochs, seed=int(rng.integers(2**31)), baselines=False)
            report = fit_adrl(sample, scenario, cfg, progress=progress)
        paths.append(report.model.save(out / f"member_{k}"))
    return paths


__all__ = ["bootstrap_log", "fit_bootstrap_members", "load_members", "member_dirs"]
