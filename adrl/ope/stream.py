"""Return-per-user-day estimates of large logs in one streamed pass (``adrl ope`` on logs past memory).

Memory grows with the number of episodes only through a few per-episode arrays, never with the decisions:

* PDIS, WIS and the logging policy's own return are functions of per-episode columns ``[ρ_t r_t, ρ_t]`` (t < H).
  The pass keeps only their running mean and centred scatter (Chan's merge), from which the estimates and their
  influence-function (delta-method) intervals follow exactly; no row is resampled.
* The model-based estimate rolls the target out from the logged starts: the first observation of every episode
  whose keyed hash falls in the start sample (all of them by default).
* The estimators that need whole episodes' rows (WDR, FQE, model-WDR, MAGIC, MIS, MDR and the per-decision ones)
  run on a sample of episodes chosen by another keyed hash of the episode id.

The sample keys depend on the episode id and the seed only, so every shard of a log (see :func:`scan`'s
``files``) selects the same episodes however the log is split, and the merged state of the shards gives the same
estimates as one pass over the whole log. Rows of one episode must sit in one file, in any order; the pass holds
back an episode's rows until it has read the episode's last one (found by a first pass over the episode ids), so
memory holds the episodes open at a time, not the log. It checks that no episode spans two files.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute
import pyarrow.parquet as pq
from threadpoolctl import threadpool_limits

from adrl.actions import flat_index
from adrl.errors import ConfigError, DataError, FeatureMismatch
from adrl.features import FeatureLayout
from adrl.logs import check_ranges, check_values, feature_columns, log_files, read_schema, validate_schema
from adrl.ope.data import LoggedData, TargetProbs, adrl_action_features, adrl_categorical, overrun_mask
from adrl.ope.estimate import Estimate
from adrl.ope.model_based import ModelBased, Simulators
from adrl.ope.sequential import Episodes
from adrl.ope.validation import check_sequential_inputs

# computed exactly from the streamed moments; every other estimator runs on the sample of episodes
STREAMED = ("pdis", "wis", "model")
LOG_COLUMNS = ["episode_id", "step", "delay", "slot", "creative", "propensity", "reward"]
_MASK = np.uint64(0xFFFFFFFFFFFFFFFF)


def unit_key(episode_id: np.ndarray, seed: int, salt: int) -> np.ndarray:
    """A uniform number in [0, 1) per episode id, from a keyed splitmix64 hash (the same in every shard)."""
    with np.errstate(over="ignore"):
        key = (seed * 0x9E3779B97F4A7C15 + salt * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        z = episode_id.astype(np.uint64) ^ np.uint64(key)
        z = (z + np.uint64(0x9E3779B97F4A7C15)) & _MASK
        z = ((z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK
        z = ((z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)


@dataclass
class Moments:
    """Count, mean and centred scatter Σ (x − mean)(x − mean)ᵀ of per-episode column vectors, mergeable."""

    k: int
    n: int = 0
    mean: np.ndarray = field(default_factory=lambda: np.zeros(0))
    scatter: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))

    def __post_init__(self) -> None:
        if self.mean.size == 0:
            self.mean = np.zeros(self.k)
            self.scatter = np.zeros((self.k, self.k))

    def add(self, x: np.ndarray) -> None:
        if x.shape[0] == 0:
            return
        mean = x.mean(axis=0)
        centred = x - mean
        with threadpool_limits(1, "blas"):  # a small Gram matrix: BLAS threads only contend (10x slower, measured)
            scatter = np.dot(centred.T, centred)
        self.merge(Moments(self.k, x.shape[0], mean, scatter))

    def merge(self, other: Moments) -> None:
        if other.n == 0:
            return
        n = self.n + other.n
        delta = other.mean - self.mean
        self.scatter = self.scatter + other.scatter + np.outer(delta, delta) * (self.n * other.n / n)
        self.mean = self.mean + delta * (other.n / n)
        self.n = n

    def sums(self) -> np.ndarray:
        return self.mean * self.n

    def cov(self) -> np.ndarray:
        return self.scatter / (self.n - 1) if self.n > 1 else np.full((self.k, self.k), math.inf)


@dataclass
class PolicyState:
    """What the pass keeps per target policy: the moments of ``[ρ_t r_t, ρ_t]`` and the final weights' extremes."""

    moments: Moments
    max_weight: float = 0.0


