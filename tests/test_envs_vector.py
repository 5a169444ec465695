"""The native vector env: fast path from ``make_vec``, autoreset semantics, determinism, statistical equivalence.

Exact single-vs-vector equivalence (``num_envs=1``) is in ``test_envs.py`` for both ids; here ``num_envs > 1``,
where one generator drives the batch by design, so the test is statistical.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode

import adrl  # noqa: F401  (registers the ids)
from adrl.envs.ad_placement import AdPlacementEnv
from adrl.envs.registration import GROUND_TRUTH_ID
from adrl.envs.vector import STEP_INFO_KEYS, AdPlacementVectorEnv
from adrl.errors import ConfigError, InvalidAction, ResetNeeded
from adrl.scenario import Scenario
from adrl.world import Response, UserBatch


class ConstantResponse:
    def probabilities(self, batch: UserBatch, action: np.ndarray) -> Response:
        n = len(batch)
        return Response(np.full(n, 0.2), np.full(n, 0.5), np.full(n, 0.1))


def random_actions(rng: np.random.Generator, n: int, nvec: tuple[int, int, int] = (4, 3, 12)) -> np.ndarray:
    return rng.integers(0, nvec, size=(n, 3))


def test_make_vec_builds_the_native_vector_env() -> None:
    envs = gym.make_vec(GROUND_TRUTH_ID, num_envs=8)
    assert isinstance(envs, AdPlacementVectorEnv)
    assert envs.metadata["autoreset_mode"] is AutoresetMode.NEXT_STEP
    same = gym.make_vec(GROUND_TRUTH_ID, num_envs=8, autoreset_mode=AutoresetMode.SAME_STEP)
    assert same.metadata["autoreset_mode"] is AutoresetMode.SAME_STEP
    obs, info = envs.reset(seed=0)
    assert obs.shape == (8, envs.unwrapped.layout.obs_dim) and obs.dtype == np.float32
    assert envs.observation_space.contains(obs)
    assert info["segment"].shape == (8,) and info["_segment"].all()


@pytest.mark.parametrize("mode", [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP])
def test_random_actions_keep_every_observation_inside_the_space(mode: AutoresetMode) -> None:
    envs = AdPlacementVectorEnv(256, autoreset_mode=mode)
    obs, _ = envs.reset(seed=1)
    rng = np.random.default_rng(0)
    for _ in range(60):
        obs, reward, terminated, truncated, info = envs.step(random_actions(rng, 256))
        assert envs.observation_space.contains(obs)
        assert np.isfinite(reward).all()
        assert reward.dtype == np.float64 and terminated.dtype == bool and truncated.dtype == bool
        assert not (terminated & truncated).any()
        for key in STEP_INFO_KEYS:
            assert info[key].shape == (256,) and info[f"_{key}"].shape == (256,)


@pytest.mark.parametrize("mode", [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP])
def test_same_seed_and_actions_give_the_same_batch_trajectory(mode: AutoresetMode) -> None:
    def play(seed: int) -> list[Any]:
        envs = AdPlacementVectorEnv(64, autoreset_mode=mode)
        rng = np.random.default_rng(3)
        out = [envs.reset(seed=seed)[0]]
        for _ in range(40):
            obs, reward, terminated, truncated, info = envs.step(random_actions(rng, 64))
            out += [obs, reward, terminated, truncated, info["p_click"], info["click"]]
        return out

    a, b, c = play(9), play(9), play(10)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0])


def test_next_step_autoreset_returns_the_new_user_without_a_transition() -> None:
    envs = AdPlacementVectorEnv(32)  # NEXT_STEP
    envs.reset(seed=2)
    rng = np.random.default_rng(0)
    layout = envs.layout
    progress = layout.index("day_progress")
    since = layout.index("hours_since_last_ad")
    seen_reset = 0
    autoreset = np.zeros(32, dtype=bool)
    for _ in range(60):
        obs, reward, terminated, truncated, info = envs.step(random_actions(rng, 32))
        if autoreset.any():
            seen_reset += int(autoreset.sum())
            assert (reward[autoreset] == 0.0).all()
            assert not terminated[autoreset].any() and not truncated[autoreset].any()
            assert (obs[autoreset, progress] == 0.0).all() and (obs[autoreset, since] == 24.0).all()
            assert not info["_p_click"][autoreset].any() and info["_p_click"][~autoreset].all()
            assert not info["click"][autoreset].any()  # no phantom outcomes in the discarded step
            assert (envs.users.epoch[autoreset] == 0).all()
        autoreset = terminated | truncated
    assert seen_reset > 20


def test_same_step_autoreset_reports_the_final_observation() -> None:
    envs = AdPlacementVectorEnv(32, autoreset_mode="SameStep")
    obs, _ = envs.reset(seed=2)
    rng = np.random.default_rng(0)
    progress = envs.layout.index("day_progress")
    n_done = 0
    for _ in range(40):
        obs, _, terminated, truncated, info = envs.step(random_actions(rng, 32))
        done = terminated | truncated
        if done.any():
            n_done += int(done.sum())
            np.testing.assert_array_equal(info["_final_obs"], done)
            finals = np.stack(list(info["final_obs"][done]))
            assert envs.single_observation_space.contains(finals[0])
            assert (finals[truncated[done], progress] == 1.0).all()  # the day ran out
            assert (obs[done, progress] == 0.0).all()  # the next user already starts
            assert (info["final_info"]["_p_click"] == done).all()
            assert all(x is None for x in info["final_obs"][~done])
        else:
            assert "final_obs" not in info
    assert n_done > 20


def test_many_users_have_the_same_return_distribution_as_single_envs() -> None:
    """Statistical equivalence (num_envs > 1 shares one stream): mean return of random actions within 4 SE."""
    n = 1500
    rng = np.random.default_rng(5)
    single = AdPlacementEnv()
    single_returns = []
    for i in range(n):
        single.reset(seed=i)
        total, done = 0.0, False
        while not done:
            _, reward, terminated, truncated, _ = single.step(random_actions(rng, 1)[0])
            total += float(reward)
            done = terminated or truncated
        single_returns.append(total)
    envs = AdPlacementVectorEnv(4 * n)
    envs.reset(seed=123)
    vector_returns = np.zeros(4 * n)
    running = np.ones(4 * n, dtype=bool)
    while running.any():
        _, vreward, vterminated, vtruncated, _ = envs.step(random_actions(rng, 4 * n))
        vector_returns += np.where(running, vreward, 0.0)
        running &= ~(vterminated | vtruncated)
    s, v = np.array(single_returns), vector_returns
    se = np.hypot(s.std(ddof=1) / np.sqrt(s.size), v.std(ddof=1) / np.sqrt(v.size))
    assert abs(s.mean() - v.mean()) < 4 * se, (s.mean(), v.mean(), se)


def test_the_response_backend_is_called_once_per_step_for_the_whole_batch() -> None:
    calls: list[int] = []

    class Counting(ConstantResponse):
        def probabilities(self, batch: UserBatch, action: np.ndarray) -> Response:
            calls.append(len(batch))
            return super().probabilities(batch, action)

    envs = AdPlacementVectorEnv(100, behavior_model=Counting())
    envs.reset(seed=0)
    rng = np.random.default_rng(0)
    for _ in range(30):
        envs.step(random_actions(rng, 100))
    assert calls == [100] * 30


def test_invalid_actions_and_calls_raise_clear_errors() -> None:
    envs = AdPlacementVectorEnv(4)
    with pytest.raises(ResetNeeded):
        envs.step(np.zeros((4, 3), dtype=np.int64))
    envs.reset(seed=0)
    with pytest.raises(InvalidAction, match=r"shape \(num_envs, 3\)"):
        envs.step(np.zeros((3, 3), dtype=np.int64))
    bad = np.zeros((4, 3), dtype=np.int64)
    bad[2, 2] = 99
    with pytest.raises(InvalidAction, match=r"creative index 99, expected 0\.\.11"):
        envs.step(bad)
    with pytest.raises(ConfigError, match="num_envs"):
        AdPlacementVectorEnv(0)
    with pytest.raises(ConfigError, match="autoreset_mode"):
        AdPlacementVectorEnv(2, autoreset_mode="Disabled")
    with pytest.raises(ConfigError, match="seed must be an int"):
        envs.reset(seed=[1, 2])  # type: ignore[arg-type]


def test_a_custom_scenario_changes_the_spaces() -> None:
    envs = gym.make_vec(GROUND_TRUTH_ID, num_envs=3, scenario=Scenario(horizon=6, delays=(0, 1)))
    assert envs.single_action_space.nvec.tolist() == [2, 3, 12]  # type: ignore[attr-defined]
    envs.reset(seed=0)
    rng = np.random.default_rng(0)
    lengths = np.zeros(3, dtype=int)
    for _ in range(7):
        _, _, terminated, truncated, _ = envs.step(random_actions(rng, 3, (2, 3, 12)))
        lengths += 1
        if (terminated | truncated).any():
            break
    assert lengths.max() <= 6
