"""``adrl ope --engine ray``: the streamed pass of :mod:`adrl.ope.stream` run per parquet shard on a Ray cluster.

Each file of the log is one shard. Ray Data maps the shards to their scan states (the per-episode sufficient
statistics: the moments of ``[ρ_t r_t, ρ_t]``, the sampled starts and the sampled episodes' rows) on the workers,
and the driver merges them and finishes the estimates exactly as the local pass does, so both give the same
estimates up to floating-point summation order. The targets are built on each worker by ``make_targets`` (a
picklable callable, e.g. one that loads policy artifacts, so the workers must see the same paths: a shared file
system), and the behavior members stay on the driver. Ray is the optional extra ``adrl[ray]``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from adrl.errors import ConfigError, DataError
from adrl.features import FeatureLayout
from adrl.logs import log_files
from adrl.ope.data import TargetProbs
from adrl.ope.model_based import Simulators
from adrl.ope.stream import ScanConfig, ScanState, StreamResult, check_layout, finish, scan, survey


def _ray() -> Any:
    try:
        import ray
    except ImportError as e:  # the default install has no Ray
        raise ConfigError("--engine ray needs Ray: pip install 'adrl[ray]' (on the driver and every worker)") from e
    return ray


MakeTargets = Callable[[], Mapping[str, TargetProbs]]


def _scan_shard(row: dict[str, Any], make_targets: MakeTargets, cfg: ScanConfig) -> dict[str, Any]:
    return {"file": row["file"], "state": scan([Path(row["file"])], make_targets(), cfg)}


def _shard_ids(row: dict[str, Any]) -> dict[str, Any]:
    import pyarrow.parquet as pq

    return {"file": row["file"], "ids": survey(pq.ParquetFile(row["file"]))[0]}


def evaluate_log_ray(
    path: Path | str,
    layout: FeatureLayout,
    make_targets: MakeTargets,
    estimators: Sequence[str],
    *,
    sim: Simulators | None,
    q: Any = None,
    seed: int,
    alpha: float = 0.05,
    n_boot: int = 200,
    n_folds: int = 2,
    gamma: float = 1.0,
    max_starts: int | None = 100_000,
    sample_episodes: int = 20_000,
    address: str | None = None,
    num_cpus: int | None = None,
) -> StreamResult:
    """:func:`adrl.ope.stream.evaluate_log` with the shards scanned by Ray Data; ``make_targets()`` gives the
    candidates by name (called once per shard, on its worker, and once on the driver). ``address`` is the
    cluster's (None: a local Ray with ``num_cpus``)."""
    ray = _ray()
    check_layout(path, layout)
    files = [str(f) for f in log_files(path)]
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, num_cpus=num_cpus if address is None else None, include_dashboard=False,
                 log_to_driver=False, configure_logging=False)  # fmt: skip
    try:
        ids = ray.data.from_items([{"file": f} for f in files]).map(_shard_ids).take_all()
        all_ids = np.concatenate([np.asarray(r["ids"], dtype=np.int64) for r in ids])
        n_episodes = int(np.unique(all_ids).size)
        if n_episodes == 0:
            raise DataError(f"{path}: the log is empty")
        cfg = ScanConfig(
            layout, horizon=2 * layout.horizon, seed=seed, gamma=gamma,
            start_fraction=1.0 if max_starts is None else min(1.0, max_starts / n_episodes),
            sample_fraction=min(1.0, sample_episodes / n_episodes),
        )  # fmt: skip
        rows = (
            ray.data.from_items([{"file": f} for f in files])
            .map(_scan_shard, fn_kwargs={"make_targets": make_targets, "cfg": cfg})
            .take_all()
        )
    finally:
        if started:
            ray.shutdown()
    by_file = {r["file"]: r["state"] for r in rows}
    state: ScanState = by_file[files[0]]
    for f in files[1:]:  # in file order, as the local pass reads them
        state.merge(by_file[f])
    targets = make_targets()
    rngs = {name: np.random.default_rng([seed, k]) for k, name in enumerate(targets)}
    return finish(state, targets, estimators, cfg, sim=sim, q=q, rng_for=rngs, alpha=alpha, n_boot=n_boot,
                  n_folds=n_folds)  # fmt: skip


__all__ = ["MakeTargets", "evaluate_log_ray"]
