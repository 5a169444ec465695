"""A priced lost user: the market's reward charges ``rewards.churn_cost`` on the impression after which a user leaves,
in the world, the truth, the value models and every evaluation, so burning users out is no longer free."""

from __future__ import annotations

import numpy as np
import pytest

from adrl.actions import flat_index
from adrl.agents.baselines import GreedyPolicy, WorldValueModel
from adrl.evaluation import evaluate_policy
from adrl.features import FeatureLayout
from adrl.scenario import Rewards, Scenario
from adrl.truth import check_truth, true_action_values, true_reward_moments
from adrl.world import World

COST = 2.0


def priced(cost: float = COST) -> Scenario:
    return Scenario(rewards=Rewards(churn_cost=cost))


def test_a_leave_is_charged_on_the_impression_it_follows() -> None:
    world = World(priced())
    rng = np.random.default_rng(0)
    users = world.sample_users(20_000, rng)
    users.fatigue[:] = 6.0  # tired users, so many leave
    action = np.tile([0, 2, 0], (len(users), 1))
    res = world.step(users.take(np.ones(len(users), bool)), action, np.random.default_rng(1))
    free = World(Scenario()).step(users.take(np.ones(len(users), bool)), action, np.random.default_rng(1))
    assert res.leave.any() and not res.leave.all()
    assert np.array_equal(res.leave, free.leave)  # same draws: pricing churn changes the reward, not the dynamics
    assert np.allclose(res.reward, free.reward - COST * res.leave)


def test_the_broadcast_truth_and_its_moments_include_the_churn_cost() -> None:
    world = World(priced())
    rng = np.random.default_rng(2)
    batch = world.sample_users(400, rng)
    batch.fatigue[:] = rng.random(400) * 6
    batch.epoch[:] = rng.integers(0, 24, 400)
    batch.creative_counts[:] = rng.integers(0, 3, batch.creative_counts.shape)
    check_truth(world, batch, rng)  # the (delay, slot, creative) leave grid equals World.probabilities
    users = batch.take(np.arange(400) < 3)
    q, r2 = true_reward_moments(world, users)
    assert np.allclose(q, true_action_values(world, users))
    free_q = true_action_values(World(Scenario()), users)
    assert np.all(q <= free_q + 1e-12) and np.any(q < free_q - 1e-6)
    n = 200_000
    for u in range(3):
        for action in ([0, 2, 0], [1, 0, 7]):
            reward = world.step(users.take(np.full(n, u)), np.tile(action, (n, 1)), rng).reward
            a = flat_index(np.array([action]), world.scenario.action_nvec)[0]
            assert abs(reward.mean() - q[u, a]) < 5 * reward.std() / np.sqrt(n) + 1e-12
            assert abs((reward**2).mean() - r2[u, a]) < 5 * (reward**2).std() / np.sqrt(n) + 1e-12


def test_the_ground_truth_value_model_prices_the_leave_it_predicts() -> None:
    sc = priced()
    layout = FeatureLayout.from_scenario(sc)
    world = World(sc)
    users = world.sample_users(64, np.random.default_rng(4))
    users.fatigue[:] = 4.0
    users.exposure_acc[:, 2] = 4.0 / (sc.slots[2].annoyance * 1.2)  # the observable history behind that fatigue
    obs = layout.encode(users)
    priced_v = WorldValueModel(sc).expected_reward(obs)
    free_v = WorldValueModel(Scenario()).expected_reward(obs)
    gap = free_v - priced_v  # churn_cost · P(leave): positive, largest for the most annoying slot
    assert np.all(gap > 0)
    assert np.all(gap[:, :, 2].mean(axis=(1, 2)) > gap[:, :, 1].mean(axis=(1, 2)))


def test_evaluation_return_is_revenue_less_costs_less_the_priced_churn() -> None:
    sc = priced()
    ev = evaluate_policy(GreedyPolicy(Scenario()), sc, n_episodes=2_000, seed=5)
    m = ev.overall
    assert m.mean_return == pytest.approx(m.revenue_per_user - m.cost_per_user - COST * m.churn_rate, abs=1e-9)


def test_a_greedy_rule_that_prices_churn_loses_fewer_users() -> None:
    sc = priced()
    blind = evaluate_policy(GreedyPolicy(Scenario()), sc, n_episodes=3_000, seed=6)
    aware = evaluate_policy(GreedyPolicy(sc), sc, n_episodes=3_000, seed=6)
    assert aware.overall.churn_rate < blind.overall.churn_rate
    assert aware.overall.mean_return > blind.overall.mean_return


def test_churn_cost_is_validated() -> None:
    with pytest.raises(ValueError, match="churn_cost"):
        Rewards(churn_cost=-1.0)