@dataclass
class ScanState:
    """The mergeable result of scanning one shard (or the whole log)."""

    horizon: int
    policies: dict[str, PolicyState]
    logged: Moments  # of each episode's discounted logged return
    n_rows: int = 0
    episode_ids: list[np.ndarray] = field(default_factory=list)
    start_obs: list[np.ndarray] = field(default_factory=list)
    start_ids: list[np.ndarray] = field(default_factory=list)
    sample: list[pd.DataFrame] = field(default_factory=list)

    def merge(self, other: ScanState) -> None:
        if other.horizon != self.horizon or other.policies.keys() != self.policies.keys():
            raise ValueError("scan states of different evaluations cannot be merged")
        for k, s in self.policies.items():
            o = other.policies[k]
            s.moments.merge(o.moments)
            s.max_weight = max(s.max_weight, o.max_weight)
        self.logged.merge(other.logged)
        self.n_rows += other.n_rows
        self.episode_ids += other.episode_ids
        self.start_obs += other.start_obs
        self.start_ids += other.start_ids
        self.sample += other.sample


@dataclass(frozen=True)
class ScanConfig:
    """Settings of the pass: the sample fractions, the discount and the batch size.

    Attributes:
        start_fraction: share of episodes whose start the model-based estimate rolls out from.
        sample_fraction: share of episodes the row-level estimators see.
        horizon: the most decisions an episode may have (columns of the moments).
    """

    layout: FeatureLayout
    horizon: int
    seed: int = 0
    gamma: float = 1.0
    start_fraction: float = 1.0
    sample_fraction: float = 0.0
    batch_rows: int = 262_144
    probs_chunk: int = 32_768


def _frame_to_rows(df: pd.DataFrame, layout: FeatureLayout) -> tuple[np.ndarray, ...]:
    nvec = (len(layout.delays), len(layout.slots), len(layout.creatives))
    act = flat_index(df[["delay", "slot", "creative"]].to_numpy(dtype=np.int64), nvec)
    return (
        df["episode_id"].to_numpy(dtype=np.int64), df["step"].to_numpy(dtype=np.int64), act,
        df["propensity"].to_numpy(dtype=np.float64), df["reward"].to_numpy(dtype=np.float64),
        df[feature_columns(layout)].to_numpy(dtype=np.float32),
    )  # fmt: skip


def _target_prob(probs: TargetProbs, obs: np.ndarray, action: np.ndarray, n_actions: int, chunk: int) -> np.ndarray:
    out = np.empty(obs.shape[0])
    for lo in range(0, obs.shape[0], chunk):
        hi = min(obs.shape[0], lo + chunk)
        p = np.asarray(probs(obs[lo:hi]), dtype=np.float64)
        if p.shape != (hi - lo, n_actions):
            raise ConfigError(
                f"target policy returned probabilities of shape {p.shape}, expected ({hi - lo}, {n_actions}); "
                "does it belong to the logs' scenario?"
            )
        out[lo:hi] = p[np.arange(hi - lo), action[lo:hi]]
    return out


