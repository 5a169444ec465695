"""The per-decision truth replays the logged users exactly and agrees with what was logged."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from adrl.actions import flat_index
from adrl.agents.baselines import GreedyPolicy
from adrl.logs import read_logs
from adrl.scenario import Scenario
from adrl.simulate import make_logging_policy, simulate
from adrl.truth import check_truth, per_decision_truth, true_action_values, true_reward_moments
from adrl.world import World


def test_truth_of_the_logging_policy_is_the_logged_mean_reward(tmp_path: Path) -> None:
    sc = Scenario()
    out = tmp_path / "logs.parquet"
    simulate(sc, n_users=3000, out=out, seed=7, chunk_users=1000, progress=False)
    df = read_logs(out)
    logger = make_logging_policy("epsilon-greedy", sc)
    truth = per_decision_truth(sc, {"logger": logger, "greedy": GreedyPolicy(sc)}, n_users=3000, seed=7,
                               chunk_users=1000)  # fmt: skip
    reward = df["reward"].to_numpy()
    sem = reward.std(ddof=1) / np.sqrt(len(reward))
    assert abs(truth["logger"] - reward.mean()) < 4 * sem  # the realised rewards scatter around their expectation
    # the logged true click probabilities are the replayed ones: the replay saw the same users and states
    shown = df["shown"].to_numpy()
    assert abs(df["p_click"].to_numpy()[shown].mean() - df["click"].to_numpy()[shown].mean()) < 0.01
    assert truth["greedy"] != truth["logger"]


def test_broadcast_truth_matches_the_world(tmp_path: Path) -> None:
    world = World(Scenario())
    rng = np.random.default_rng(0)
    batch = world.sample_users(500, rng)
    batch.fatigue[:] = rng.random(500) * 3
    batch.epoch[:] = rng.integers(0, 24, 500)
    check_truth(world, batch, rng)  # raises if the broadcast formulas drift from World.probabilities


def test_reward_moments_match_the_rewards_the_world_draws() -> None:
    world = World(Scenario())
    rng = np.random.default_rng(3)
    users = world.sample_users(4, rng)
    users.epoch[:] = [2, 9, 15, 20]
    q, r2 = true_reward_moments(world, users)
    assert np.allclose(q, true_action_values(world, users))
    n = 200_000
    for u in range(4):
        for action in ([0, 0, 3], [1, 2, 7], [3, 1, 11]):
            copies = users.take(np.full(n, u))
            reward = world.step(copies, np.tile(action, (n, 1)), rng).reward
            a = flat_index(np.array([action]), world.scenario.action_nvec)[0]
            # Monte Carlo means of r and r² within 5 standard errors of the closed form
            assert abs(reward.mean() - q[u, a]) < 5 * reward.std() / np.sqrt(n) + 1e-12
            assert abs((reward**2).mean() - r2[u, a]) < 5 * (reward**2).std() / np.sqrt(n) + 1e-12
    assert np.all(r2 >= q**2 - 1e-12)  # a second moment is never below the squared mean
