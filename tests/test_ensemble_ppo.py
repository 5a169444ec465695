"""Issue 16: the ensemble knows where it is unsure, pessimism, batched PPO, the tuned rules and the oracle."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from adrl.agents.baselines import GreedyPolicy, PacingPolicy, RandomPolicy
from adrl.agents.ppo import PPOAgent, PPOConfig
from adrl.agents.registry import load_policy_artifact
from adrl.agents.rules import RulePolicy, tune_rules
from adrl.behavior import FitConfig, fit_adrl
from adrl.behavior.ensemble import EnsembleConfig, EnsembleResponse, fit_ensemble, is_ensemble
from adrl.behavior.support import LoggedSupport
from adrl.envs.pessimistic import PessimisticVectorEnv
from adrl.envs.vector import AdPlacementVectorEnv
from adrl.errors import ArtifactError, ConfigError
from adrl.evaluation import episode_returns, evaluate_policy, simulator_score
from adrl.features import FeatureLayout
from adrl.logs import feature_columns, read_logs
from adrl.simulate import simulate
from benchmarks.oracle import OraclePlanner, evaluate_oracle
from tests.agent_helpers import tiny_scenario

FIT = FitConfig(epochs=6, baselines=False, seed=0)


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny market logged by a policy that always shows now, in the feed: delay 2 and the popup are unseen."""
    sc = tiny_scenario()
    path = tmp_path_factory.mktemp("ens") / "logs.parquet"
    feed_now = RulePolicy(sc, timing="frequency-cap", cap=99, window=24, slot=0)  # never waits, feed only
    from adrl.agents.baselines import EpsilonGreedyPolicy

    simulate(sc, n_users=3000, out=path, seed=3, logging_policy=EpsilonGreedyPolicy(feed_now, (0.0, 0.0, 1.0)),
             progress=False)  # fmt: skip
    return path


@pytest.fixture(scope="module")
def ensemble(logged: Path, tmp_path_factory: pytest.TempPathFactory) -> EnsembleResponse:
    sc = tiny_scenario()
    base = fit_adrl(logged, sc, FIT, progress=False).model
    ens = fit_ensemble(logged, sc, FIT, EnsembleConfig(n_members=3, epochs=6, penalty=0.5), base=base)
    path = ens.save(tmp_path_factory.mktemp("ens_art") / "ensemble")
    assert is_ensemble(path) and not is_ensemble(path / "member-0")
    return EnsembleResponse.load(path, sc)


def _logged_obs(path: Path) -> tuple[np.ndarray, np.ndarray]:
    df = read_logs(path)
    df = df[df["shown"]]
    layout = FeatureLayout.from_scenario(tiny_scenario())
    return df[feature_columns(layout)].to_numpy(dtype=np.float32), df[["delay", "slot", "creative"]].to_numpy()


def test_disagreement_is_larger_off_the_logged_support(ensemble: EnsembleResponse, logged: Path) -> None:
    obs, action = _logged_obs(logged)
    assert ensemble.n_members == 4 and ensemble.penalty == 0.5  # base + 3 bootstrap members; penalty kept
    on = ensemble.disagreement(obs, action)
    off_action = action.copy()
    off_action[:, 0], off_action[:, 1] = 1, 1  # delay 2 hours, popup: never logged
    off = ensemble.disagreement(obs, off_action)
    assert np.all(on >= 0) and off.mean() > 1.1 * on.mean()
    spread_on = ensemble.member_probabilities(obs, action)[:, 0].std(axis=0).mean()  # of pCTR
    spread_off = ensemble.member_probabilities(obs, off_action)[:, 0].std(axis=0).mean()
    assert spread_off > 1.5 * spread_on