def _scan_chunk(df: pd.DataFrame, targets: Mapping[str, TargetProbs], cfg: ScanConfig, state: ScanState) -> None:
    """Fold the complete episodes of ``df`` into ``state``."""
    check_values(df, "logs")
    check_ranges(df, cfg.layout, "logs")
    eid, step, action, prop, reward, obs = _frame_to_rows(df, cfg.layout)
    check_sequential_inputs(eid, step, reward, prop, np.zeros(eid.size))
    ep = Episodes.of(eid, step)
    if ep.horizon > cfg.horizon:
        raise DataError(f"an episode has {ep.horizon} decisions, more than the {cfg.horizon} a day allows")
    h = cfg.horizon
    disc = cfg.gamma ** np.arange(h)
    r_grid = np.zeros((ep.n_episodes, h))
    r_grid[ep.episode, ep.position] = reward
    state.logged.add((r_grid * disc).sum(axis=1, keepdims=True))
    n_actions = int(np.prod([len(cfg.layout.delays), len(cfg.layout.slots), len(cfg.layout.creatives)]))
    for name, probs in targets.items():
        w = np.ones((ep.n_episodes, h))
        w[ep.episode, ep.position] = _target_prob(probs, obs, action, n_actions, cfg.probs_chunk) / prop
        rho = np.cumprod(w, axis=1)
        s = state.policies[name]
        s.moments.add(np.concatenate([rho * r_grid, rho], axis=1))
        s.max_weight = max(s.max_weight, float(rho[:, -1].max()))
    ids = np.unique(eid)  # Episodes.of numbers episodes in this order
    state.episode_ids.append(ids)
    state.n_rows += eid.size
    first = ep.first_rows()
    pick = unit_key(ids, cfg.seed, 1) < cfg.start_fraction
    state.start_obs.append(obs[first[pick]])
    state.start_ids.append(ids[pick])
    if cfg.sample_fraction > 0:
        keep = unit_key(eid, cfg.seed, 2) < cfg.sample_fraction
        if keep.any():
            state.sample.append(df.iloc[np.flatnonzero(keep)].reset_index(drop=True))


def new_state(cfg: ScanConfig, names: Iterable[str]) -> ScanState:
    k = 2 * cfg.horizon
    return ScanState(cfg.horizon, {n: PolicyState(Moments(k)) for n in names}, Moments(1))


def survey(pf: pq.ParquetFile, batch_rows: int = 1 << 20) -> tuple[np.ndarray, np.ndarray]:
    """The file's episode ids (sorted, unique) and the row of each one's last decision, from the episode-id column
    alone (memory: two per-episode arrays, not the rows)."""
    uniq = np.zeros(0, dtype=np.int64)
    last = np.zeros(0, dtype=np.int64)
    offset = 0
    for batch in pf.iter_batches(batch_size=batch_rows, columns=["episode_id"]):
        eid = batch.column(0).to_numpy().astype(np.int64, copy=False)
        if eid.size == 0:
            continue
        u, from_end = np.unique(eid[::-1], return_index=True)
        ids = np.concatenate([uniq, u])
        rows = np.concatenate([last, offset + eid.size - 1 - from_end])
        order = np.lexsort((rows, ids))
        ids, rows = ids[order], rows[order]
        keep = np.concatenate([ids[1:] != ids[:-1], [True]])  # the latest row of each id
        uniq, last = ids[keep], rows[keep]
        offset += eid.size
    return uniq, last


def _scan_table(table: pa.Table, targets: Mapping[str, TargetProbs], cfg: ScanConfig, state: ScanState) -> None:
    """Fold a table holding whole episodes (in any row order) into ``state``, about ``batch_rows`` rows at a time
    (sorted in Arrow, converted to pandas slice by slice, so memory stays near two copies of the table)."""
    table = table.sort_by([("episode_id", "ascending"), ("step", "ascending")])
    eid = table.column("episode_id").to_numpy()
    bounds = np.flatnonzero(np.concatenate([[True], eid[1:] != eid[:-1]]))  # first row of each episode
    at = np.searchsorted(bounds, np.arange(cfg.batch_rows, eid.size, cfg.batch_rows))  # next start past each cut
    edges = np.unique(np.concatenate([[0], bounds[at[at < bounds.size]], [eid.size]]))
    for lo, hi in itertools.pairwise(edges):
        _scan_chunk(table.slice(int(lo), int(hi - lo)).to_pandas(), targets, cfg, state)


