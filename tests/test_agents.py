"""Agents learn, expose exact action probabilities, and save/load without changing a decision."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from adrl.actions import flat_index
from adrl.agents.bandits import LinUCBAgent, LinUCBConfig
from adrl.agents.baselines import EpsilonGreedyPolicy, GreedyPolicy, PacingPolicy, RandomPolicy
from adrl.agents.q_learning import QLearningConfig, TabularQAgent
from adrl.agents.registry import load_policy_artifact
from adrl.agents.reinforce import ReinforceAgent, ReinforceConfig
from adrl.agents.sb3 import SB3Agent, SB3Config
from adrl.envs.vector import AdPlacementVectorEnv
from adrl.errors import ArtifactError
from adrl.evaluation import evaluate_policy
from adrl.features import FeatureLayout
from adrl.scenario import Scenario
from tests.agent_helpers import tiny_scenario

TINY = tiny_scenario()


def observations(scenario: Scenario, n: int = 300, seed: int = 0) -> np.ndarray:
    env = AdPlacementVectorEnv(n, scenario)
    obs, _ = env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    rows = [obs]
    for _ in range(4):  # later hours and some history too
        obs, *_ = env.step(np.stack([rng.integers(0, k, n) for k in scenario.action_nvec], axis=1))
        rows.append(obs)
    return np.concatenate(rows)


def beats_random(agent: Any, scenario: Scenario, n: int = 4000) -> tuple[float, float, float]:
    learned = evaluate_policy(agent, scenario, n_episodes=n, seed=11)
    rand = evaluate_policy(RandomPolicy(scenario, seed=3), scenario, n_episodes=n, seed=11, deterministic=False)
    gap = learned.overall.mean_return - rand.overall.mean_return
    return gap, float(np.hypot(learned.overall.sem, rand.overall.sem)), learned.overall.mean_return


def trained(name: str) -> Any:
    env = AdPlacementVectorEnv(256, TINY)
    if name == "q_learning":
        return TabularQAgent(TINY, QLearningConfig(log_every=10_000), seed=0).learn(env, 300_000)
    if name == "reinforce":
        return ReinforceAgent(TINY, ReinforceConfig(hidden=32, lr=0.01, value_lr=0.01), seed=0).learn(env, 60_000)
    if name == "linucb":
        return LinUCBAgent(TINY, LinUCBConfig(), seed=0).learn(AdPlacementVectorEnv(64, TINY), 5_000)
    hyper = {
        "ppo": {"n_steps": 16, "batch_size": 1024, "n_epochs": 4, "learning_rate": 3e-3, "ent_coef": 0.01},
        "a2c": {"n_steps": 8, "learning_rate": 3e-3},
        "dqn": {"learning_starts": 1000, "buffer_size": 20_000, "train_freq": 1, "gradient_steps": 2,
                "exploration_fraction": 0.5, "learning_rate": 1e-3, "target_update_interval": 250, "batch_size": 128},
    }[name]  # fmt: skip
    steps, n_envs = {"ppo": (40_000, 64), "a2c": (40_000, 64), "dqn": (30_000, 8)}[name]
    agent = SB3Agent(TINY, SB3Config(algo=name, hyperparameters=hyper), seed=0)
    return agent.learn(AdPlacementVectorEnv(n_envs, TINY), steps)


@pytest.fixture(scope="module", params=["q_learning", "reinforce", "linucb", "ppo", "a2c", "dqn"])
def agent(request: pytest.FixtureRequest) -> Any:
    return trained(request.param)


def test_agent_beats_random(agent: Any) -> None:
    gap, se, _ = beats_random(agent, TINY)
    assert gap > 3 * se, f"{agent.kind}: {gap:.4f} over random with standard error {se:.4f}"


def test_action_probabilities_are_a_distribution_that_predict_follows(agent: Any) -> None:
    obs = observations(TINY)
    probs = agent.action_probabilities(obs)
    assert probs.shape == (obs.shape[0], TINY.n_actions)
    assert np.all(probs >= 0)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    chosen = flat_index(agent.predict(obs, deterministic=True), TINY.action_nvec)
    assert np.all(probs[np.arange(len(obs)), chosen] >= probs.max(axis=1) - 1e-6)  # the mode is what it plays


def test_save_load_round_trip_predicts_identically(agent: Any, tmp_path: Path) -> None:
    obs = observations(TINY)
    agent.save(tmp_path / "policy")
    loaded = load_policy_artifact(tmp_path / "policy", expect_layout=FeatureLayout.from_scenario(TINY))
    assert type(loaded) is type(agent)
    np.testing.assert_array_equal(loaded.predict(obs), agent.predict(obs))
    np.testing.assert_allclose(loaded.action_probabilities(obs), agent.action_probabilities(obs), atol=1e-7)
    assert loaded.steps_done == agent.steps_done


@pytest.mark.parametrize("stochastic", ["reinforce", "epsilon"])
def test_sampling_frequencies_match_action_probabilities(stochastic: str) -> None:
    if stochastic == "reinforce":
        policy: Any = ReinforceAgent(TINY, ReinforceConfig(hidden=16), seed=1)
    else:
        policy = EpsilonGreedyPolicy(PacingPolicy(TINY, 3), 0.4, seed=2)
    obs = np.repeat(observations(TINY, n=1, seed=4)[:1], 40_000, axis=0)
    probs = policy.action_probabilities(obs[:1])[0]
    counts = np.bincount(
        flat_index(policy.predict(obs, deterministic=False), TINY.action_nvec), minlength=TINY.n_actions
    )
    freq = counts / len(obs)
    assert np.abs(freq - probs).max() < 4 * np.sqrt(probs.max() * (1 - probs.max()) / len(obs)) + 1e-3


def test_per_component_epsilon_round_trips_and_bad_rates_are_refused(tmp_path: Path) -> None:
    policy = EpsilonGreedyPolicy(PacingPolicy(TINY, 3), (1.0, 0.5, 0.0), seed=2)
    obs = observations(TINY)
    pd, ps, pc = policy.component_probabilities(obs)
    np.testing.assert_allclose(pd, 1 / TINY.n_delays)  # ε = 1: uniform whatever the base says
    assert set(np.unique(ps.round(9))) == {round(0.5 / TINY.n_slots, 9), round(0.5 + 0.5 / TINY.n_slots, 9)}
    np.testing.assert_array_equal(pc.argmax(axis=1), policy.base.predict(obs)[:, 2])
    assert set(np.unique(pc)) == {0.0, 1.0}
    policy.save(tmp_path / "eg")
    loaded = load_policy_artifact(tmp_path / "eg")
    assert isinstance(loaded, EpsilonGreedyPolicy) and loaded.epsilon == (1.0, 0.5, 0.0)
    np.testing.assert_array_equal(loaded.action_probabilities(obs), policy.action_probabilities(obs))
    manifest = tmp_path / "eg" / "manifest.json"
    for bad in ([0.1, 0.2], [0.1, 2.0, 0.1], "0.3", True):
        data = json.loads(manifest.read_text())
        data["epsilon"] = bad
        manifest.write_text(json.dumps(data))
        with pytest.raises(ArtifactError, match="epsilon must be a number in"):
            load_policy_artifact(tmp_path / "eg")
    for bad_rate in (-0.1, (0.1, 0.2), (0.1, 0.2, 1.01)):
        with pytest.raises(ValueError, match="epsilon must"):
            EpsilonGreedyPolicy(PacingPolicy(TINY, 3), bad_rate)


def test_q_learning_beats_greedy_on_the_default_market_with_a_small_budget() -> None:
    sc = Scenario()
    agent = TabularQAgent(sc, QLearningConfig(log_every=10**9), seed=0).learn(
        AdPlacementVectorEnv(4096, sc), 20_000_000
    )
    learned = evaluate_policy(agent, sc, n_episodes=6000, seed=5)
    greedy = evaluate_policy(GreedyPolicy(sc), sc, n_episodes=6000, seed=5)
    assert learned.overall.ci_low > greedy.overall.ci_high


def test_a_policy_for_another_market_is_refused(tmp_path: Path) -> None:
    GreedyPolicy(TINY).save(tmp_path / "p")
    with pytest.raises(ArtifactError, match="does not match the environment"):
        load_policy_artifact(tmp_path / "p", expect_layout=FeatureLayout.from_scenario(Scenario()))


@pytest.mark.parametrize("damage", ["missing_manifest", "truncated_weights", "bad_shape", "bad_kind"])
def test_damaged_artifacts_give_clear_errors(tmp_path: Path, damage: str) -> None:
    q = TabularQAgent(TINY, seed=0)
    q.save(tmp_path / "q")
    r = ReinforceAgent(TINY, ReinforceConfig(hidden=8), seed=0)
    r.save(tmp_path / "r")
    if damage == "missing_manifest":
        (tmp_path / "q" / "manifest.json").unlink()
        with pytest.raises(ArtifactError, match=r"manifest.*does not exist"):
            load_policy_artifact(tmp_path / "q")
    elif damage == "truncated_weights":
        w = tmp_path / "r" / "weights.safetensors"
        w.write_bytes(w.read_bytes()[:100])
        with pytest.raises(ArtifactError, match=r"truncated|not a readable"):
            load_policy_artifact(tmp_path / "r")
    elif damage == "bad_shape":
        np.save(tmp_path / "q" / "q.npy", np.zeros((3, 3)))
        with pytest.raises(ArtifactError, match="shape"):
            load_policy_artifact(tmp_path / "q")
    else:
        text = (tmp_path / "q" / "manifest.json").read_text().replace('"tabular-q"', '"mystery"')
        (tmp_path / "q" / "manifest.json").write_text(text)
        with pytest.raises(ArtifactError, match="unknown policy kind 'mystery'"):
            load_policy_artifact(tmp_path / "q")
