"""The protocols every layer shares: a policy, an agent (a policy that learns and persists) and a response model.

They live on the ground floor so that evaluation, off-policy estimation, serving and the simulators accept any
implementation without importing the agents or the behavior model.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, Self, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from adrl.world import Response, UserBatch


@runtime_checkable
class Policy(Protocol):
    """Maps observations (n, obs_dim) to actions (n, 3), with exact action probabilities.

    ``action_probabilities(obs)`` is the joint distribution over the flat action index of :mod:`adrl.actions`,
    shape (n, n_actions): off-policy evaluation and the server's propensity logging read it.
    """

    nvec: tuple[int, int, int]

    def predict(self, obs: np.ndarray, *, deterministic: bool = True) -> np.ndarray: ...

    def action_probabilities(self, obs: np.ndarray) -> np.ndarray: ...


@runtime_checkable
class Agent(Policy, Protocol):
    """A policy that learns and persists itself."""

    kind: str
    version: int

    def learn(self, env: Any, total_steps: int, *, callback: Any = None) -> Self: ...

    def save(self, path: Path) -> None: ...

    @classmethod
    def load(cls, path: Path) -> Self: ...


@runtime_checkable
class ResponseModel(Protocol):
    """What drives a simulator: outcome probabilities for users in ``batch`` shown ``action`` (shape (n, 3)).

    ``action`` holds delay indices, slots and creatives; the model sees the state before the wait.
    """

    def probabilities(self, batch: UserBatch, action: np.ndarray) -> Response: ...
