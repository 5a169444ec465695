"""How much the logs say about an impression: the learned simulator's count-based pessimism.

The behavior model is fitted where the logging policy went. An agent trained on it drives users into binned states
and actions the logs hold a handful of times, and there the model's error is largest: on the main job's logs
(60,000 ε-greedy user-days), along PPO's ground-truth trajectories the simulator's expected reward was 1.15× the
truth in cells with more than 300 logged impressions and 1.9-3.9× in cells with 10-100 (issue 16's report).
Bootstrap members fitted on the same logs share that bias, so their disagreement does not flag it; the count does.

:class:`LoggedSupport` counts the logged impressions of every cell (binned state × delay × slot; the state is a
:class:`~adrl.features.StateDiscretizer`, by default segment × hour × hours since the last ad × impressions in the
last 6 h) and gives, for an impression the simulator scores, the lower-confidence-bound width

    u(x, a) = sqrt(Var_p̂[r] / (n(x, a) + 1))

with Var_p̂[r] the variance of the immediate reward (click and conversion revenue) under the predicted
probabilities and n the cell's logged count: the standard error of the cell's mean reward had the model only the
logs of that cell to go by (the count-based pessimism of Jin et al. 2021, in Bernstein form). The learned
environment's pessimistic mode trains on reward − κ · u (:mod:`adrl.envs.pessimistic`).

Saved as ``support.npy`` (the counts, int64) beside the ensemble's ``ensemble.json``, which records the bins.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from adrl.errors import ArtifactError, ConfigError
from adrl.features import DEFAULT_BINS, FeatureLayout, StateDiscretizer
from adrl.io import load_npy, write_npy_atomic
from adrl.logs import feature_columns, iter_batches, log_files, read_schema, validate_schema
from adrl.scenario import RewardTable, Scenario

SUPPORT_FILE = "support.npy"


class LoggedSupport:
    """Logged impressions per (binned state, delay, slot) cell; see the module docstring.

    Args:
        scenario: the market (its delays, slots and feature layout).
        counts: int64 (n_states · n_delays · n_slots,) impressions per cell (zeros: an empty log).
        bins: the state's bins (:class:`~adrl.features.StateDiscretizer`; None: the tabular agents' default).
    """

    def __init__(
        self,
        scenario: Scenario,
        counts: np.ndarray | None = None,
        bins: Mapping[str, Sequence[float] | None] | None = None,
    ) -> None:
        self.scenario = scenario
        self.layout = FeatureLayout.from_scenario(scenario)
        self.bins: dict[str, list[float] | None] = {
            k: (None if v is None else [float(e) for e in v])
            for k, v in dict(DEFAULT_BINS if bins is None else bins).items()
        }
        self.discretizer = StateDiscretizer(self.layout, self.bins)
        self._nd, self._ns = scenario.n_delays, scenario.n_slots
        n_cells = self.discretizer.n_states * self._nd * self._ns
        c = np.zeros(n_cells, dtype=np.int64) if counts is None else np.asarray(counts)
        if c.shape != (n_cells,) or not np.issubdtype(c.dtype, np.integer) or (c < 0).any():
            raise ArtifactError(
                f"support counts must be {n_cells} non-negative integers (states × delays × slots), got shape "
                f"{c.shape} of {c.dtype}"
            )
        self.counts = c.astype(np.int64)
        self._rewards: RewardTable = scenario.reward_table

    @property
    def n_impressions(self) -> int:
        return int(self.counts.sum())

    def cells(self, obs: np.ndarray, action: np.ndarray) -> np.ndarray:
        """(n,) int64 cell of each observation (n, obs_dim) and action (n, 3)."""
        a = np.asarray(action, dtype=np.int64)
        state = np.asarray(self.discretizer.discretize(np.asarray(obs)), dtype=np.int64).reshape(-1)
        return (state * self._nd + a[:, 0]) * self._ns + a[:, 1]

    def count(self, obs: np.ndarray, action: np.ndarray) -> np.ndarray:
        """(n,) logged impressions in the cell of each (observation, action)."""
        return self.counts[self.cells(obs, action)]

    def width(
        self, obs: np.ndarray, action: np.ndarray, p_click: np.ndarray, p_conversion: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """(u, n): the lower-bound width sqrt(Var[r] / (n + 1)) of each impression and its cell's count."""
        n = self.count(obs, action)
        value = self._rewards.conversion_reward[np.asarray(action)[:, 2]]
        a, pc, pcv = self._rewards.click_value, p_click, p_click * p_conversion
        mean = a * pc + value * pcv
        var = np.maximum(a * a * pc + (2 * a * value + value * value) * pcv - mean * mean, 0.0)
        return np.sqrt(var / (n + 1.0)), n

    def add(self, obs: np.ndarray, action: np.ndarray) -> None:
        """Count impressions (n, obs_dim) with actions (n, 3)."""
        np.add.at(self.counts, self.cells(obs, action), 1)

    @classmethod
    def from_logs(
        cls,
        logs: Path | str,
        scenario: Scenario,
        bins: Mapping[str, Sequence[float] | None] | None = None,
        batch_size: int = 262_144,
    ) -> LoggedSupport:
        """Count the shown impressions of an adrl log (file or directory), streamed in record batches.

        Raises:
            DataError: a file is not an adrl log of ``scenario``'s feature layout.
        """
        support = cls(scenario, bins=bins)
        features = feature_columns(support.layout)
        for f in log_files(logs):
            validate_schema(read_schema(f), str(f), layout=support.layout)
        for df in iter_batches(logs, columns=[*features, "delay", "slot", "creative", "shown"], batch_size=batch_size):
            shown = df["shown"].to_numpy(dtype=bool)
            if shown.any():
                support.add(
                    df[features].to_numpy(dtype=np.float32)[shown],
                    df[["delay", "slot", "creative"]].to_numpy(dtype=np.int64)[shown],
                )
        return support

    # ---- artifact (inside an ensemble's directory) -------------------------------------------------------------
    def save(self, directory: Path | str) -> dict[str, Any]:
        """Write ``support.npy`` into ``directory``; returns the manifest entry (file, bins, impressions)."""
        write_npy_atomic(Path(directory) / SUPPORT_FILE, self.counts)
        bins = [[name, edges] for name, edges in self.bins.items()]  # a list: the order is the cells' radix order
        return {"file": SUPPORT_FILE, "bins": bins, "n_impressions": self.n_impressions}

    @classmethod
    def load(cls, directory: Path | str, entry: Any, scenario: Scenario) -> LoggedSupport:
        """The support an ensemble's manifest ``entry`` (from :meth:`save`) names.

        Raises:
            ArtifactError: the entry or the counts are malformed, or the bins do not fit the scenario's layout.
        """
        where = f"{directory}: 'support'"
        if not isinstance(entry, dict) or entry.get("file") != SUPPORT_FILE or not isinstance(entry.get("bins"), list):
            raise ArtifactError(
                f"{where} must be {{'file': {SUPPORT_FILE!r}, 'bins': [[name, edges], ...]}}, got {entry!r}"
            )
        pairs = entry["bins"]
        if not all(
            isinstance(b, list) and len(b) == 2 and isinstance(b[0], str)
            and (b[1] is None or (isinstance(b[1], list) and all(isinstance(e, int | float) for e in b[1])))
            for b in pairs
        ):  # fmt: skip
            raise ArtifactError(f"{where}: 'bins' must be [feature, null or a list of edges] pairs, got {pairs!r}")
        bins = {name: edges for name, edges in pairs}
        counts = load_npy(Path(directory) / SUPPORT_FILE)
        try:
            return cls(scenario, counts, bins)
        except ConfigError as e:
            raise ArtifactError(f"{where}: {e}") from e
