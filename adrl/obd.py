"""Reader for the Open Bandit Dataset (OBD) layout, with checked values, and a generator of OBD-format fixtures.

Layout (see ``../shared/data/obd/SOURCE.md``): ``<root>/<behavior_policy>/<campaign>/<campaign>.csv`` with one row
per impression (``timestamp``, ``item_id``, ``position`` 1..3, ``click``, ``propensity_score``,
``user_feature_0..3`` hashed categoricals, ``user-item_affinity_<item>`` for every item) and ``item_context.csv``
beside it (``item_id``, ``item_feature_0`` float, ``item_feature_1..3`` hashed categoricals).

>>> data = read_obd("../shared/data/obd", behavior_policy="random", campaign="all")  # doctest: +SKIP
>>> data.n_items, data.action[:3], data.position[:3], data.reward.mean()  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from adrl.errors import DataError

BEHAVIOR_POLICIES = ("random", "bts")
CAMPAIGNS = ("all", "men", "women")
REQUIRED_COLUMNS = ("timestamp", "item_id", "position", "click", "propensity_score")
USER_FEATURE_PREFIX = "user_feature_"
AFFINITY_PREFIX = "user-item_affinity_"
ITEM_CONTEXT = "item_context.csv"


@dataclass(frozen=True)
class ObdData:
    """One (behavior policy, campaign) of OBD, rows in time order.

    Attributes:
        frame: one row per impression, sorted by ``timestamp`` (tz-aware UTC), raw OBD columns.
        item_context: one row per item, indexed 0..n_items-1 by ``item_id``.
        n_items: number of items (actions).
        positions: the raw position values present in the layout, e.g. ``(1, 2, 3)``.
        behavior_policy, campaign: which part of OBD this is.
        source: the impressions CSV it was read from.
    """

    frame: pd.DataFrame
    item_context: pd.DataFrame
    n_items: int
    positions: tuple[int, ...]
    behavior_policy: str
    campaign: str
    source: Path

    @property
    def n_rounds(self) -> int:
        return len(self.frame)

    @property
    def action(self) -> np.ndarray:
        """Item shown, int64 (n,)."""
        return self.frame["item_id"].to_numpy(dtype=np.int64)

    @property
    def position(self) -> np.ndarray:
        """Slot as a 0-based index into ``positions``, int64 (n,)."""
        return np.searchsorted(np.asarray(self.positions), self.frame["position"].to_numpy()).astype(np.int64)

    @property
    def reward(self) -> np.ndarray:
        """Click, int64 (n,)."""
        return self.frame["click"].to_numpy(dtype=np.int64)

    @property
    def pscore(self) -> np.ndarray:
        """Propensity of the logged (item, position) under the behavior policy, float64 (n,)."""
        return self.frame["propensity_score"].to_numpy(dtype=np.float64)

    @property
    def hour(self) -> np.ndarray:
        """Hour of day (UTC) of each impression, int64 (n,)."""
        return self.frame["timestamp"].dt.hour.to_numpy(dtype=np.int64)

    @property
    def user_feature_names(self) -> list[str]:
        return [c for c in self.frame.columns if c.startswith(USER_FEATURE_PREFIX)]

    @property
    def affinity_names(self) -> list[str]:
        return [f"{AFFINITY_PREFIX}{i}" for i in range(self.n_items)]

    def user_features(self) -> np.ndarray:
        """Hashed categorical user features as strings, (n, n_user_features)."""
        return self.frame[self.user_feature_names].astype(str).to_numpy()

    def affinity(self) -> np.ndarray:
        """User-item affinities, float64 (n, n_items)."""
        return self.frame[self.affinity_names].to_numpy(dtype=np.float64)

    def context(self) -> np.ndarray:
        """Numeric user context: one-hot user features (categories in sorted order) then affinities."""
        one_hot = pd.get_dummies(self.frame[self.user_feature_names].astype(str), dtype=np.float64)
        return np.concatenate([one_hot.to_numpy(), self.affinity()], axis=1)

    def action_context(self) -> np.ndarray:
        """Numeric item features: ``item_feature_0`` then one-hot of the categorical item features, (n_items, d)."""
        cats = [c for c in self.item_context.columns if c.startswith("item_feature_") and c != "item_feature_0"]
        one_hot = pd.get_dummies(self.item_context[cats].astype(str), dtype=np.float64).to_numpy()
        return np.concatenate([self.item_context[["item_feature_0"]].to_numpy(dtype=np.float64), one_hot], axis=1)

    def take(self, rows: np.ndarray | slice) -> ObdData:
        """The impressions at ``rows`` (positions in time order), same items."""
        return ObdData(
            frame=self.frame.iloc[rows].reset_index(drop=True),
            item_context=self.item_context,
            n_items=self.n_items,
            positions=self.positions,
            behavior_policy=self.behavior_policy,
            campaign=self.campaign,
            source=self.source,
        )

    def time_split(self, test_fraction: float) -> tuple[ObdData, ObdData]:
        """(earlier, later) impressions: the last ``test_fraction`` of rows in time order are the test part."""
        if not 0.0 < test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
        cut = round(self.n_rounds * (1.0 - test_fraction))
        if cut < 1 or cut >= self.n_rounds:
            raise DataError(f"{self.source}: {self.n_rounds} rows are too few to split {test_fraction:g} off")
        return self.take(slice(0, cut)), self.take(slice(cut, None))


def resolve_obd_paths(path: Path | str, behavior_policy: str = "random", campaign: str = "all") -> tuple[Path, Path]:
    """(impressions CSV, item_context.csv) for a dataset root, a campaign folder, or the CSV itself."""
    path = Path(path)
    if behavior_policy not in BEHAVIOR_POLICIES:
        raise DataError(f"behavior_policy must be one of {list(BEHAVIOR_POLICIES)}, got {behavior_policy!r}")
    if campaign not in CAMPAIGNS:
        raise DataError(f"campaign must be one of {list(CAMPAIGNS)}, got {campaign!r}")
    if path.is_file():
        csv = path
    elif (path / f"{campaign}.csv").is_file():
        csv = path / f"{campaign}.csv"
    elif (path / behavior_policy / campaign / f"{campaign}.csv").is_file():
        csv = path / behavior_policy / campaign / f"{campaign}.csv"
    else:
        raise DataError(
            f"no OBD data at {path}: expected {path}/{behavior_policy}/{campaign}/{campaign}.csv, "
            f"{path}/{campaign}.csv or a CSV file"
        )
    items = csv.parent / ITEM_CONTEXT
    if not items.is_file():
        raise DataError(f"{items} does not exist; OBD keeps the item features beside {csv.name}")
    return csv, items


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        df = pd.read_csv(path, index_col=0)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path} is empty; expected an OBD CSV with a header and impressions") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as e:
        raise DataError(f"{path}: not a readable CSV ({e})") from e
    if len(df) == 0:
        raise DataError(f"{path} has a header but no rows")
    return df


def _check_integer(df: pd.DataFrame, col: str, source: Path, lo: int, hi: int | None = None) -> None:
    values = df[col]
    if not pd.api.types.is_integer_dtype(values):
        raise DataError(f"{source}: column {col!r} has dtype {values.dtype}, expected integers")
    bad = (values < lo) | ((values > hi) if hi is not None else False)
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        want = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        raise DataError(
            f"{source}: column {col!r} must be in {want}, got {values.iloc[i]} at row {i} "
            f"({int(bad.sum())} of {len(df)} rows out of range)"
        )


def read_obd(data_dir: Path | str, behavior_policy: str = "random", campaign: str = "all") -> ObdData:
    """Read and check one (behavior policy, campaign) of the Open Bandit Dataset; rows come back in time order.

    Args:
        data_dir: the dataset root (holding ``random/`` and ``bts/``), a campaign folder, or the impressions CSV.
        behavior_policy: ``"random"`` or ``"bts"`` (used with a root folder).
        campaign: ``"all"``, ``"men"`` or ``"women"`` (used with a root or policy folder).

    Raises:
        DataError: a missing or empty file, a missing column, a non-integer id, an out-of-range item, position,
            click or propensity, or an unparseable timestamp; the message names the file, column and value.
    """
    csv, items_path = resolve_obd_paths(data_dir, behavior_policy, campaign)
    items = _read_csv(items_path)
    missing = [c for c in ("item_id", "item_feature_0") if c not in items.columns]
    if missing:
        raise DataError(f"{items_path}: missing column(s) {missing}; expected item_id and item_feature_0..")
    n_items = len(items)
    _check_integer(items, "item_id", items_path, 0, n_items - 1)
    if sorted(items["item_id"].tolist()) != list(range(n_items)):
        raise DataError(f"{items_path}: item_id must list every item 0..{n_items - 1} once")
    items = items.sort_values("item_id").set_index("item_id", drop=False)
    items.index.name = None

    df = _read_csv(csv)
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"{csv}: missing required column(s) {missing}; an OBD file has {list(REQUIRED_COLUMNS)}")
    if not any(c.startswith(USER_FEATURE_PREFIX) for c in df.columns):
        raise DataError(f"{csv}: no user feature columns ({USER_FEATURE_PREFIX}<k>) found")
    affinity = [f"{AFFINITY_PREFIX}{i}" for i in range(n_items)]
    lacking = [c for c in affinity if c not in df.columns]
    if lacking:
        raise DataError(
            f"{csv}: missing affinity column(s) {lacking[:3]}; expected one per item of {items_path.name} ({n_items})"
        )
    _check_integer(df, "item_id", csv, 0, n_items - 1)
    _check_integer(df, "position", csv, 1)
    _check_integer(df, "click", csv, 0, 1)
    p = df["propensity_score"]
    if not pd.api.types.is_numeric_dtype(p):
        raise DataError(f"{csv}: column 'propensity_score' has dtype {p.dtype}, expected float")
    bad = ~((p > 0) & (p <= 1))
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(
            f"{csv}: propensity_score must be in (0, 1], got {float(p.iloc[i]):g} at row {i} "
            f"({int(bad.sum())} of {len(df)} rows out of range)"
        )
    aff = df[affinity]
    if not all(pd.api.types.is_numeric_dtype(aff[c]) for c in affinity) or not np.isfinite(aff.to_numpy()).all():
        raise DataError(f"{csv}: affinity columns must be finite numbers")
    try:
        df["timestamp"] = pd.to_datetime(df["timestamp"], utc=True, format="ISO8601")
    except (ValueError, TypeError) as e:
        raise DataError(f"{csv}: column 'timestamp' is not ISO-8601 date-times ({e})") from e
    df = df.sort_values("timestamp", kind="stable").reset_index(drop=True)
    parent = csv.parent
    policy = parent.parent.name if parent.parent.name in BEHAVIOR_POLICIES else behavior_policy
    camp = csv.stem if csv.stem in CAMPAIGNS else campaign
    return ObdData(
        frame=df,
        item_context=items,
        n_items=n_items,
        positions=tuple(sorted(int(x) for x in df["position"].unique())),
        behavior_policy=policy,
        campaign=camp,
        source=csv,
    )


def _hex(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()  # an OBD-looking 32-hex-char token, not security


def write_synthetic_obd(
    root: Path | str,
    *,
    n_rounds: int = 4000,
    n_items: int = 10,
    behavior_policy: str = "random",
    campaign: str = "all",
    seed: int = 0,
) -> Path:
    """Write an OBD-format fixture ``root/<policy>/<campaign>/{<campaign>.csv, item_context.csv}``; returns root.

    Clicks follow a known logistic model (user-feature x item-group match, the affinity of the shown item, item
    quality and position), so a model that uses the features beats one that does not. The logging policy is
    uniform over (item, position) with propensity ``1 / n_items``.
    """
    rng = np.random.default_rng(seed)
    folder = Path(root) / behavior_policy / campaign
    folder.mkdir(parents=True, exist_ok=True)
    n_groups = 3
    group = np.arange(n_items) % n_groups
    quality = rng.normal(0.0, 0.5, n_items)
    items = pd.DataFrame(
        {
            "item_id": np.arange(n_items),
            "item_feature_0": rng.normal(0.0, 1.0, n_items),
            "item_feature_1": [_hex(f"group{g}") for g in group],
            "item_feature_2": [_hex(f"brand{i % 4}") for i in range(n_items)],
            "item_feature_3": [_hex(f"price{i % 2}") for i in range(n_items)],
        }
    )
    items.to_csv(folder / ITEM_CONTEXT)
    taste = rng.integers(0, n_groups, n_rounds)
    item = rng.integers(0, n_items, n_rounds)
    position = rng.integers(1, 4, n_rounds)
    affinity = rng.exponential(1.0, (n_rounds, n_items)) * (rng.random((n_rounds, n_items)) < 0.3)
    logit = -2.5 + 1.8 * (taste == group[item]) + 0.6 * affinity[np.arange(n_rounds), item] + quality[item]
    logit -= 0.4 * (position - 1)
    click = (rng.random(n_rounds) < 1.0 / (1.0 + np.exp(-logit))).astype(np.int64)
    start = pd.Timestamp("2019-11-24", tz="UTC")
    seconds = np.cumsum(rng.exponential(7 * 86400 / n_rounds, n_rounds))
    frame = pd.DataFrame(
        {
            "timestamp": (start + pd.to_timedelta(seconds, unit="s")).astype(str),
            "item_id": item,
            "position": position,
            "click": click,
            "propensity_score": np.full(n_rounds, 1.0 / n_items),
            "user_feature_0": [_hex(f"taste{t}") for t in taste],
            "user_feature_1": [_hex(f"age{a}") for a in rng.integers(0, 5, n_rounds)],
            "user_feature_2": [_hex(f"region{a}") for a in rng.integers(0, 4, n_rounds)],
            "user_feature_3": [_hex(f"device{a}") for a in rng.integers(0, 2, n_rounds)],
        }
    )
    frame = pd.concat(
        [frame, pd.DataFrame(affinity, columns=[f"{AFFINITY_PREFIX}{i}" for i in range(n_items)])], axis=1
    )
    frame.to_csv(folder / f"{campaign}.csv")
    return Path(root)
