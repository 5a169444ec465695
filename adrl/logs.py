"""Logged-decision schema (Arrow, defined once), chunked atomic parquet writing, and validated reading.

One row is one decision: who (episode, user, step, hour), what was observed (``x_<feature>`` columns of the
feature layout), what was done (delay, slot, creative) with the logging policy's propensity (joint and per
component), and what happened (shown, click, conversion, leave, reward). Synthetic logs also carry the true
probabilities; the policy server adds event ids, its policy version and whether the reward was defaulted.
Layout and scenario hashes travel in the file's metadata.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from adrl.errors import DataError
from adrl.features import LOG_PREFIX, FeatureLayout
from adrl.io import atomic_path
from adrl.scenario import HOURS_PER_DAY

SCHEMA_VERSION = 1

# (name, type, required) for every column that is not a feature
CORE_COLUMNS: tuple[tuple[str, pa.DataType, bool], ...] = (
    ("episode_id", pa.int64(), True),
    ("user_id", pa.int64(), True),
    ("step", pa.int32(), True),
    ("hour", pa.int8(), True),
    ("delay", pa.int16(), True),
    ("slot", pa.int16(), True),
    ("creative", pa.int16(), True),
    ("propensity", pa.float64(), True),
    ("propensity_delay", pa.float64(), True),
    ("propensity_slot", pa.float64(), True),
    ("propensity_creative", pa.float64(), True),
    ("shown", pa.bool_(), True),
    ("click", pa.bool_(), True),
    ("conversion", pa.bool_(), True),
    ("leave", pa.bool_(), True),
    ("reward", pa.float64(), True),
)
TRUTH_COLUMNS: tuple[tuple[str, pa.DataType, bool], ...] = (
    ("p_click", pa.float64(), False),
    ("p_conversion", pa.float64(), False),  # given a click
    ("p_leave", pa.float64(), False),
)
SERVING_COLUMNS: tuple[tuple[str, pa.DataType, bool], ...] = (
    ("event_id", pa.string(), False),
    ("policy_version", pa.string(), False),
    ("defaulted", pa.bool_(), False),
)
# logs of a market with a social graph: the user shared the ad after clicking it (the population env's logs)
SOCIAL_COLUMNS: tuple[tuple[str, pa.DataType, bool], ...] = (
    ("share", pa.bool_(), False),
    ("p_share", pa.float64(), False),  # the true P(share | click) (synthetic logs)
)
# the policy server's log during an experiment: which arm served the decision, and that arm's policy id
EXPERIMENT_COLUMNS: tuple[tuple[str, pa.DataType, bool], ...] = (
    ("arm", pa.string(), False),
    ("policy_id", pa.string(), False),
)
OPTIONAL_COLUMNS = TRUTH_COLUMNS + SERVING_COLUMNS + SOCIAL_COLUMNS + EXPERIMENT_COLUMNS


def feature_columns(layout: FeatureLayout) -> list[str]:
    return [LOG_PREFIX + name for name in layout.obs_names]


def logged_columns(
    layout: FeatureLayout,
    *,
    obs: np.ndarray,
    episode_id: Any,
    user_id: Any,
    step: Any,
    hour: Any,
    action: np.ndarray,
    propensity: Any,
    components: np.ndarray,
    shown: Any,
    click: Any,
    conversion: Any,
    leave: Any,
    reward: Any,
    truth: tuple[Any, Any, Any] | None = None,
    serving: tuple[Any, Any, Any] | None = None,
    share: tuple[Any, Any] | None = None,
) -> dict[str, Any]:
    """The one builder of logged rows: a chunk of ``n`` decisions as ``{column: values}`` for :class:`LogWriter`.

    Args:
        obs: (n, obs_dim) observations the actions were chosen on (``x_*`` columns).
        action: (n, 3) delay, slot and creative indices.
        components: (n, 3) per-component propensities (delay, slot, creative); ``propensity`` is the joint.
        truth: true (p_click, p_conversion, p_leave) of synthetic logs.
        serving: (event_id, policy_version, defaulted) of the policy server's log.
        share: (share, p_share): whether the user shared the ad and its true probability given a click (logs of
            a market with a social graph).
        The other arguments are per-row values, shape (n,) (scalars broadcast).
    """
    action = np.asarray(action)
    components = np.asarray(components)
    cols: dict[str, Any] = {
        "episode_id": episode_id,
        "user_id": user_id,
        "step": step,
        "hour": hour,
        "delay": action[:, 0],
        "slot": action[:, 1],
        "creative": action[:, 2],
        "propensity": propensity,
        "propensity_delay": components[:, 0],
        "propensity_slot": components[:, 1],
        "propensity_creative": components[:, 2],
        "shown": shown,
        "click": click,
        "conversion": conversion,
        "leave": leave,
        "reward": reward,
    }
    if truth is not None:
        cols.update(zip((n for n, _, _ in TRUTH_COLUMNS), truth, strict=True))
    if serving is not None:
        cols.update(zip((n for n, _, _ in SERVING_COLUMNS), serving, strict=True))
    if share is not None:
        cols.update(zip((n for n, _, _ in SOCIAL_COLUMNS), share, strict=True))
    obs_columns = np.ascontiguousarray(np.asarray(obs).T)  # contiguous columns: arrow takes them without a copy
    for j, name in enumerate(layout.obs_names):
        cols[LOG_PREFIX + name] = obs_columns[j]
    return cols


def log_schema(
    layout: FeatureLayout,
    *,
    truth: bool = False,
    serving: bool = False,
    share: bool = False,
    experiment: bool = False,
) -> pa.Schema:
    """The Arrow schema of a log for ``layout``; ``truth`` adds true probabilities, ``serving`` server columns,
    ``share`` the share outcome and its true probability, ``experiment`` the arm and policy id."""
    cols = [pa.field(n, t, nullable=not req) for n, t, req in CORE_COLUMNS]
    cols += [pa.field(c, pa.float32(), nullable=False) for c in feature_columns(layout)]
    if truth:
        cols += [pa.field(n, t) for n, t, _ in TRUTH_COLUMNS]
    if serving:
        cols += [pa.field(n, t) for n, t, _ in SERVING_COLUMNS]
    if share:
        cols += [pa.field(n, t) for n, t, _ in SOCIAL_COLUMNS]
    if experiment:
        cols += [pa.field(n, t) for n, t, _ in EXPERIMENT_COLUMNS]
    meta = {
        "adrl.schema_version": str(SCHEMA_VERSION),
        "adrl.layout_hash": layout.hash,
        "adrl.layout": json.dumps(layout.to_dict()),
    }
    return pa.schema(cols, metadata=meta)


class LogWriter(AbstractContextManager["LogWriter"]):
    """Append record batches to a parquet file that appears under its final name only when closed cleanly.

    Encoding and compression run on one background thread (pyarrow releases the GIL), so a simulator keeps
    computing the next chunk meanwhile; at most two chunks wait in memory.
    """

    def __init__(
        self,
        path: Path | str,
        layout: FeatureLayout,
        *,
        truth: bool = False,
        serving: bool = False,
        share: bool = False,
        experiment: bool = False,
        scenario_hash: str | None = None,
    ) -> None:
        self.path = Path(path)
        schema = log_schema(layout, truth=truth, serving=serving, share=share, experiment=experiment)
        if scenario_hash is not None:
            schema = schema.with_metadata({**(schema.metadata or {}), b"adrl.scenario_hash": scenario_hash.encode()})
        self.schema = schema
        self._atomic = atomic_path(self.path)
        self._tmp = self._atomic.__enter__()
        self._writer = pq.ParquetWriter(self._tmp, schema, compression="lz4", use_dictionary=False)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="adrl-log-writer")
        self._pending: deque[Future[None]] = deque()
        self.n_rows = 0

    def write(self, columns: dict[str, np.ndarray]) -> None:
        """Queue one chunk given as ``{column: array}`` (every schema column present) for writing."""
        missing = [f.name for f in self.schema if f.name not in columns]
        if missing:
            raise DataError(f"log chunk is missing columns {missing[:5]}")
        arrays = [pa.array(np.asarray(columns[f.name]), type=f.type) for f in self.schema]
        batch = pa.RecordBatch.from_arrays(arrays, schema=self.schema)
        while len(self._pending) >= 2:
            self._pending.popleft().result()  # re-raises a failed write here
        self._pending.append(self._pool.submit(self._writer.write_batch, batch))
        self.n_rows += batch.num_rows

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            while self._pending:
                self._pending.popleft().result()
            self._writer.close()
        except BaseException as e:
            self._atomic.__exit__(type(e), e, e.__traceback__)
            raise
        finally:
            self._pool.shutdown(wait=True)
        self._atomic.__exit__(exc_type, exc, tb)  # renames on success, deletes the temp file on error


def log_files(path: Path | str) -> list[Path]:
    """A parquet file, or every ``*.parquet`` file in a directory (sorted), e.g. the server's decision log."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.parquet") if not p.name.startswith("."))
        if not files:
            raise DataError(f"log directory {path} holds no .parquet files")
        return files
    if not path.is_file():
        raise DataError(f"log file {path} does not exist")
    return [path]