def _penalty_drops(ensemble: EnsembleResponse, **penalised: float) -> dict[str, float]:
    """Mean return without penalty minus with ``penalised`` (PessimisticVectorEnv's weights), for a policy that
    acts as logged ("on") and one that waits and uses the unlogged popup ("off"); same users and draws."""
    sc = tiny_scenario()
    policies = {
        "on": RulePolicy(sc, timing="frequency-cap", cap=99, window=24, slot=0),  # as logged
        "off": RulePolicy(sc, timing="pacing", min_gap=2, slot=1),  # waits and uses the unlogged popup
    }
    drop = {}
    for name, policy in policies.items():
        means = []
        for weights in (
            {"penalty": 0.0, "support_penalty": 0.0},
            {"penalty": 0.0, "support_penalty": 0.0, **penalised},
        ):
            env = PessimisticVectorEnv(AdPlacementVectorEnv(500, sc, ensemble), **weights)
            assert (env.penalty, env.support_penalty) == (weights["penalty"], weights["support_penalty"])
            obs, _ = env.reset(seed=7)
            total, running = np.zeros(500), np.ones(500, dtype=bool)
            while running.any():
                obs, reward, terminated, truncated, info = env.step(policy.predict(obs))
                assert info["disagreement"].shape == (500,) and np.all(info["disagreement"] >= 0)
                assert np.all(info["support_width"] >= 0) and info["support_count"].dtype == np.int64
                total += np.where(running, reward, 0.0)
                running &= ~(terminated | truncated)
            means.append(total.mean())
        drop[name] = means[0] - means[1]  # only the penalty differs
    return drop


def test_pessimistic_mode_lowers_returns_most_on_out_of_support_actions(ensemble: EnsembleResponse) -> None:
    drop = _penalty_drops(ensemble, penalty=1.0)
    assert drop["on"] > 0 and drop["off"] > 2 * drop["on"]


def test_logged_support_counts_every_shown_impression_and_is_widest_where_the_logs_are_silent(
    ensemble: EnsembleResponse, logged: Path
) -> None:
    obs, action = _logged_obs(logged)
    support = ensemble.support
    assert support is not None and support.n_impressions == len(obs)  # fit_ensemble counts the fit's logs
    on_n = support.count(obs, action)
    off_action = action.copy()
    off_action[:, 0], off_action[:, 1] = 1, 1  # delay 2 hours, popup: never logged
    assert np.all(on_n >= 1) and np.all(support.count(obs, off_action) == 0)
    fresh = LoggedSupport.from_logs(logged, tiny_scenario())  # the saved cells are the counted ones, in order
    assert np.array_equal(fresh.count(obs, action), on_n) and np.array_equal(fresh.counts, support.counts)
    mean = ensemble.member_probabilities(obs, action).mean(axis=0)
    on_u, _ = support.width(obs, action, mean[0], mean[1])
    off_mean = ensemble.member_probabilities(obs, off_action).mean(axis=0)
    off_u, _ = support.width(obs, off_action, off_mean[0], off_mean[1])
    assert np.all(on_u >= 0) and off_u.mean() > 3 * on_u.mean()


def test_count_based_mode_lowers_returns_most_on_out_of_support_actions(ensemble: EnsembleResponse) -> None:
    drop = _penalty_drops(ensemble, support_penalty=1.0)
    assert drop["on"] >= 0 and drop["off"] > 3 * drop["on"]


def test_evaluation_scores_the_objective_agents_train_on_and_rules_are_tuned_by_it(
    ensemble: EnsembleResponse,
) -> None:
    sc = tiny_scenario()
    counted = EnsembleResponse(ensemble.members, sc, support=ensemble.support, support_penalty=1.0)
    off = RulePolicy(sc, timing="pacing", min_gap=2, slot=1)  # waits and uses the unlogged popup
    on = RulePolicy(sc, timing="frequency-cap", cap=99, window=24, slot=0)  # as logged
    runs = {}
    for name, policy in (("on", on), ("off", off)):
        raw = evaluate_policy(policy, sc, n_episodes=400, seed=5, response=counted)
        pess = evaluate_policy(policy, sc, n_episodes=400, seed=5, response=counted, pessimistic=True)
        # the same users and outcomes: only the return is the penalised objective
        assert pess.overall.impressions_per_user == raw.overall.impressions_per_user
        assert pess.overall.churn_rate == raw.overall.churn_rate
        runs[name] = raw.overall.mean_return - pess.overall.mean_return
        score = simulator_score(sc, counted, seed=5, n_episodes=400)  # pessimistic by default, as agents train
        assert score(policy) == pytest.approx(pess.overall.mean_return)
        unpenalised = EnsembleResponse(ensemble.members, sc, support=ensemble.support)  # κ = 0: nothing to subtract
        plain = evaluate_policy(policy, sc, n_episodes=400, seed=5, response=unpenalised, pessimistic=True)
        assert plain.overall.mean_return == pytest.approx(raw.overall.mean_return)
    assert runs["on"] > 0 and runs["off"] > 3 * runs["on"]


