"""The tabular agents' state: observation -> one integer state in ``[0, n_states)``, vectorised over a batch.

:class:`StateDiscretizer` (defined in :mod:`adrl.features`, which the learned simulator's logged-support counts
share) is what :class:`~adrl.agents.q_learning.TabularQAgent` learns over;
:class:`DiscreteObservationWrapper` applies it to any env for a tabular agent of a user's own.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from adrl.errors import ConfigError
from adrl.features import DEFAULT_BINS, PREFERRED_CATEGORY, FeatureLayout, StateDiscretizer

__all__ = ["DEFAULT_BINS", "PREFERRED_CATEGORY", "DiscreteObservationWrapper", "StateDiscretizer"]


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
