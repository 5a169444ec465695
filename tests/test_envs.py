"""The single environment, both registered ids: API checks, fuzzing, errors, determinism, the learned backend.

The learned id is tested with a real fitted behavior model: a tiny log simulated with ``adrl.simulate`` and fitted
with ``adrl.behavior.fit_adrl`` (one small epoch), once per session. The ``ResponseModel``-object path is tested with
a stand-in model (a constant response) in ``test_envs_vector.py`` and here.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import adrl  # noqa: F401  (registers the ids)
from adrl.envs.ad_placement import AdPlacementEnv
from adrl.envs.registration import GROUND_TRUTH_ID, LEARNED_ID
from adrl.envs.vector import AdPlacementVectorEnv
from adrl.errors import ConfigError, InvalidAction, ResetNeeded
from adrl.scenario import Scenario
from adrl.world import Response, UserBatch

DEFAULT_YAML = Path(__file__).resolve().parents[1] / "configs" / "scenarios" / "default.yaml"


@pytest.fixture(scope="session")
def behavior_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A behavior model fitted (one small epoch) on 1500 simulated user-days of the default scenario."""
    from adrl.behavior import FitConfig, fit_adrl
    from adrl.simulate import simulate

    root = tmp_path_factory.mktemp("behavior")
    simulate(Scenario(), n_users=1500, out=root / "logs.parquet", seed=0, progress=False)
    cfg = FitConfig(epochs=1, baselines=False, hidden=(16,), embedding_dim=4, fm_dim=4, seed=0)
    report = fit_adrl(root / "logs.parquet", cfg=cfg, progress=False)
    report.model.save(root / "model")
    return root / "model"


class ConstantResponse:
    """Stand-in ResponseModel: the same probabilities for every impression."""

    def __init__(self, p_click: float = 0.3, p_conversion: float = 0.5, p_leave: float = 0.05) -> None:
        self.p = (p_click, p_conversion, p_leave)

    def probabilities(self, batch: UserBatch, action: np.ndarray) -> Response:
        n = len(batch)
        return Response(*(np.full(n, p) for p in self.p))


def make(env_id: str, behavior_dir: Path, **kwargs: Any) -> gym.Env[np.ndarray, np.ndarray]:
    if env_id == LEARNED_ID:
        kwargs["behavior_model"] = behavior_dir
    return gym.make(env_id, **kwargs)


def rollout(env: gym.Env[np.ndarray, np.ndarray], seed: int, actions: np.ndarray) -> list[Any]:
    """Observations, rewards, flags and infos of playing ``actions`` (resetting after each episode)."""
    out: list[Any] = []
    obs, info = env.reset(seed=seed)
    out.append((obs, info))
    for a in actions:
        step = env.step(a)
        out.append(step)
        if step[2] or step[3]:
            out.append(env.reset())
    return out


def assert_same(a: list[Any], b: list[Any]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        for u, v in zip(x, y, strict=True):
            if isinstance(u, np.ndarray):
                np.testing.assert_array_equal(u, v)
            else:
                assert u == v


# ---- API conformance ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("render_mode", [None, "ansi"])
@pytest.mark.parametrize("env_id", [GROUND_TRUTH_ID, LEARNED_ID])
def test_gymnasium_check_env_passes_without_warnings(env_id: str, render_mode: str | None, behavior_dir: Path) -> None:
    env = make(env_id, behavior_dir, render_mode=render_mode)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gym_check_env(env.unwrapped, skip_render_check=False)


@pytest.mark.parametrize("env_id", [GROUND_TRUTH_ID, LEARNED_ID])
def test_sb3_check_env_passes_without_warnings(env_id: str, behavior_dir: Path) -> None:
    env = make(env_id, behavior_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sb3_check_env(env.unwrapped, warn=True)


def test_spaces_match_the_feature_layout_and_scenario() -> None:
    env = AdPlacementEnv()
    assert isinstance(env.action_space, gym.spaces.MultiDiscrete)
    assert env.action_space.nvec.tolist() == [4, 3, 12]
    assert isinstance(env.observation_space, gym.spaces.Box)
    np.testing.assert_array_equal(env.observation_space.low, env.layout.obs_low)
    np.testing.assert_array_equal(env.observation_space.high, env.layout.obs_high)
    assert env.observation_space.dtype == np.float32


def test_scenario_can_be_a_yaml_path_or_an_object() -> None:
    small = Scenario(horizon=8, delays=(0, 2))
    env = gym.make(GROUND_TRUTH_ID, scenario=small)
    assert env.action_space.nvec.tolist() == [2, 3, 12]  # type: ignore[attr-defined]
    from_yaml = gym.make(GROUND_TRUTH_ID, scenario=str(DEFAULT_YAML))
    assert from_yaml.unwrapped.scenario == Scenario()  # type: ignore[attr-defined]


# ---- fuzzing ----------------------------------------------------------------------------------------------------
_ENV = AdPlacementEnv()
_LEARNED: dict[str, AdPlacementEnv] = {}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seed=st.integers(0, 2**32 - 1),
    actions=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 2), st.integers(0, 11)), min_size=1, max_size=40),
    learned=st.booleans(),
)
def test_random_actions_never_leave_the_observation_space(
    seed: int, actions: list[tuple[int, int, int]], learned: bool, behavior_dir: Path
) -> None:
    if learned and "env" not in _LEARNED:
        _LEARNED["env"] = AdPlacementEnv(behavior_model=behavior_dir)
    env = _LEARNED["env"] if learned else _ENV
    obs, _ = env.reset(seed=seed)
    assert env.observation_space.contains(obs)
    for a in actions:
        obs, reward, terminated, truncated, info = env.step(np.array(a))
        assert env.observation_space.contains(obs), obs
        assert np.isfinite(obs).all() and np.isfinite(float(reward))
        for key in ("p_click", "p_conversion", "p_leave"):
            assert 0.0 <= info[key] <= 1.0 and np.isfinite(info[key])
        if terminated or truncated:
            obs, _ = env.reset()
            assert env.observation_space.contains(obs)