def _scan_file(
    pf: pq.ParquetFile, columns: list[str], targets: Mapping[str, TargetProbs], cfg: ScanConfig, state: ScanState,
    progress: Any,
) -> None:  # fmt: skip
    """Stream the file, holding back the rows of episodes whose last decision is still ahead: an episode is folded
    in once the pass has read its last row, so memory holds only the episodes open at a time (one chunk of users
    of ``adrl simulate``, the concurrent users of a server log)."""
    uniq, last = survey(pf)
    held: list[pa.Table] = []  # row groups read, with the rows of episodes still open
    held_last: list[np.ndarray] = []  # each held row's episode's last row
    end = 0
    # row group by row group: pyarrow's batch iterator keeps growing buffers over a whole file (measured)
    batches = (pf.read_row_group(i, columns=columns) for i in range(pf.num_row_groups))
    for batch in itertools.chain(batches, [None]):
        if batch is not None:
            end += batch.num_rows
            held.append(batch)
            held_last.append(last[np.searchsorted(uniq, batch.column("episode_id").to_numpy())])
        rows_last = np.concatenate(held_last) if held_last else np.zeros(0, dtype=np.int64)
        done = rows_last < end
        # fold in once enough rows are ready (a simulate chunk ends, or the file does), not batch by batch
        if not done.any() or (batch is not None and done.sum() < cfg.batch_rows):
            continue
        table = pa.concat_tables(held)
        if done.all():
            ready, held, held_last = table, [], []
        else:
            mask = pa.array(done)
            ready = table.filter(mask)
            held, held_last = [table.filter(pa.compute.invert(mask))], [rows_last[~done]]
        _scan_table(ready, targets, cfg, state)
        if progress is not None:
            progress(ready.num_rows)
        del ready, table
        pa.default_memory_pool().release_unused()  # hand freed buffers back, so the peak is one chunk's
    if held and sum(t.num_rows for t in held):  # cannot happen: every episode's last row was read
        raise DataError(f"{pf.metadata}: rows were left unread")


def scan(
    files: Sequence[Path], targets: Mapping[str, TargetProbs], cfg: ScanConfig, *, progress: Any = None
) -> ScanState:
    """One pass over ``files`` (parquet; rows of an episode in one file, in any order) for every target at once.

    ``progress(rows)`` is called as rows are folded in.
    """
    columns = LOG_COLUMNS + feature_columns(cfg.layout)
    state = new_state(cfg, targets)
    for f in files:
        try:
            pf = pq.ParquetFile(f)
        except (OSError, ValueError) as e:
            raise DataError(f"{f}: not a readable parquet file ({e}); is it truncated?") from e
        validate_schema(pf.schema_arrow, str(f))
        missing = [c for c in columns if c not in pf.schema_arrow.names]
        if missing:
            raise FeatureMismatch(f"{f}: the log lacks columns {missing[:5]} of the policy's layout")
        _scan_file(pf, columns, targets, cfg, state, progress)
    return state


def check_grouped(state: ScanState) -> None:
    """Each episode's rows must have come together: an id seen in two chunks means they did not."""
    ids = np.concatenate(state.episode_ids) if state.episode_ids else np.zeros(0, dtype=np.int64)
    uniq, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise DataError(
            f"episode {int(uniq[counts > 1][0])} has rows in more than one place of the log: the streamed pass "
            "needs each episode's rows in one file; evaluate this log in memory (--no-stream)"
        )


def _z(alpha: float) -> float:
    return NormalDist().inv_cdf(1.0 - alpha / 2.0)


def _normal(value: float, var: float, n: int, alpha: float) -> tuple[float, float, float]:
    se = math.sqrt(max(var, 0.0) / n) if n > 1 else math.inf
    return value, value - _z(alpha) * se, value + _z(alpha) * se


def _diagnostics(m: Moments, max_weight: float) -> tuple[float, float]:
    mean, var_sum = m.mean[-1], m.scatter[-1, -1]  # the last column is each episode's final weight
    sum_w, sum_sq = mean * m.n, var_sum + m.n * mean**2
    return (sum_w**2 / sum_sq if sum_sq > 0 else 0.0), max_weight


def pdis_estimate(s: PolicyState, h: int, gamma: float, alpha: float) -> Estimate:
    """1/N Σ_i Σ_t γ^t ρ_{i,t} r_{i,t} with the normal interval of its per-episode terms."""
    m = s.moments
    a = np.concatenate([gamma ** np.arange(h), np.zeros(h)])
    value, lower, upper = _normal(float(a @ m.mean), float(a @ m.cov() @ a), m.n, alpha)
    ess, max_w = _diagnostics(m, s.max_weight)
    return Estimate(value, lower, upper, m.n, ess, max_w, "normal")


