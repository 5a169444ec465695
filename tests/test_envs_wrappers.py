"""Wrappers (flat actions, state discretizer, log recorder) and the pacing-beats-greedy scenario sanity check."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

import adrl  # noqa: F401  (registers the ids)
from adrl.actions import flat_index
from adrl.agents.baselines import GreedyPolicy, PacingPolicy, RandomPolicy
from adrl.agents.discretizer import DiscreteObservationWrapper, StateDiscretizer
from adrl.envs.ad_placement import AdPlacementEnv
from adrl.envs.registration import GROUND_TRUTH_ID
from adrl.envs.vector import AdPlacementVectorEnv
from adrl.envs.wrappers import FlatActionVectorWrapper, FlatActionWrapper, LogRecorder
from adrl.errors import ConfigError, InvalidAction
from adrl.evaluation import ReturnSummary, choose_pacing_gap, episode_returns
from adrl.logs import read_logs
from adrl.scenario import Scenario


def test_flat_actions_index_the_factored_action_like_the_agents_do() -> None:
    env = FlatActionWrapper(gym.make(GROUND_TRUTH_ID))
    assert env.action_space == gym.spaces.Discrete(144)
    nvec = (4, 3, 12)
    for k in (0, 1, 37, 143):
        triple = env.action(np.int64(k))
        assert int(flat_index(triple, nvec)) == k
        assert env.reverse_action(triple) == k
    env.reset(seed=0)
    _, _, _, _, info = env.step(np.int64(flat_index(np.array([0, 2, 8]), nvec)))
    assert info["shown"]
    with pytest.raises(InvalidAction, match=r"0\.\.143"):
        env.step(np.int64(144))


def test_the_flat_vector_view_steps_the_native_batch() -> None:
    envs = FlatActionVectorWrapper(AdPlacementVectorEnv(8))
    envs.reset(seed=0)
    obs, reward, *_ = envs.step(np.arange(8) * 17)  # type: ignore[var-annotated, unused-ignore]
    assert obs.shape[0] == 8 and reward.shape == (8,)
    assert envs.single_action_space == gym.spaces.Discrete(144)


def test_the_discretizer_gives_in_range_states_batched_or_one_at_a_time() -> None:
    envs = AdPlacementVectorEnv(512)
    d = StateDiscretizer(envs.layout)
    assert d.n_states == 4 * 24 * 6 * 4
    obs, _ = envs.reset(seed=0)
    rng = np.random.default_rng(0)
    seen: set[int] = set()
    for _ in range(20):
        states = d.discretize(obs)
        assert states.dtype == np.int64 and states.shape == (512,)
        assert ((states >= 0) & (states < d.n_states)).all()
        assert [d.discretize(o) for o in obs[:5]] == states[:5].tolist()
        seen.update(states.tolist())
        obs, *_ = envs.step(rng.integers(0, [4, 3, 12], size=(512, 3)))
    assert len(seen) > 150  # it separates the states that occur
    a, b = obs[0].copy(), obs[0].copy()
    b[envs.layout.index("hour")] = (a[envs.layout.index("hour")] + 1) % 24
    assert d.discretize(a) != d.discretize(b)


def test_the_discretizer_validates_its_bins() -> None:
    layout = AdPlacementEnv().layout
    with pytest.raises(ConfigError, match="unknown observation feature"):
        StateDiscretizer(layout, {"segmnet": None})
    with pytest.raises(ConfigError, match="give its bin edges"):
        StateDiscretizer(layout, {"clicks_today": None})
    with pytest.raises(ConfigError, match="strictly increase"):
        StateDiscretizer(layout, {"clicks_today": (2, 1)})
    assert StateDiscretizer(layout, {"segment": None, "clicks_today": (1,)}).n_states == 8


def test_discrete_observations_for_tabular_agents() -> None:
    env = DiscreteObservationWrapper(gym.make(GROUND_TRUTH_ID))
    state, _ = env.reset(seed=0)
    assert env.observation_space.contains(state)
    state, *_ = env.step(np.array([0, 0, 0]))
    assert env.observation_space.contains(state)


def test_the_recorder_writes_episodes_in_the_logged_data_schema(tmp_path: Path) -> None:
    env = AdPlacementEnv()
    policy = RandomPolicy(env.scenario, seed=0)
    path = tmp_path / "episodes.parquet"
    returns = []
    with LogRecorder(env, path, policy=policy, chunk_rows=64) as rec:
        for episode in range(30):
            obs, _ = rec.reset(seed=episode)
            total, done = 0.0, False
            while not done:
                obs, reward, terminated, truncated, _ = rec.step(policy.predict(obs)[0])
                total += float(reward)
                done = terminated or truncated
            returns.append(total)
        assert not path.exists()  # atomic: the file appears on close
    df = read_logs(path)
    assert len(df) == rec.n_rows
    assert df["episode_id"].nunique() == 30
    np.testing.assert_allclose(df.groupby("episode_id")["reward"].sum().to_numpy(), returns)
    np.testing.assert_allclose(df["propensity"], 1 / 144)
    np.testing.assert_allclose(df["propensity_slot"], 1 / 3)
    first = df[df["step"] == 0]
    assert (first["x_day_progress"] == 0.0).all() and (first["x_hours_since_last_ad"] == 24.0).all()
    assert {"p_click", "p_conversion", "p_leave"} <= set(df.columns)
    assert (df.groupby("episode_id")["step"].max() + 1 == df.groupby("episode_id").size()).all()


def test_the_recorder_logs_a_deterministic_policy_with_propensity_one(tmp_path: Path) -> None:
    env = AdPlacementEnv()
    greedy = GreedyPolicy(env.scenario)
    rec = LogRecorder(env, tmp_path / "greedy.parquet", policy="deterministic")
    obs, _ = rec.reset(seed=0)
    for _ in range(5):
        obs, _, terminated, truncated, _ = rec.step(greedy.predict(obs)[0])
        if terminated or truncated:
            obs, _ = rec.reset()
    rec.close()
    df = read_logs(tmp_path / "greedy.parquet")
    assert len(df) == 5 and (df["propensity"] == 1.0).all()
    with pytest.raises(ConfigError, match="MultiDiscrete"):
        LogRecorder(FlatActionWrapper(env), tmp_path / "x.parquet", policy="deterministic")  # type: ignore[arg-type]


def test_pacing_beats_always_show_now_greedy_by_15_percent_on_the_ground_truth() -> None:
    sc = Scenario()
    gap = choose_pacing_gap(sc, seed=0, n_episodes=3000)
    greedy = ReturnSummary.of(episode_returns(GreedyPolicy(sc), sc, n_episodes=6000, seed=1))
    pacing = ReturnSummary.of(episode_returns(PacingPolicy(sc, gap), sc, n_episodes=6000, seed=1))
    assert pacing.mean >= 1.15 * greedy.mean
    assert pacing.ci95[0] > greedy.ci95[1]  # not a fluke of the sample