def test_info_holds_plain_values_and_the_reward_follows_the_outcome() -> None:
    env = AdPlacementEnv()
    sc = env.scenario
    env.reset(seed=3)
    rng = np.random.default_rng(0)
    for _ in range(200):
        a = np.array([rng.integers(0, k) for k in sc.action_nvec])
        _, reward, terminated, truncated, info = env.step(a)
        assert set(info) == {"p_click", "p_conversion", "p_leave", "hour", "shown", "click", "conversion", "leave",
                             "segment"}  # fmt: skip
        assert all(type(v) in (int, float, bool) for v in info.values())
        expected = 0.0
        if info["shown"]:
            value = sc.rewards.conversion_weight * sc.creatives[int(a[2])].conversion_value
            expected = sc.rewards.click_value * info["click"] + value * info["conversion"] - sc.slots[int(a[1])].cost
        assert reward == pytest.approx(expected)
        assert terminated == info["leave"]
        if terminated or truncated:
            env.reset()


# ---- errors -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("action", "message"),
    [
        (np.array([4, 0, 0]), "delay index 4, expected 0..3"),
        (np.array([0, -1, 0]), "slot index -1, expected 0..2"),
        (np.array([0, 0, 12]), "creative index 12, expected 0..11"),
        (np.array([0.5, 0, 0]), "must be integers"),
        (np.array([0, 0]), "shape (3,)"),
        (np.array([[0, 0, 0]]), "shape (3,)"),
    ],
)
def test_an_invalid_action_raises_a_clear_error(action: np.ndarray, message: str) -> None:
    env = gym.make(GROUND_TRUTH_ID).unwrapped
    env.reset(seed=0)
    with pytest.raises(InvalidAction, match=message.replace("(", r"\(").replace(")", r"\)")):
        env.step(action)


def test_stepping_before_reset_or_after_the_end_raises_reset_needed() -> None:
    env = AdPlacementEnv()
    with pytest.raises(ResetNeeded, match="before reset"):
        env.step(np.array([0, 0, 0]))
    env.reset(seed=0)
    done = False
    while not done:
        _, _, terminated, truncated, _ = env.step(np.array([3, 1, 0]))
        done = terminated or truncated
    with pytest.raises(ResetNeeded, match="after the episode ended"):
        env.step(np.array([0, 0, 0]))


def test_the_learned_id_requires_a_behavior_model() -> None:
    with pytest.raises(ConfigError, match="needs behavior_model="):
        gym.make(LEARNED_ID)
    with pytest.raises(ConfigError, match="needs behavior_model="):
        gym.make_vec(LEARNED_ID, num_envs=2)
    with pytest.raises(ConfigError, match="behavior_model must be a path"):
        gym.make(LEARNED_ID, behavior_model=42)


def test_unknown_reset_options_and_render_modes_are_refused() -> None:
    with pytest.raises(ConfigError, match="render_mode"):
        AdPlacementEnv(render_mode="human")
    with pytest.raises(ConfigError, match="no options"):
        AdPlacementEnv().reset(seed=0, options={"segmnet": 1})


# ---- determinism ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("env_id", [GROUND_TRUTH_ID, LEARNED_ID])
def test_same_seed_and_actions_give_the_same_trajectory(env_id: str, behavior_dir: Path) -> None:
    actions = np.random.default_rng(1).integers(0, [4, 3, 12], size=(150, 3))
    a = rollout(make(env_id, behavior_dir), 7, actions)
    b = rollout(make(env_id, behavior_dir), 7, actions)
    assert_same(a, b)
    c = rollout(make(env_id, behavior_dir), 8, actions)
    assert not np.array_equal(a[0][0], c[0][0]) or a[1][1] != c[1][1]