def wis_estimate(s: PolicyState, h: int, gamma: float, alpha: float) -> Estimate:
    """Σ_t γ^t Σ_i ρ_{i,t} r_{i,t} / Σ_i ρ_{i,t} with its delta-method interval (as WIS with ``n_boot=0``)."""
    m = s.moments
    disc = gamma ** np.arange(h)
    num, den = m.mean[:h], m.mean[h:]
    safe = np.where(den > 0, den, 1.0)
    theta = np.where(den > 0, num / safe, 0.0)
    a = np.concatenate([disc / safe, -disc * theta / safe])
    value, lower, upper = _normal(float((theta * disc).sum()), float(a @ m.cov() @ a), m.n, alpha)
    ess, max_w = _diagnostics(m, s.max_weight)
    return Estimate(value, lower, upper, m.n, ess, max_w, "normal")


def logged_estimate(state: ScanState, alpha: float) -> Estimate:
    m = state.logged
    value, lower, upper = _normal(float(m.mean[0]), float(m.cov()[0, 0]), m.n, alpha)
    return Estimate(value, lower, upper, m.n, interval="normal")


def starts_data(state: ScanState, layout: FeatureLayout) -> LoggedData:
    """The sampled starts as a one-decision-per-episode :class:`LoggedData` (what the model-based estimate reads)."""
    ids = np.concatenate(state.start_ids) if state.start_ids else np.zeros(0, dtype=np.int64)
    order = np.argsort(ids, kind="stable")  # episode-id order, however the shards were split
    obs = np.concatenate(state.start_obs)[order] if state.start_obs else np.zeros((0, len(layout.obs_names)))
    n = ids.size
    n_actions = len(layout.delays) * len(layout.slots) * len(layout.creatives)
    return LoggedData(
        obs=obs.astype(np.float32), action=np.zeros(n, dtype=np.int64), propensity=np.ones(n), reward=np.zeros(n),
        episode_id=ids[order], step=np.zeros(n, dtype=np.int64), n_actions=n_actions, source="logged starts",
    )  # fmt: skip


def sample_data(state: ScanState, layout: FeatureLayout) -> LoggedData | None:
    """The sampled episodes' rows, in (episode, step) order, or None when none were sampled."""
    if not state.sample:
        return None
    df = pd.concat(state.sample, ignore_index=True).sort_values(["episode_id", "step"], kind="stable")
    eid, step, action, prop, reward, obs = _frame_to_rows(df, layout)
    nvec = (len(layout.delays), len(layout.slots), len(layout.creatives))
    return LoggedData(
        obs=obs, action=action, propensity=prop, reward=reward, episode_id=eid, step=step,
        n_actions=int(np.prod(nvec)), categorical=adrl_categorical(layout),
        action_features=adrl_action_features(layout), zero_reward=overrun_mask(layout), source="sampled episodes",
    )  # fmt: skip


@dataclass(frozen=True)
class StreamResult:
    """Per target: estimates in the order asked, plus the pass's counts."""

    estimates: dict[str, dict[str, Estimate]]
    logged: Estimate
    n_rows: int
    n_episodes: int
    n_starts: int
    n_sample_episodes: int
    seconds_by_policy: dict[str, float]


