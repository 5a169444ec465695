"""Logged data for off-policy evaluation, from adrl logs (simulated or the server's decision log) or other sources.

:class:`LoggedData` holds what every estimator needs, one row per logged decision: observation features, the flat
logged action, the logging propensity, the reward, the episode and step, plus what a reward model should know
about the feature and action spaces. The target policy enters separately, as ``probs(obs) -> (n, n_actions)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from adrl.actions import flat_index
from adrl.errors import DataError, FeatureMismatch
from adrl.features import LOG_PREFIX, FeatureLayout
from adrl.logs import check_ranges, feature_columns, iter_batches, read_logs, read_schema
from adrl.ope.validation import check_sequential_inputs

TargetProbs = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class LoggedData:
    """One row per logged decision.

    Attributes:
        obs: observation features, shape (n, obs_dim), float32.
        action: flat logged action, shape (n,), int64 in 0..n_actions-1.
        propensity: π_b(a|x) of the logged action, shape (n,).
        reward: observed reward, shape (n,).
        episode_id: episode (user-day) of each row, shape (n,).
        step: decision index within the episode, shape (n,).
        n_actions: size of the flat action space.
        categorical: ``(column, cardinality)`` of categorical observation columns (for reward models).
        action_features: (n_actions, m) descriptors of each action for reward models, or None.
        zero_reward: ``obs -> (n, n_actions)`` bool, actions whose reward is known to be 0 (None: none).
        source: where the rows came from, for messages.
    """

    obs: np.ndarray
    action: np.ndarray
    propensity: np.ndarray
    reward: np.ndarray
    episode_id: np.ndarray
    step: np.ndarray
    n_actions: int
    categorical: tuple[tuple[int, int], ...] = ()
    action_features: np.ndarray | None = None
    zero_reward: Callable[[np.ndarray], np.ndarray] | None = None
    source: str = "logs"

    def __post_init__(self) -> None:
        n = self.reward.shape[0]
        if self.obs.ndim != 2 or self.obs.shape[0] != n:
            raise DataError(f"{self.source}: obs has shape {self.obs.shape}, expected ({n}, obs_dim)")
        if self.action.shape != (n,):
            raise DataError(f"{self.source}: action has shape {self.action.shape}, expected ({n},)")
        if n and (self.action.min() < 0 or self.action.max() >= self.n_actions):
            i = int(np.flatnonzero((self.action < 0) | (self.action >= self.n_actions))[0])
            raise DataError(
                f"{self.source}: action {int(self.action[i])} at row {i} is outside 0..{self.n_actions - 1}"
            )
        check_sequential_inputs(self.episode_id, self.step, self.reward, self.propensity, np.zeros(n))
        if not np.isfinite(self.obs).all():
            row, col = (int(v) for v in np.argwhere(~np.isfinite(self.obs))[0])
            raise DataError(f"{self.source}: feature {col} is {float(self.obs[row, col]):g} at row {row}")

    @property
    def n(self) -> int:
        return int(self.reward.shape[0])

    @property
    def n_episodes(self) -> int:
        return int(np.unique(self.episode_id).size)


def adrl_categorical(layout: FeatureLayout) -> tuple[tuple[int, int], ...]:
    """Categorical observation columns of an adrl layout that a reward model should one-hot (the segment)."""
    return ((layout.index("segment"), layout.obs[layout.index("segment")].cardinality),)


def adrl_action_features(layout: FeatureLayout) -> np.ndarray:
    """One-hots of (delay, slot, creative) for every flat action, shape (n_actions, D + S + C)."""
    nvec = (len(layout.delays), len(layout.slots), len(layout.creatives))
    grid = np.stack(np.meshgrid(*(np.arange(k) for k in nvec), indexing="ij"), axis=-1).reshape(-1, 3)
    out = np.zeros((grid.shape[0], sum(nvec)))
    rows = np.arange(grid.shape[0])
    out[rows, grid[:, 0]] = 1.0
    out[rows, nvec[0] + grid[:, 1]] = 1.0
    out[rows, nvec[0] + nvec[1] + grid[:, 2]] = 1.0
    return out


def overrun_mask(layout: FeatureLayout) -> Callable[[np.ndarray], np.ndarray]:
    """``obs -> (n, n_actions)`` True where the action's delay runs past the day (nothing is shown, reward 0)."""
    col = layout.index("day_progress")
    delays = np.asarray(layout.delays)
    per_delay = len(layout.slots) * len(layout.creatives)

    def zero(obs: np.ndarray) -> np.ndarray:
        epoch = np.rint(obs[:, col].astype(np.float64) * layout.horizon).astype(np.int64)
        overrun = epoch[:, None] + delays[None, :] >= layout.horizon  # (n, D)
        return np.repeat(overrun, per_delay, axis=1)

    return zero