def validate_schema(schema: pa.Schema, source: str, *, layout: FeatureLayout | None = None) -> list[str]:
    """Check required columns and dtypes; returns the feature column names (``x_*``) found, in order."""
    duplicated = sorted({n for n in schema.names if schema.names.count(n) > 1})
    if duplicated:
        raise DataError(f"{source}: column(s) {duplicated[:5]} appear more than once; each column must be unique")
    names = set(schema.names)
    missing = [n for n, _, req in CORE_COLUMNS if req and n not in names]
    if missing:
        raise DataError(
            f"{source}: missing required column(s) {missing}; an adrl log needs "
            f"{[n for n, _, r in CORE_COLUMNS if r]} and x_<feature> columns"
        )
    for n, t, _ in CORE_COLUMNS + OPTIONAL_COLUMNS:
        if n in names:
            got = schema.field(n).type
            if not _compatible(got, t):
                raise DataError(f"{source}: column {n!r} has type {got}, expected {t}")
    feats = [n for n in schema.names if n.startswith(LOG_PREFIX)]
    if layout is not None:
        expected = feature_columns(layout)
        if feats != expected:
            extra = sorted(set(feats) - set(expected))
            lacking = sorted(set(expected) - set(feats))
            raise DataError(
                f"{source}: feature columns do not match the scenario's layout "
                f"(missing {lacking[:5]}, unexpected {extra[:5]}); was it logged with another scenario?"
            )
    elif not feats:
        raise DataError(f"{source}: no feature columns (x_<feature>) found")
    for n in feats:
        if not pa.types.is_floating(schema.field(n).type) and not pa.types.is_integer(schema.field(n).type):
            raise DataError(f"{source}: feature column {n!r} has type {schema.field(n).type}, expected float32")
    return feats