def test_count_based_mode_refuses_an_ensemble_without_support_and_a_corrupt_one(
    ensemble: EnsembleResponse, tmp_path: Path
) -> None:
    sc = tiny_scenario()
    with pytest.raises(ConfigError, match="support_penalty > 0 needs"):
        EnsembleResponse(ensemble.members, sc, support_penalty=1.0)
    bare = EnsembleResponse(ensemble.members, sc)
    with pytest.raises(ConfigError, match="carries its logs' support"):
        PessimisticVectorEnv(AdPlacementVectorEnv(4, sc, bare), support_penalty=0.5)
    with pytest.raises(ConfigError, match="support_penalty must be"):
        PessimisticVectorEnv(AdPlacementVectorEnv(4, sc, ensemble), support_penalty=-1.0)
    ensemble.support_penalty = 0.5
    path = ensemble.save(tmp_path / "ens")
    ensemble.support_penalty = 0.0
    assert EnsembleResponse.load(path, sc).support_penalty == 0.5  # the default travels with the artifact
    manifest = json.loads((path / "ensemble.json").read_text())
    (path / "ensemble.json").write_text(json.dumps({**manifest, "support": None}))
    with pytest.raises(ArtifactError, match="has no 'support'"):
        EnsembleResponse.load(path, sc)
    (path / "ensemble.json").write_text(json.dumps({**manifest, "support": {"file": "../x.npy", "bins": []}}))
    with pytest.raises(ArtifactError, match="'support' must be"):
        EnsembleResponse.load(path, sc)
    bins = manifest["support"]["bins"]
    (path / "ensemble.json").write_text(json.dumps({**manifest, "support": {**manifest["support"], "bins": bins[:-1]}}))
    with pytest.raises(ArtifactError, match="support counts must be"):  # a bin lost: the cells no longer fit
        EnsembleResponse.load(path, sc)
    (path / "ensemble.json").write_text(json.dumps(manifest))
    np.save(path / "support.npy", np.zeros(7, dtype=np.int64))
    with pytest.raises(ArtifactError, match="support counts must be"):
        EnsembleResponse.load(path, sc)
    (path / "support.npy").write_bytes(b"\x93NUMPY")
    with pytest.raises(ArtifactError, match=r"not a readable \.npy"):
        EnsembleResponse.load(path, sc)