def from_adrl_frame(df: pd.DataFrame, layout: FeatureLayout, *, source: str = "logs") -> LoggedData:
    """:class:`LoggedData` of an adrl log DataFrame whose features follow ``layout``."""
    cols = feature_columns(layout)
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise FeatureMismatch(
            f"{source}: the log lacks feature columns {missing[:5]} of the policy's layout; "
            "was it logged with another scenario?"
        )
    check_ranges(df, layout, source)
    nvec = (len(layout.delays), len(layout.slots), len(layout.creatives))
    act = df[["delay", "slot", "creative"]].to_numpy(dtype=np.int64)
    return LoggedData(
        obs=df[cols].to_numpy(dtype=np.float32),
        action=flat_index(act, nvec),
        propensity=df["propensity"].to_numpy(dtype=np.float64),
        reward=df["reward"].to_numpy(dtype=np.float64),
        episode_id=df["episode_id"].to_numpy(dtype=np.int64),
        step=df["step"].to_numpy(dtype=np.int64),
        n_actions=int(np.prod(nvec)),
        categorical=adrl_categorical(layout),
        action_features=adrl_action_features(layout),
        zero_reward=overrun_mask(layout),
        source=source,
    )


INTERFERENCE_NOTE = (
    "the logs carry shares ({shares:,} of {rows:,} decisions were shared): users on a social graph interfere (a "
    "share changes friends' clicks and rewards), but every estimator here treats users as independent, so the "
    "estimates leave out what the target policy's own shares would do; benchmarks/viral.py measures the error"
)


def interference_note(path: Path | str) -> str | None:
    """The no-interference warning for a log with shares (a ``share`` column with a True), else None."""
    if "share" not in read_schema(path).names:
        return None
    shares = rows = 0
    for df in iter_batches(path, columns=["share"]):
        shares += int(df["share"].to_numpy(dtype=bool).sum())
        rows += len(df)
    return INTERFERENCE_NOTE.format(shares=shares, rows=rows) if shares else None


def read_adrl_logs(path: Path | str, layout: FeatureLayout) -> LoggedData:
    """Read an adrl log (file or directory, e.g. the server's decision log) for a policy of ``layout``.

    Raises:
        DataError: unreadable file, missing columns, or invalid values (naming the row).
        FeatureMismatch: the log's feature layout differs from ``layout``.
    """
    meta = read_schema(path).metadata or {}
    logged_hash = meta.get(b"adrl.layout_hash")
    if logged_hash is not None and logged_hash.decode() != layout.hash:
        raise FeatureMismatch(
            f"{path}: logged with feature layout {logged_hash.decode()}, the policy expects {layout.hash}; "
            "was the policy trained on another scenario?"
        )
    wanted = ["episode_id", "step", "delay", "slot", "creative", "propensity", "reward"]
    df = read_logs(path, columns=wanted + [LOG_PREFIX + n for n in layout.obs_names])
    return from_adrl_frame(df, layout, source=str(path))