def _compatible(got: pa.DataType, want: pa.DataType) -> bool:
    if got == want:
        return True
    if pa.types.is_integer(want):
        return pa.types.is_integer(got)
    if pa.types.is_floating(want):
        return pa.types.is_floating(got) or pa.types.is_integer(got)
    if pa.types.is_string(want):
        return pa.types.is_string(got) or pa.types.is_large_string(got)
    return False


def read_schema(path: Path | str) -> pa.Schema:
    files = log_files(path)
    try:
        return pq.read_schema(files[0])
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"{files[0]}: not a readable parquet file ({e}); is it truncated?") from e


def layout_of(path: Path | str) -> dict[str, Any] | None:
    """The feature layout stored in a log's metadata, if any."""
    meta = read_schema(path).metadata or {}
    raw = meta.get(b"adrl.layout")
    return json.loads(raw) if raw else None


def iter_batches(
    path: Path | str, *, columns: list[str] | None = None, batch_size: int = 262_144
) -> Iterator[pd.DataFrame]:
    """Stream a log (file or directory) as DataFrames of at most ``batch_size`` rows; memory stays bounded."""
    for f in log_files(path):
        try:
            pf = pq.ParquetFile(f)
        except (pa.ArrowInvalid, OSError) as e:
            raise DataError(f"{f}: not a readable parquet file ({e}); is it truncated?") from e
        validate_schema(pf.schema_arrow, str(f))
        for batch in pf.iter_batches(batch_size=batch_size, columns=columns):
            yield batch.to_pandas()