def test_reset_without_seed_continues_the_stream_and_reseeding_restarts_it() -> None:
    env = AdPlacementEnv()
    first, _ = env.reset(seed=5)
    second, _ = env.reset()
    again, _ = env.reset(seed=5)
    np.testing.assert_array_equal(first, again)
    assert env.reset(seed=5)[0].tobytes() == first.tobytes() and not np.array_equal(first, second)


@pytest.mark.parametrize("env_id", [GROUND_TRUTH_ID, LEARNED_ID])
@pytest.mark.parametrize("mode", ["NextStep", "SameStep"])
def test_a_vector_env_of_one_replays_the_single_env_exactly(env_id: str, mode: str, behavior_dir: Path) -> None:
    """num_envs=1: same seed and actions, identical observations, rewards, flags and probabilities."""
    kwargs: dict[str, Any] = {"behavior_model": behavior_dir} if env_id == LEARNED_ID else {}
    single = gym.make(env_id, **kwargs)
    vector = gym.make_vec(env_id, num_envs=1, autoreset_mode=mode, **kwargs)
    actions = np.random.default_rng(2).integers(0, [4, 3, 12], size=(120, 3))
    obs, _ = single.reset(seed=11)
    vobs, _ = vector.reset(seed=11)
    np.testing.assert_array_equal(vobs[0], obs)
    n_episodes = 0
    done = False
    for a in actions:
        if done and mode == "NextStep":  # the vector env's reset step; its action is ignored
            vobs, vrew, vterm, vtrunc, _ = vector.step(a[None, :])
            np.testing.assert_array_equal(vobs[0], obs)
            assert vrew[0] == 0.0 and not vterm[0] and not vtrunc[0]
        obs, reward, terminated, truncated, info = single.step(a)
        vobs, vrew, vterm, vtrunc, vinfo = vector.step(a[None, :])
        assert vrew[0] == reward and vterm[0] == terminated and vtrunc[0] == truncated
        assert vinfo["p_click"][0] == info["p_click"] and vinfo["click"][0] == info["click"]
        done = terminated or truncated
        if done:
            n_episodes += 1
            if mode == "SameStep":
                np.testing.assert_array_equal(vinfo["final_obs"][0], obs)
            obs, _ = single.reset()
            if mode == "SameStep":
                np.testing.assert_array_equal(vobs[0], obs)
        else:
            np.testing.assert_array_equal(vobs[0], obs)
    assert n_episodes >= 3


def test_render_ansi_prints_the_days_timeline() -> None:
    env = gym.make(GROUND_TRUTH_ID, render_mode="ansi")
    env.reset(seed=0)
    done = False
    steps = 0
    while not done:
        _, _, terminated, truncated, _ = env.step(np.array([1, 0, 8]))
        done = terminated or truncated
        steps += 1
    text: object = env.render()
    assert isinstance(text, str)
    assert "segment=" in text and "travel_0" in text and "return" in text
    assert len(text.strip().splitlines()) >= steps + 2
    assert AdPlacementEnv().render() is None  # no render mode: nothing


def test_a_response_model_object_drives_the_probabilities() -> None:
    env = AdPlacementEnv(behavior_model=ConstantResponse(p_click=1.0, p_conversion=0.0, p_leave=0.0))
    env.reset(seed=0)
    _, reward, terminated, _, info = env.step(np.array([0, 0, 0]))
    assert info["p_click"] == 1.0 and info["click"] and not info["conversion"] and not terminated
    assert reward == pytest.approx(env.scenario.rewards.click_value - env.scenario.slots[0].cost)
    assert env.backend == "ConstantResponse"
    assert AdPlacementVectorEnv(2, behavior_model=ConstantResponse()).backend == "ConstantResponse"


def test_the_learned_backend_uses_the_fitted_model(behavior_dir: Path) -> None:
    from adrl.behavior import LearnedResponse

    env = gym.make(LEARNED_ID, behavior_model=behavior_dir).unwrapped
    assert isinstance(env.response, LearnedResponse)  # type: ignore[attr-defined]
    truth = AdPlacementEnv()
    env.reset(seed=4)
    truth.reset(seed=4)
    _, _, _, _, learned_info = env.step(np.array([0, 2, 8]))
    _, _, _, _, true_info = truth.step(np.array([0, 2, 8]))
    assert learned_info["p_click"] != true_info["p_click"]  # a model, not the world
    assert 0.0 < learned_info["p_click"] < 1.0
