"""The SB3 ``VecEnv`` adapter: same-step autoreset with terminal observations, and SB3 agents train on it."""

from __future__ import annotations

import numpy as np
import pytest
from stable_baselines3 import A2C, DQN, PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.vec_env import VecMonitor

from adrl.envs.sb3 import AdPlacementSB3VecEnv
from adrl.errors import InvalidAction


def test_done_slots_carry_the_terminal_observation_and_restart() -> None:
    venv = AdPlacementSB3VecEnv(num_envs=16, seed=0)
    obs = np.asarray(venv.reset())
    assert obs.shape == (16, venv.observation_space.shape[0])  # type: ignore[index]
    progress = venv.venv.layout.index("day_progress")
    rng = np.random.default_rng(0)
    n_done = n_truncated = 0
    for _ in range(40):
        next_obs, reward, done, infos = venv.step(rng.integers(0, [4, 3, 12], size=(16, 3)))
        obs = np.asarray(next_obs)
        assert reward.shape == (16,) and done.dtype == bool and len(infos) == 16
        for i in np.flatnonzero(done):
            terminal = infos[i]["terminal_observation"]
            assert venv.observation_space.contains(terminal)
            assert obs[i, progress] == 0.0  # the next user's first observation
            if infos[i]["TimeLimit.truncated"]:
                n_truncated += 1
                assert terminal[progress] == 1.0
            n_done += 1
        for i in np.flatnonzero(~done):
            assert "terminal_observation" not in infos[i]
    assert n_done > 20 and n_truncated > 0


def test_the_same_seed_gives_the_same_rollout() -> None:
    def play(seed: int) -> list[np.ndarray]:
        venv = AdPlacementSB3VecEnv(num_envs=8, flat_actions=True)
        venv.seed(seed)
        out = [np.asarray(venv.reset())]
        rng = np.random.default_rng(1)
        for _ in range(30):
            obs, reward, done, _ = venv.step(rng.integers(0, 144, size=8))
            out += [np.asarray(obs), reward, done]
        return out

    for a, b in zip(play(4), play(4), strict=True):
        np.testing.assert_array_equal(a, b)


def test_flat_actions_are_checked() -> None:
    venv = AdPlacementSB3VecEnv(num_envs=2, flat_actions=True, seed=0)
    venv.reset()
    with pytest.raises(InvalidAction):
        venv.step(np.array([0, 144]))


@pytest.mark.parametrize("algo", ["ppo", "a2c", "dqn"])
def test_sb3_agents_train_on_the_native_batch(algo: str) -> None:
    venv = VecMonitor(AdPlacementSB3VecEnv(num_envs=32, flat_actions=algo == "dqn", seed=0))
    model: BaseAlgorithm
    if algo == "ppo":
        model = PPO("MlpPolicy", venv, n_steps=4, batch_size=128, n_epochs=1, seed=0, device="cpu")
    elif algo == "a2c":
        model = A2C("MlpPolicy", venv, n_steps=4, seed=0, device="cpu")
    else:
        model = DQN("MlpPolicy", venv, learning_starts=128, buffer_size=1000, train_freq=4, seed=0, device="cpu")
    model.learn(total_timesteps=256)
    assert model.num_timesteps >= 256
    action, _ = model.predict(np.asarray(venv.reset()), deterministic=True)
    assert venv.action_space.contains(action[0])
