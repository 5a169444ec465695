"""The tabular agents' state: observation -> one integer state in ``[0, n_states)``, vectorised over a batch.

:class:`StateDiscretizer` is what :class:`~adrl.agents.q_learning.TabularQAgent` learns over;
:class:`DiscreteObservationWrapper` applies it to any env for a tabular agent of a user's own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from adrl.errors import ConfigError
from adrl.features import FeatureLayout

DEFAULT_BINS: dict[str, Sequence[float] | None] = {
    "segment": None,  # categorical: one bin per value
    "hour": None,
    "hours_since_last_ad": (2, 3, 5, 9, 24),  # 1 | 2 | 3-4 | 5-8 | 9-23 | none today
    "impressions_6h": (1, 2, 4),  # 0 | 1 | 2-3 | 4+
}
PREFERRED_CATEGORY = "preferred_category"  # derived: the category with the strongest interest signal


class StateDiscretizer:
    """Maps observations to integer states: a mixed-radix index over binned features.

    Each feature in ``bins`` is binned by ``np.digitize(value, edges)`` (``len(edges) + 1`` bins), or, with edges
    None, is a categorical feature with one bin per value. The derived feature ``preferred_category`` (edges None)
    is the category whose ``signal_<category>`` is highest, one bin per category. The default (segment × hour ×
    time since the last ad × impressions in the last 6 h) has 4 · 24 · 6 · 4 = 2304 states in the default scenario.

    Args:
        layout: the feature layout of the observations.
        bins: feature name -> increasing bin edges, or None for a categorical feature.

    Example:
        >>> from adrl.scenario import Scenario
        >>> d = StateDiscretizer(FeatureLayout.from_scenario(Scenario()))
        >>> d.n_states
        2304
    """

    def __init__(self, layout: FeatureLayout, bins: Mapping[str, Sequence[float] | None] | None = None) -> None:
        bins = dict(DEFAULT_BINS if bins is None else bins)
        if not bins:
            raise ConfigError("bins must name at least one observation feature")
        self.layout = layout
        self.features = tuple(bins)
        self._columns: list[int] = []
        self._edges: list[np.ndarray | None] = []
        sizes = []
        self._signals = np.array([layout.index(f"signal_{c}") for c in layout.categories], dtype=np.int64)
        for name, edges in bins.items():
            if name == PREFERRED_CATEGORY:
                if edges is not None:
                    raise ConfigError(f"bins: {PREFERRED_CATEGORY!r} is derived and categorical; give None as edges")
                self._edges.append(None)
                sizes.append(len(layout.categories))
                self._columns.append(-1)
                continue
            if name not in layout.obs_names:
                raise ConfigError(f"bins: unknown observation feature {name!r}; expected one of {layout.obs_names}")
            feature = layout.obs[layout.index(name)]
            if edges is None:
                if feature.kind != "categorical":
                    raise ConfigError(f"bins: {name!r} is {feature.kind}; give its bin edges")
                self._edges.append(None)
                sizes.append(feature.cardinality)
            else:
                e = np.asarray(edges, dtype=np.float64)
                if e.ndim != 1 or e.size == 0 or np.any(np.diff(e) <= 0):
                    raise ConfigError(f"bins: edges of {name!r} must strictly increase, got {list(edges)}")
                self._edges.append(e)
                sizes.append(e.size + 1)
            self._columns.append(layout.index(name))
        self.sizes = tuple(sizes)
        self.n_states = int(np.prod(sizes))
        self._radix = np.cumprod((1, *sizes[::-1]))[-2::-1].astype(np.int64)  # place value of each feature

    def discretize(self, obs: np.ndarray) -> Any:
        """State of one observation (an ``int``) or of a batch ``(n, obs_dim)`` (int64 array ``(n,)``)."""
        x = np.asarray(obs)
        single = x.ndim == 1
        x2 = x[None, :] if single else x
        if x2.ndim != 2 or x2.shape[1] != self.layout.obs_dim:
            raise ValueError(f"observations must have shape (n, {self.layout.obs_dim}), got {x.shape}")
        state = np.zeros(x2.shape[0], dtype=np.int64)
        for col, edges, size, radix in zip(self._columns, self._edges, self.sizes, self._radix, strict=True):
            if col < 0:  # preferred_category
                b = x2[:, self._signals].argmax(axis=1)
                state += b * radix
                continue
            v = x2[:, col]
            b = np.clip(v, 0, size - 1).astype(np.int64) if edges is None else np.digitize(v, edges)
            state += b * radix
        return int(state[0]) if single else state


class DiscreteObservationWrapper(gym.ObservationWrapper[np.int64, np.ndarray, np.ndarray]):
    """Observations become ``Discrete(n_states)`` states of a :class:`StateDiscretizer` (tabular agents)."""

    def __init__(self, env: gym.Env[np.ndarray, np.ndarray], discretizer: StateDiscretizer | None = None) -> None:
        super().__init__(env)
        layout = getattr(env.unwrapped, "layout", None)
        if discretizer is None:
            if not isinstance(layout, FeatureLayout):
                raise ConfigError("pass a StateDiscretizer: the wrapped env has no feature layout")
            discretizer = StateDiscretizer(layout)
        self.discretizer = discretizer
        self.observation_space = spaces.Discrete(discretizer.n_states)

    def observation(self, observation: np.ndarray) -> np.int64:
        return np.int64(self.discretizer.discretize(observation))