def test_ppo_trains_on_the_batched_env_and_beats_random(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    sc = tiny_scenario()
    env = AdPlacementVectorEnv(256, sc)
    cfg = PPOConfig(hidden=64, lr=3e-3, rollout_steps=8, n_minibatches=4, log_every=20_000)
    agent = PPOAgent(sc, cfg, seed=0).learn(env, 60_000)
    learned = evaluate_policy(agent, sc, n_episodes=2000, seed=1).overall
    random_ = evaluate_policy(RandomPolicy(sc, seed=2), sc, n_episodes=2000, seed=1).overall
    assert learned.mean_return - random_.mean_return > 3 * np.hypot(learned.sem, random_.sem)
    agent.save(tmp_path / "ppo")
    loaded = load_policy_artifact(tmp_path / "ppo")
    obs, _ = env.reset(seed=3)
    np.testing.assert_allclose(loaded.action_probabilities(obs), agent.action_probabilities(obs), rtol=1e-6)
    assert loaded.steps_done == agent.steps_done >= 60_000
    loaded.learn(env, loaded.steps_done + 4096)  # resumes from the saved optimizer and normaliser
    assert loaded.steps_done > agent.steps_done


def test_tuned_rules_are_chosen_on_the_simulator_given_and_round_trip(tmp_path: Path) -> None:
    sc = tiny_scenario()
    pacing, cap, scores = tune_rules(sc, None, simulator_score(sc, None, seed=0, n_episodes=400))
    assert pacing.timing == "pacing" and cap.timing == "frequency-cap"
    assert scores[pacing.name] == max(v for k, v in scores.items() if k.startswith("pacing"))
    cap.save(tmp_path / "cap")
    loaded = load_policy_artifact(tmp_path / "cap")
    obs, _ = AdPlacementVectorEnv(64, sc).reset(seed=0)
    np.testing.assert_array_equal(loaded.predict(obs), cap.predict(obs))
    np.testing.assert_array_equal(loaded.action_probabilities(obs).sum(axis=1), np.ones(64))


def test_oracle_is_at_least_as_good_as_every_other_policy_on_a_tiny_market() -> None:
    sc = tiny_scenario()
    oracle = evaluate_oracle(OraclePlanner(sc), n_users=1500, seed=4)
    others: dict[str, Any] = {f"pacing-{g}": PacingPolicy(sc, g) for g in (1, 2, 3)}
    others |= {"greedy": GreedyPolicy(sc), "random": RandomPolicy(sc, seed=0)}
    pacing, cap, _ = tune_rules(sc, None, simulator_score(sc, None, seed=0, n_episodes=400))
    others |= {"tuned-pacing": pacing, "frequency-cap": cap}
    env = AdPlacementVectorEnv(256, sc)
    others["ppo"] = PPOAgent(sc, PPOConfig(hidden=64, lr=3e-3, rollout_steps=8, n_minibatches=4), seed=0).learn(
        env, 60_000
    )
    for name, policy in others.items():
        value = episode_returns(policy, sc, n_episodes=1500, seed=4)  # the same users as the oracle's
        assert oracle.mean_return >= value.mean(), name


def _mean_kl(p: np.ndarray, q: np.ndarray) -> float:
    return float(np.mean(np.sum(p * (np.log(np.clip(p, 1e-12, 1)) - np.log(np.clip(q, 1e-12, 1))), axis=1)))


def test_warm_started_ppo_begins_at_its_source_and_the_anchor_keeps_it_near(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    sc = tiny_scenario()
    env = AdPlacementVectorEnv(256, sc)
    cfg = PPOConfig(hidden=32, lr=3e-3, rollout_steps=8, n_minibatches=4, log_every=10_000)
    source = PPOAgent(sc, cfg, seed=0).learn(env, 8_000)  # a policy near uniform, so training moves it far
    obs, _ = env.reset(seed=5)
    start = source.action_probabilities(obs)
    drift = {}
    for anchor in (0.0, 30.0):
        agent = PPOAgent(sc, dataclasses.replace(cfg, lr=1e-2, entropy_coef=0.0, anchor_coef=anchor), seed=1)
        agent.warm_start(source)
        np.testing.assert_allclose(agent.action_probabilities(obs), start, rtol=1e-6)  # the source's policy
        agent.learn(env, 40_000)
        drift[anchor] = _mean_kl(start, agent.action_probabilities(obs))
    assert drift[0.0] > 0.05 and drift[30.0] < drift[0.0] / 20, drift
    with pytest.raises(ConfigError, match="hidden = 32, this run 64"):
        PPOAgent(sc, PPOConfig(hidden=64), seed=0).warm_start(source)
    with pytest.raises(ConfigError, match="only from a PPO policy"):
        PPOAgent(sc, cfg, seed=0).warm_start(RandomPolicy(sc))  # type: ignore[arg-type]


def test_train_init_from_fine_tunes_a_policy_and_refuses_what_cannot_start_one(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from adrl.cli import app

    runner = CliRunner()
    source = tmp_path / "source"
    common = ["--env", "adrl/AdPlacement-v0", "--n-envs", "64", "--set", "hidden=16", "--set", "log_every=2000"]
    first = runner.invoke(app, ["train", "--agent", "ppo_native", "--steps", "2000", "--out", str(source), *common])
    assert first.exit_code == 0, first.output
    tuned = tmp_path / "tuned"
    args = ["train", "--agent", "ppo_native", "--steps", "4000", "--init-from", str(source / "policy"),
            "--set", "anchor_coef=0.5", "--checkpoint-every", "2000", "--out", str(tuned), *common]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert yaml.safe_load((tuned / "config.yaml").read_text())["init_from"] == str(source / "policy")
    resumed = runner.invoke(app, [*args[:4], "6000", *args[7:], "--resume"])  # no --init-from: the config keeps it
    assert resumed.exit_code == 0, resumed.output
    assert load_policy_artifact(tuned / "policy").steps_done >= 6000
    RandomPolicy(tiny_scenario()).save(tmp_path / "random-tiny")
    for agent, init, message in (
        ("q_learning", source / "policy", "q_learning cannot start from a trained policy (only ppo_native)"),
        ("ppo_native", tmp_path / "nothing", "not a policy artifact"),
        ("ppo_native", tmp_path / "random-tiny", "layout"),
    ):
        out = tmp_path / f"bad-{agent}-{init.name}"
        bad = runner.invoke(app, ["train", "--agent", agent, "--steps", "1000", "--init-from", str(init),
                                  "--out", str(out), *common])  # fmt: skip
        assert bad.exit_code == 2 and message in " ".join(bad.output.split()), bad.output
        assert not out.exists()  # refused before the run directory is made
