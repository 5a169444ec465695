"""Stable-Baselines3 PPO, A2C (MultiDiscrete actions) and DQN (flat Discrete) behind the adrl agent protocol.

Training runs on :class:`adrl.envs.sb3.AdPlacementSB3VecEnv`, the native batch, never on N Python envs.
``action_probabilities`` is exact: PPO/A2C's MultiCategorical is a product of per-component categoricals (the joint
is their outer product); DQN's policy is greedy in Q (one-hot). Weights (policy and optimizer state) are saved as
safetensors with a JSON manifest; the replay buffer of DQN is not saved, so a resumed DQN refills it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3 import A2C, DQN, PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper, VecMonitor
from stable_baselines3.common.vec_env.base_vec_env import VecEnvObs, VecEnvStepReturn

from adrl.actions import joint_probabilities, unflatten
from adrl.agents.base import check_obs, one_hot
from adrl.agents.registry import read_policy_manifest, register_kind, write_policy_manifest
from adrl.agents.torch_io import load_torch_state, save_torch_state
from adrl.errors import ArtifactError, ConfigError
from adrl.features import FeatureLayout
from adrl.scenario import Scenario

ALGOS: dict[str, type[BaseAlgorithm]] = {"ppo": PPO, "a2c": A2C, "dqn": DQN}


@dataclass(frozen=True)
class SB3Config:
    """Algorithm name and keyword arguments passed to the SB3 constructor (validated by SB3 itself)."""

    algo: str = "ppo"
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    log_every: int = 100_000

    def __post_init__(self) -> None:
        if self.algo not in ALGOS:
            raise ConfigError(f"algo must be one of {sorted(ALGOS)}, got {self.algo!r}")
        if self.log_every < 1:
            raise ValueError(f"log_every must be >= 1, got {self.log_every}")


class _Relay(BaseCallback):
    """Calls the adrl callback every ``log_every`` steps with the mean return of finished episodes."""

    def __init__(self, agent: SB3Agent, callback: Any, log_every: int) -> None:
        super().__init__()
        self.agent, self.callback, self.log_every = agent, callback, log_every
        self.next_log = agent.steps_done + log_every
        self.seen_episodes = 0

    def _on_step(self) -> bool:
        self.agent.steps_done = self.agent.base_steps + int(self.model.num_timesteps)
        if self.agent.steps_done < self.next_log:
            return True
        self.next_log = self.agent.steps_done + self.log_every
        buffer = list(self.model.ep_info_buffer or [])
        stats = {"mean_return": float(np.mean([e["r"] for e in buffer])) if buffer else float("nan")}
        if self.callback is None:
            return True
        return self.callback(self.agent, self.agent.steps_done, stats) is not False


def obs_scale(layout: FeatureLayout) -> np.ndarray:
    """Fixed per-feature factor that brings every observation into about [-1, 1] (SB3's MLPs do not scale inputs,
    and raw counts and exposures reach tens); no statistics, so artifacts need nothing extra."""
    return (1.0 / np.maximum(1.0, np.maximum(np.abs(layout.obs_low), np.abs(layout.obs_high)))).astype(np.float32)


class ScaledObs(VecEnvWrapper):
    """Multiplies observations (and terminal observations) by a fixed per-feature ``scale``."""

    def __init__(self, venv: VecEnv, scale: np.ndarray) -> None:
        box = venv.observation_space
        assert isinstance(box, spaces.Box)
        space = spaces.Box(box.low * scale, box.high * scale, dtype=np.float32)
        super().__init__(venv, observation_space=space)
        self.scale = scale

    def reset(self) -> VecEnvObs:
        return np.asarray(self.venv.reset()) * self.scale

    def step_wait(self) -> VecEnvStepReturn:
        obs, reward, done, infos = self.venv.step_wait()
        for info in infos:
            if "terminal_observation" in info:
                info["terminal_observation"] = info["terminal_observation"] * self.scale
        return np.asarray(obs) * self.scale, reward, done, infos


class SB3Agent:
    """An SB3 algorithm with the adrl agent protocol; ``kind`` is ``sb3-<algo>``."""

    version = 2  # 2: observations scaled by obs_scale
    kinds: ClassVar[tuple[str, ...]] = tuple(f"sb3-{a}" for a in ALGOS)

    def __init__(self, scenario: Scenario, config: SB3Config | None = None, *, seed: int | None = None) -> None:
        self.scenario = scenario
        self.config = config or SB3Config()
        self.kind = f"sb3-{self.config.algo}"
        self.layout = FeatureLayout.from_scenario(scenario)
        self.nvec = scenario.action_nvec
        self.obs_dim = self.layout.obs_dim
        self.scale = obs_scale(self.layout)
        self.flat = self.config.algo == "dqn"
        self.seed = seed
        self.steps_done = 0
        self.base_steps = 0
        self.model: BaseAlgorithm | None = None

    def _make_model(self, env: VecEnv) -> BaseAlgorithm:
        cls = ALGOS[self.config.algo]
        try:
            return cls("MlpPolicy", env, seed=self.seed, verbose=0, device="cpu", **self.config.hyperparameters)
        except TypeError as e:
            raise ConfigError(f"invalid {self.config.algo} hyper-parameter: {e}") from e

    def _vec_env(self, env: Any) -> VecEnv:
        if isinstance(env, ScaledObs) or (isinstance(env, VecMonitor) and isinstance(env.venv, ScaledObs)):
            return env if isinstance(env, VecMonitor) else VecMonitor(env)
        if isinstance(env, VecEnv):
            return VecMonitor(ScaledObs(env.venv if isinstance(env, VecMonitor) else env, self.scale))
        from adrl.envs.sb3 import AdPlacementSB3VecEnv

        scenario = getattr(env, "scenario", self.scenario)
        response = getattr(env, "response", None)
        venv = AdPlacementSB3VecEnv(int(env.num_envs), scenario, response, flat_actions=self.flat, seed=self.seed)
        return VecMonitor(ScaledObs(venv, self.scale))

    # ---- policy ------------------------------------------------------------------------------------------------
    def _require_model(self) -> BaseAlgorithm:
        if self.model is None:
            raise ConfigError(f"{self.kind} agent has no model yet; call learn() or load() first")
        return self.model

    def predict(self, obs: np.ndarray, *, deterministic: bool = True) -> np.ndarray:
        model = self._require_model()
        x = check_obs(obs, self.obs_dim) * self.scale
        action, _ = model.predict(x, deterministic=deterministic)
        action = np.asarray(action, dtype=np.int64)
        return unflatten(action.reshape(-1), self.nvec) if self.flat else action.reshape(-1, 3)

    @torch.no_grad()
    def action_probabilities(self, obs: np.ndarray) -> np.ndarray:
        model = self._require_model()
        x = check_obs(obs, self.obs_dim) * self.scale
        tensor, _ = model.policy.obs_to_tensor(x)
        if self.flat:
            q = model.policy.q_net(tensor)  # type: ignore[operator]
            return one_hot(q.argmax(dim=1).cpu().numpy(), self.scenario.n_actions)
        dist = model.policy.get_distribution(tensor)  # type: ignore[operator]
        pd, ps, pc = (d.probs.cpu().numpy().astype(np.float64) for d in dist.distribution)
        return joint_probabilities(pd, ps, pc)

    # ---- learning ----------------------------------------------------------------------------------------------
    def learn(self, env: Any, total_steps: int, *, callback: Any = None) -> Self:
        """Train until ``total_steps`` environment steps in all (counting the ones before a resume)."""
        venv = self._vec_env(env)
        if self.model is None:
            self.model = self._make_model(venv)
        else:
            self.model.set_env(venv)
        self.base_steps = self.steps_done
        remaining = total_steps - self.steps_done
        if remaining > 0:
            relay = _Relay(self, callback, self.config.log_every)
            self.model.learn(total_timesteps=remaining, callback=relay, reset_num_timesteps=True, progress_bar=False)
            self.steps_done = self.base_steps + int(self.model.num_timesteps)
        return self

    # ---- persistence -------------------------------------------------------------------------------------------
    def save(self, path: Path | str) -> None:
        model = self._require_model()
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        optim = save_torch_state(path, {"policy": model.policy}, model.policy.optimizer)
        write_policy_manifest(
            path,
            kind=self.kind,
            version=self.version,
            scenario=self.scenario,
            extra={
                "algo": self.config.algo,
                "hyperparameters": self.config.hyperparameters,
                "log_every": self.config.log_every,
                "steps_done": self.steps_done,
                "seed": self.seed,
                **optim,
            },
        )

    @classmethod
    def load(cls, path: Path | str) -> SB3Agent:
        path = Path(path)
        manifest, scenario = read_policy_manifest(path, kind=cls.kinds, version=cls.version)
        try:
            config = SB3Config(
                algo=manifest["algo"], hyperparameters=dict(manifest.get("hyperparameters") or {}),
                log_every=int(manifest.get("log_every", 100_000)),
            )  # fmt: skip
        except (KeyError, TypeError, ValueError) as e:
            raise ArtifactError(f"{path}/manifest.json: invalid agent config ({e})") from e
        agent = cls(scenario, config, seed=manifest.get("seed"))
        from adrl.envs.sb3 import AdPlacementSB3VecEnv

        with warnings.catch_warnings():  # a 1-env stand-in makes SB3 warn about rollout sizes it never uses
            warnings.simplefilter("ignore", UserWarning)
            model = agent._make_model(agent._vec_env(AdPlacementSB3VecEnv(1, scenario, flat_actions=agent.flat)))
        load_torch_state(path, {"policy": model.policy}, model.policy.optimizer, manifest)
        agent.model = model
        agent.steps_done = int(manifest.get("steps_done", 0))
        return agent


def build(name: str, scenario: Scenario, params: dict[str, Any], *, seed: int | None, **_: Any) -> SB3Agent:
    """``params`` are the algorithm's hyper-parameters, plus ``log_every`` (steps between logged statistics)."""
    log_every = int(params.get("log_every", 100_000))
    hyper = {k: v for k, v in params.items() if k != "log_every"}
    return SB3Agent(scenario, SB3Config(algo=name, hyperparameters=hyper, log_every=log_every), seed=seed)


for _kind in SB3Agent.kinds:
    register_kind(_kind, SB3Agent.load)
