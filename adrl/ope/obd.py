"""Open Bandit Dataset (OBD) adapter and the standard experiment: evaluate BTS from the random policy's logs.

Layout (as shipped with Open Bandit Pipeline): ``<dir>/<policy>/<campaign>/<campaign>.csv`` with columns
``timestamp, item_id, position (1..3), click, propensity_score, user_feature_0..3, user-item_affinity_*`` and
``<dir>/prior_bts.yaml`` with the Beta priors of the Bernoulli Thompson Sampling (BTS) policy per campaign.

Each row is one decision: the *action* is the item, the *position* is part of the context (as in OBP, where the
propensity is that of the item at the logged position). Observations are the four user features as integer
codes (one-hot encoded by reward models), the affinities, and the position.

BTS's action distribution is context-free: with no updates during the logged period, each round samples one
θ_i ~ Beta(α_i, β_i) per item and shows the top three items by θ in positions 1, 2, 3. P(item at position) is
estimated by Monte-Carlo over ``n_sim`` seeded rounds, as OBP's ``BernoulliTS.compute_batch_action_dist`` does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from adrl.errors import DataError
from adrl.obd import read_obd as read_obd_data
from adrl.ope.data import LoggedData

POLICIES = ("random", "bts")
LEN_LIST = 3


@dataclass(frozen=True)
class OBDLogs:
    """One (policy, campaign) file as :class:`LoggedData` plus the item count and observation layout."""

    data: LoggedData
    n_items: int
    position_col: int

    @property
    def on_policy_value(self) -> float:
        """The logging policy's own click rate (mean reward)."""
        return float(self.data.reward.mean())


def read_obd(data_dir: Path | str, behavior_policy: str = "random", campaign: str = "all") -> OBDLogs:
    """Read one (policy, campaign) of OBD as logged decisions (parsing and validation: :func:`adrl.obd.read_obd`).

    Observation columns: the user features as category codes, the user-item affinities, then the position.

    Raises:
        DataError: missing file or columns, bad positions, or invalid propensities (naming the row).
    """
    raw = read_obd_data(data_dir, behavior_policy, campaign)
    names = raw.user_feature_names
    codes = np.column_stack([pd.factorize(raw.frame[c])[0] for c in names]) if names else np.zeros((raw.n_rounds, 0))
    n_positions = len(raw.positions)
    obs = np.column_stack([codes, raw.affinity(), raw.position]).astype(np.float32)
    n = raw.n_rounds
    categorical = tuple((i, int(codes[:, i].max()) + 1) for i in range(codes.shape[1]))
    position_col = obs.shape[1] - 1
    data = LoggedData(
        obs=obs,
        action=raw.action,
        propensity=raw.pscore,
        reward=raw.reward.astype(np.float64),
        episode_id=np.arange(n, dtype=np.int64),
        step=np.zeros(n, dtype=np.int64),
        n_actions=raw.n_items,
        categorical=(*categorical, (position_col, n_positions)),
        action_features=np.eye(raw.n_items),
        source=str(raw.source),
    )
    return OBDLogs(data=data, n_items=raw.n_items, position_col=position_col)


def read_bts_prior(data_dir: Path | str, campaign: str) -> tuple[np.ndarray, np.ndarray]:
    """``(alpha, beta)`` of BTS's Beta priors for ``campaign`` from ``<data_dir>/prior_bts.yaml``."""
    path = Path(data_dir) / "prior_bts.yaml"
    if not path.is_file():
        raise DataError(f"{path} does not exist; the BTS policy's priors are needed to evaluate it")
    try:
        prior: Any = yaml.safe_load(path.read_text())
        alpha = np.asarray(prior[campaign]["alpha"], dtype=np.float64)
        beta = np.asarray(prior[campaign]["beta"], dtype=np.float64)
    except (yaml.YAMLError, KeyError, TypeError, ValueError) as e:
        raise DataError(f"{path}: no alpha/beta lists for campaign {campaign!r} ({e})") from e
    if alpha.shape != beta.shape or alpha.ndim != 1 or (alpha <= 0).any() or (beta <= 0).any():
        raise DataError(f"{path}: campaign {campaign!r} needs positive alpha and beta lists of equal length")
    return alpha, beta


def bts_action_dist(
    alpha: np.ndarray, beta: np.ndarray, *, rng: np.random.Generator, n_sim: int = 100_000, chunk: int = 10_000
) -> np.ndarray:
    """P(item i shown at position k) under BTS with Beta(alpha, beta) posteriors: shape (n_items, LEN_LIST).

    Each simulated round ranks the items by one Beta draw each; the top ``LEN_LIST`` fill positions in order.
    """
    n_items = alpha.shape[0]
    counts = np.zeros((n_items, LEN_LIST))
    for lo in range(0, n_sim, chunk):
        m = min(chunk, n_sim - lo)
        theta = rng.beta(alpha, beta, size=(m, n_items))
        top = np.argsort(-theta, axis=1, kind="stable")[:, :LEN_LIST]
        for k in range(LEN_LIST):
            counts[:, k] += np.bincount(top[:, k], minlength=n_items)
    return counts / n_sim


def context_free_probs(dist: np.ndarray, position_col: int) -> Any:
    """Target policy ``obs -> (n, n_items)``: the column of ``dist`` (n_items, LEN_LIST) at each row's position."""

    def probs(obs: np.ndarray) -> np.ndarray:
        pos = np.rint(obs[:, position_col]).astype(np.int64)
        return dist.T[pos]

    return probs
