"""Stable-Baselines3 ``VecEnv`` over the native batch, so SB3 agents train on the fast path, not N Python envs.

SB3's ``VecEnv`` contract is same-step autoreset: ``step`` returns ``done = terminated | truncated`` and, for a
done slot, already the next user's first observation, with the last one in ``infos[i]["terminal_observation"]`` and
``infos[i]["TimeLimit.truncated"]`` True when the day ended rather than the user leaving (so on-policy algorithms
bootstrap from the terminal observation). This adapter drives an :class:`AdPlacementVectorEnv` in ``SAME_STEP``
mode and only converts the result; wrap it in ``VecMonitor`` for episode statistics.

Example:
    >>> from stable_baselines3 import PPO
    >>> venv = AdPlacementSB3VecEnv(num_envs=8, seed=0)
    >>> model = PPO("MlpPolicy", venv, n_steps=16, batch_size=64, n_epochs=1, seed=0).learn(128)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvIndices, VecEnvObs, VecEnvStepReturn

from adrl.actions import unflatten
from adrl.envs.ad_placement import BehaviorModel
from adrl.envs.vector import AdPlacementVectorEnv
from adrl.errors import ConfigError, ResetNeeded
from adrl.scenario import Scenario


class AdPlacementSB3VecEnv(VecEnv):
    """SB3 ``VecEnv`` over one :class:`AdPlacementVectorEnv` (one ``World.step`` per step for all slots).

    Args:
        num_envs: users stepped together.
        scenario: a Scenario, a YAML path, or None for the default market.
        behavior_model: None for the ground truth, a ``ResponseModel``, or a path to a fitted behavior model.
        flat_actions: expose ``Discrete(n_actions)`` (flat index ``(delay * n_slots + slot) * n_creatives +
            creative``) instead of ``MultiDiscrete``; DQN needs it.
        seed: seed of the first ``reset()``; ``VecEnv.seed(s)`` overrides it for the next reset (only the first
            slot's seed is used, as one generator drives the batch).
    """

    def __init__(
        self,
        num_envs: int = 1,
        scenario: Scenario | Path | str | None = None,
        behavior_model: BehaviorModel | None = None,
        *,
        flat_actions: bool = False,
        seed: int | None = None,
    ) -> None:
        self.venv = AdPlacementVectorEnv(num_envs, scenario, behavior_model, autoreset_mode=AutoresetMode.SAME_STEP)
        self.nvec = self.venv.scenario.action_nvec
        self.flat_actions = flat_actions
        action_space: spaces.Space[Any] = (
            spaces.Discrete(self.venv.scenario.n_actions) if flat_actions else self.venv.single_action_space
        )
        super().__init__(num_envs, self.venv.single_observation_space, action_space)
        self._seeds = [seed] + [None] * (num_envs - 1)
        self._actions: np.ndarray | None = None
        self._started = False

    @property
    def scenario(self) -> Scenario:
        return self.venv.scenario

    def reset(self) -> VecEnvObs:
        seed = self._seeds[0]
        obs, info = self.venv.reset(seed=seed)
        self._reset_seeds()
        self._reset_options()
        segment = info["segment"]
        self.reset_infos = [{"segment": int(s)} for s in segment]
        self._started = True
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions)

    def step_wait(self) -> VecEnvStepReturn:
        if not self._started or self._actions is None:
            raise ResetNeeded("step() called before reset(); call venv.reset() first")
        a = self._actions
        if self.flat_actions:
            a = unflatten(a.reshape(self.num_envs), self.nvec)
        obs, reward, terminated, truncated, info = self.venv.step(a)
        self._actions = None
        done = terminated | truncated
        infos: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
        if done.any():
            final_obs = info["final_obs"]
            for i in np.flatnonzero(done).tolist():
                infos[i]["terminal_observation"] = final_obs[i]
                infos[i]["TimeLimit.truncated"] = bool(truncated[i])
        return obs, reward.astype(np.float32), done, infos

    def close(self) -> None:
        self.venv.close()

    # ---- attribute access: every slot shares the one native env -----------------------------------------
    def _indices(self, indices: VecEnvIndices) -> list[int]:
        if indices is None:
            return list(range(self.num_envs))
        if isinstance(indices, int):
            return [indices]
        return list(indices)

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        if attr_name == "render_mode":
            value: Any = None
        else:
            value = getattr(self.venv, attr_name)
        return [value for _ in self._indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        if indices is not None and len(self._indices(indices)) != self.num_envs:
            raise ConfigError(f"cannot set {attr_name!r} on some slots only: all slots share one native env")
        setattr(self.venv, attr_name, value)

    def env_method(
        self, method_name: str, *method_args: Any, indices: VecEnvIndices = None, **method_kwargs: Any
    ) -> list[Any]:
        result = getattr(self.venv, method_name)(*method_args, **method_kwargs)  # once: all slots share the env
        return [result for _ in self._indices(indices)]

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None) -> list[bool]:
        return [False for _ in self._indices(indices)]

    def get_images(self) -> Sequence[np.ndarray | None]:
        return [None for _ in range(self.num_envs)]