def read_logs(path: Path | str, *, columns: list[str] | None = None) -> pd.DataFrame:
    """Read a whole log (file or directory) into memory after checking its schema and values."""
    frames = list(iter_batches(path, columns=columns))
    if not frames:
        raise DataError(f"{path}: the log is empty")
    df = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    if len(df) == 0:
        raise DataError(f"{path}: the log is empty")
    check_values(df, str(path))
    return df


def check_values(df: pd.DataFrame, source: str) -> None:
    """Reject NaN features/rewards and propensities outside (0, 1]."""
    if "propensity" in df:
        p = df["propensity"].to_numpy()
        bad = ~((p > 0) & (p <= 1))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataError(
                f"{source}: propensity must be in (0, 1], got {float(p[i]):g} at row {i} "
                f"({int(bad.sum())} of {len(p)} rows out of range)"
            )
    if "reward" in df and not np.isfinite(df["reward"].to_numpy()).all():
        raise DataError(f"{source}: reward has NaN or infinite values")
    feats = [c for c in df.columns if c.startswith(LOG_PREFIX)]
    if feats:
        x = df[feats].to_numpy(dtype=np.float64)
        if not np.isfinite(x).all():
            col = feats[int(np.argwhere(~np.isfinite(x))[0, 1])]
            raise DataError(f"{source}: feature column {col!r} has NaN or infinite values")


def check_ranges(df: pd.DataFrame, layout: FeatureLayout, source: str) -> None:
    """Reject actions, hours and categorical features (segment, hour) outside the layout's market.

    Every reader of a log for a market calls this before indexing anything by these values.
    """
    checks = [(f.name, f.cardinality) for f in layout.action]
    checks += [("hour", HOURS_PER_DAY)]
    checks += [(LOG_PREFIX + f.name, f.cardinality) for f in layout.obs if f.kind == "categorical"]
    for column, size in checks:
        if column not in df:
            continue
        v = df[column].to_numpy()
        bad = ~((v >= 0) & (v < size) & (v == np.floor(v)))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataError(
                f"{source}: {column} {float(v[i]):g} at row {i} is outside 0..{size - 1} "
                f"({int(bad.sum())} of {len(v)} rows); was it logged with another scenario?"
            )


def concat_logs(paths: list[Path | str], out: Path | str, *, batch_size: int = 262_144) -> int:
    """Write the logs of ``paths`` one after another to ``out`` (atomically, streamed); returns the rows written.

    Each log's episode and user ids are shifted past the previous logs' largest, so a user of one log is never
    merged with a user of another. The logs must share one schema (columns, types and feature layout); the first
    one's metadata is kept. ``out`` may be one of ``paths``: it is replaced only once the union is complete.
    """
    files = [f for p in paths for f in log_files(p)]
    if not files:
        raise DataError("concat_logs needs at least one log")
    schemas = []
    for f in files:
        schemas.append(read_schema(f))
        validate_schema(schemas[-1], str(f))
    first = schemas[0]
    for f, s in zip(files[1:], schemas[1:], strict=True):
        meta, want = s.metadata or {}, first.metadata or {}
        if not s.remove_metadata().equals(first.remove_metadata()) or (
            meta.get(b"adrl.layout_hash") != want.get(b"adrl.layout_hash")
        ):
            raise DataError(f"{f}: its columns or feature layout differ from {files[0]}'s; only logs of one "
                            "scenario and one logger schema can be joined")  # fmt: skip
    rows, offset = 0, 0
    with atomic_path(out) as tmp:
        writer = pq.ParquetWriter(tmp, first, compression="lz4", use_dictionary=False)
        try:
            for f in files:
                top = -1
                for batch in pq.ParquetFile(f).iter_batches(batch_size=batch_size):
                    cols = {}
                    for name in ("episode_id", "user_id"):
                        ids = batch.column(name).to_numpy(zero_copy_only=False)
                        if ids.size and ids.min() < 0:
                            raise DataError(f"{f}: {name} must be >= 0 to be renumbered, found {int(ids.min())}")
                        top = max(top, int(ids.max()) if ids.size else -1)
                        cols[name] = pa.array(ids + offset, type=pa.int64())
                    arrays = [cols.get(n, batch.column(n)) for n in first.names]
                    writer.write_batch(pa.RecordBatch.from_arrays(arrays, schema=first))
                    rows += batch.num_rows
                offset += top + 1
        finally:
            writer.close()
    return rows