def finish(
    state: ScanState,
    targets: Mapping[str, TargetProbs],
    estimators: Sequence[str],
    cfg: ScanConfig,
    *,
    sim: Simulators | None,
    q: Any = None,
    rng_for: Mapping[str, np.random.Generator],
    alpha: float,
    n_boot: int,
    n_folds: int,
) -> StreamResult:
    """The estimates of every target from a (merged) scan state."""
    import time

    from adrl.ope.run import evaluate

    check_grouped(state)
    if state.n_rows == 0:
        raise DataError("the log is empty")
    sample = sample_data(state, cfg.layout)
    starts = starts_data(state, cfg.layout) if "model" in estimators else None
    on_sample = [k for k in estimators if k not in STREAMED]
    if on_sample and sample is None:
        raise ConfigError(
            f"estimators {on_sample} run on a sample of episodes, and the sample is empty: raise the sample size"
        )
    out: dict[str, dict[str, Estimate]] = {}
    seconds: dict[str, float] = {}
    for name, probs in targets.items():
        t0 = time.perf_counter()
        s = state.policies[name]
        model_rng, sample_rng = rng_for[name].spawn(2)
        est: dict[str, Estimate] = {}
        if "pdis" in estimators:
            est["pdis"] = pdis_estimate(s, cfg.horizon, cfg.gamma, alpha)
        if "wis" in estimators:
            est["wis"] = wis_estimate(s, cfg.horizon, cfg.gamma, alpha)
        if starts is not None:
            if sim is None:
                raise ConfigError("the model-based estimate rolls the policy out in a behavior model; pass one")
            est["model"] = ModelBased(gamma=cfg.gamma).estimate(starts, probs, sim, rng=model_rng, alpha=alpha)
        if on_sample and sample is not None:
            res = evaluate(sample, probs, on_sample, rng=sample_rng, q=q, n_folds=n_folds, alpha=alpha,
                           n_boot=n_boot, gamma=cfg.gamma, sim=sim)  # fmt: skip
            est.update(res.estimates)
        out[name] = {k: est[k] for k in estimators}
        seconds[name] = time.perf_counter() - t0
    return StreamResult(
        out, logged_estimate(state, alpha), state.n_rows, state.logged.n,
        0 if starts is None else starts.n, 0 if sample is None else sample.n_episodes, seconds,
    )  # fmt: skip


def count_rows(path: Path | str) -> int:
    """Decisions in a log from the parquet footers alone."""
    return sum(pq.ParquetFile(f).metadata.num_rows for f in log_files(path))


def count_episodes(files: Sequence[Path]) -> int:
    """Distinct episode ids in ``files``, streamed over the episode-id column."""
    return int(np.unique(np.concatenate([survey(pq.ParquetFile(f))[0] for f in files])).size)


def evaluate_log(
    path: Path | str,
    layout: FeatureLayout,
    targets: Mapping[str, TargetProbs],
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
    progress: Any = None,
) -> StreamResult:
    """Every target's estimates from one streamed pass over the log at ``path`` (module docstring).

    ``max_starts`` (None: all) and ``sample_episodes`` set the expected sizes of the start sample and of the sample
    of episodes the row-level estimators see.
    """
    if max_starts is not None and max_starts < 2:
        raise ConfigError(f"max_starts must be >= 2 or None, got {max_starts}")
    if sample_episodes < 0:
        raise ConfigError(f"sample_episodes must be >= 0, got {sample_episodes}")
    check_layout(path, layout)
    files = log_files(path)
    n_episodes = count_episodes(files)
    if n_episodes == 0:
        raise DataError(f"{path}: the log is empty")
    cfg = ScanConfig(
        layout, horizon=2 * layout.horizon, seed=seed, gamma=gamma,
        start_fraction=1.0 if max_starts is None else min(1.0, max_starts / n_episodes),
        sample_fraction=min(1.0, sample_episodes / n_episodes),
    )  # fmt: skip
    state = scan(files, targets, cfg, progress=progress)
    rngs = {name: np.random.default_rng([seed, k]) for k, name in enumerate(targets)}
    return finish(state, targets, estimators, cfg, sim=sim, q=q, rng_for=rngs, alpha=alpha, n_boot=n_boot,
                  n_folds=n_folds)  # fmt: skip


def check_layout(path: Path | str, layout: FeatureLayout) -> None:
    meta = read_schema(path).metadata or {}
    logged_hash = meta.get(b"adrl.layout_hash")
    if logged_hash is not None and logged_hash.decode() != layout.hash:
        raise FeatureMismatch(
            f"{path}: logged with feature layout {logged_hash.decode()}, the policy expects {layout.hash}; "
            "was the policy trained on another scenario?"
        )


__all__ = [
    "STREAMED",
    "Moments",
    "ScanConfig",
    "ScanState",
    "StreamResult",
    "check_grouped",
    "count_episodes",
    "count_rows",
    "evaluate_log",
    "finish",
    "scan",
    "survey",
    "unit_key",
]
