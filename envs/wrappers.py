"""Wrappers: a flat ``Discrete`` action view and a log recorder (the tabular state is in ``adrl.agents.discretizer``).

- :class:`FlatActionWrapper` / :class:`FlatActionVectorWrapper`: ``Discrete(n_actions)`` with flat index
  ``(delay * n_slots + slot) * n_creatives + creative`` (the index of ``adrl.actions.flat_index``).
- :class:`LogRecorder`: writes every decision in the logged-data schema of :mod:`adrl.logs`, so an env rollout
  can be fed to ``adrl fit`` and ``adrl ope`` like a simulated or served log.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.vector import VectorActionWrapper, VectorEnv

from adrl.actions import component_probabilities, flat_index, unflatten
from adrl.envs.ad_placement import AdPlacementEnv
from adrl.errors import ConfigError, InvalidAction
from adrl.logs import LogWriter, logged_columns
from adrl.protocols import Policy

Nvec = tuple[int, int, int]


def _nvec_of(space: gym.Space[Any]) -> Nvec:
    if not isinstance(space, spaces.MultiDiscrete) or space.nvec.shape[-1:] != (3,):
        raise ConfigError(f"expected a MultiDiscrete([n_delays, n_slots, n_creatives]) action space, got {space}")
    nvec = np.asarray(space.nvec).reshape(-1, 3)[0]
    return int(nvec[0]), int(nvec[1]), int(nvec[2])


def _unflatten_checked(action: Any, n_actions: int, nvec: Nvec) -> np.ndarray:
    a = np.asarray(action)
    if a.dtype.kind not in "iu" or ((a < 0) | (a >= n_actions)).any():
        raise InvalidAction(f"flat action {action!r} must be integers in 0..{n_actions - 1}")
    return unflatten(a, nvec)


class FlatActionWrapper(gym.ActionWrapper[np.ndarray, np.int64, np.ndarray]):
    """``Discrete(n_delays * n_slots * n_creatives)`` view of the factored action (for DQN and tabular agents)."""

    def __init__(self, env: gym.Env[np.ndarray, np.ndarray]) -> None:
        super().__init__(env)
        self.nvec = _nvec_of(env.action_space)
        self.n_actions = int(np.prod(self.nvec))
        self.action_space = spaces.Discrete(self.n_actions)

    def action(self, action: np.int64) -> np.ndarray:
        """The (delay, slot, creative) triple of a flat index; ``InvalidAction`` when out of range."""
        return _unflatten_checked(action, self.n_actions, self.nvec)

    def reverse_action(self, action: np.ndarray) -> np.int64:
        return np.int64(flat_index(np.asarray(action), self.nvec))


class FlatActionVectorWrapper(VectorActionWrapper):
    """Flat ``Discrete`` actions for a vector env: ``step`` takes ``(num_envs,)`` flat indices."""

    def __init__(self, env: VectorEnv) -> None:
        super().__init__(env)
        self.nvec = _nvec_of(env.single_action_space)
        self.n_actions = int(np.prod(self.nvec))
        self.single_action_space = spaces.Discrete(self.n_actions)
        self.action_space = spaces.MultiDiscrete(np.full(env.num_envs, self.n_actions))

    def actions(self, actions: np.ndarray) -> np.ndarray:  # type: ignore[override, unused-ignore]
        return _unflatten_checked(actions, self.n_actions, self.nvec)


class LogRecorder(gym.Wrapper[np.ndarray, np.ndarray, np.ndarray, np.ndarray]):
    """Writes every decision of the wrapped :class:`AdPlacementEnv` to a parquet log in the logged-data schema.

    One row per step: the observation the action was chosen on (``x_*``), the action, the logging policy's
    propensity (joint and per component), the outcome and reward; with the ground-truth backend also the true
    probabilities (``p_click`` ...). Rows are buffered and written in chunks; the file appears under its name
    only on ``close()`` (atomic). Wrap the ``MultiDiscrete`` env directly (put ``FlatActionWrapper`` outside).

    Args:
        env: an :class:`AdPlacementEnv` (possibly behind Gymnasium's checker wrappers).
        path: the parquet file to write.
        policy: the policy choosing the actions (its ``action_probabilities`` give the propensities), or
            ``"deterministic"`` when each action is its policy's only choice (propensity 1).
        chunk_rows: rows buffered before a chunk is written.
    """

    def __init__(
        self,
        env: gym.Env[np.ndarray, np.ndarray],
        path: Path | str,
        *,
        policy: Policy | Literal["deterministic"],
        chunk_rows: int = 65_536,
    ) -> None:
        super().__init__(env)
        base = env.unwrapped
        if not isinstance(base, AdPlacementEnv):
            raise ConfigError(f"LogRecorder records an AdPlacementEnv, got {type(base).__name__}")
        if env.action_space != base.action_space:
            raise ConfigError("LogRecorder must wrap the MultiDiscrete env; apply FlatActionWrapper outside it")
        if policy != "deterministic" and not isinstance(policy, Policy):
            raise ConfigError(
                "policy must implement action_probabilities(obs) (the logging propensities) or be 'deterministic'"
            )
        if chunk_rows < 1:
            raise ConfigError(f"chunk_rows must be >= 1, got {chunk_rows}")
        self.base = base
        self.policy = policy
        self.chunk_rows = chunk_rows
        self.nvec = base.scenario.action_nvec
        self.truth = base.response is None
        self._writer = LogWriter(path, base.layout, truth=self.truth, scenario_hash=base.scenario.content_hash)
        self._rows: list[tuple[Any, ...]] = []
        self._actions: list[np.ndarray] = []
        self._obs: list[np.ndarray] = []
        self._last_obs: np.ndarray | None = None
        self._episode = -1
        self._step = 0
        self.n_rows = 0

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        obs, info = self.env.reset(seed=seed, options=options)
        self._last_obs = obs
        self._episode += 1
        self._step = 0
        return obs, info

    def step(self, action: np.ndarray) -> tuple[np.ndarray, SupportsFloat, bool, bool, dict[str, Any]]:
        obs_before = self._last_obs
        if obs_before is None:
            return self.env.step(action)  # the env raises ResetNeeded
        obs, reward, terminated, truncated, info = self.env.step(action)
        a = np.asarray(action, dtype=np.int64)
        if self.policy == "deterministic":
            joint = pd = ps = pc = 1.0
        else:
            probs = self.policy.action_probabilities(obs_before[None, :])
            joint = float(probs[0, int(flat_index(a, self.nvec))])
            marginals = component_probabilities(probs, self.nvec)
            pd, ps, pc = (float(m[0, int(a[i])]) for i, m in enumerate(marginals))
        truth = (info["p_click"], info["p_conversion"], info["p_leave"]) if self.truth else ()
        row = (self._episode, self._step, info["hour"], joint, (pd, ps, pc), info["shown"], info["click"],
               info["conversion"], info["leave"], float(reward), truth)  # fmt: skip
        self._rows.append(row)
        self._actions.append(a)
        self._obs.append(obs_before)
        self._last_obs = obs
        self._step += 1
        self.n_rows += 1
        if len(self._obs) >= self.chunk_rows:
            self._flush()
        return obs, reward, terminated, truncated, info

    def _flush(self) -> None:
        if not self._obs:
            return
        episode, step, hour, joint, comps, shown, click, conversion, leave, reward, truth = (
            np.asarray(col) for col in zip(*self._rows, strict=True)
        )
        cols = logged_columns(
            self.base.layout, obs=np.stack(self._obs), episode_id=episode, user_id=episode, step=step, hour=hour,
            action=np.stack(self._actions), propensity=joint, components=comps, shown=shown, click=click,
            conversion=conversion, leave=leave, reward=reward, truth=tuple(truth.T) if self.truth else None,
        )  # fmt: skip
        self._writer.write(cols)
        self._rows, self._actions, self._obs = [], [], []

    def close(self) -> None:
        """Write the last rows and move the file into place; closes the wrapped env too."""
        if self._writer is not None:
            self._flush()
            self._writer.__exit__(None, None, None)
            self._writer = None  # type: ignore[assignment]
        super().close()

    def __enter__(self) -> LogRecorder:
        return self

    def __exit__(self, *args: Any) -> Literal[False]:
        exc_type, exc, tb = args if len(args) == 3 else (None, None, None)
        if exc_type is not None and self._writer is not None:
            self._writer.__exit__(exc_type, exc, tb)  # an error: discard the partial file
            self._writer = None  # type: ignore[assignment]
        self.close()
        return False
