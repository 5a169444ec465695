"""Ground truth for off-policy evaluation on synthetic logs: what an estimator should have found.

The per-decision value of a target policy π_e on logs is E over logged decisions of Σ_a π_e(a|x) E[r | s, a],
with s the user's true hidden state at that decision. :func:`per_decision_truth` replays the logging simulation
(same scenario, seed, chunking and logging policy, hence the same users and hidden states) and averages that
quantity over every logged decision.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from adrl.actions import flat_index
from adrl.scenario import Scenario
from adrl.simulate import make_logging_policy, replay_decisions
from adrl.world import UserBatch, World


def true_action_values(world: World, batch: UserBatch) -> np.ndarray:
    """Exact E[r | hidden state, a] of every flat action, shape (n, n_actions), 0 where the delay overruns.

    The formulas of World.probabilities / World.expected_reward broadcast over (delay, slot, creative);
    :func:`check_truth` compares them with those methods on sampled actions.
    """
    p_click, p_conv, _, _, shown = _response(world, batch)
    value = world.scenario.reward_table.expected(
        p_click, p_click * p_conv, *_broadcast_slots_creatives(world), _leave(world, batch)
    )
    return np.where(shown, value, 0.0).reshape(len(batch), -1)


def true_reward_moments(world: World, batch: UserBatch) -> tuple[np.ndarray, np.ndarray]:
    """E[r | hidden state, a] and E[r² | hidden state, a] of every flat action, each (n, n_actions).

    The reward is click·(v + c·conversion) − cost, the conversion drawn only after a click (click value v,
    conversion reward c), so E[r²] = cost² − 2·cost·E[r + cost] + p_click·(v² + 2·v·c·p_conv + c²·p_conv).
    Both are 0 where the delay overruns the day (nothing is shown).
    """
    p_click, p_conv, c, cost, shown = _response(world, batch)
    rewards = world.scenario.reward_table
    p_leave = _leave(world, batch)
    mean = rewards.expected(p_click, p_click * p_conv, *_broadcast_slots_creatives(world), p_leave)
    v = rewards.click_value
    gain = p_click * (v + c * p_conv)  # E[r + cost], for the second moment
    r2 = cost**2 - 2.0 * cost * gain + p_click * (v * v + 2.0 * v * c * p_conv + c * c * p_conv)
    if p_leave is not None:  # r − k·leave, leave drawn independently of the click: E[(r − kL)²]
        k = rewards.churn_cost
        r2 = r2 - 2.0 * k * p_leave * (gain - cost) + k * k * p_leave
    n = len(batch)
    return np.where(shown, mean, 0.0).reshape(n, -1), np.where(shown, r2, 0.0).reshape(n, -1)


def _response(world: World, batch: UserBatch) -> tuple[np.ndarray, ...]:
    """Click probability (n, D, S, C), conversion probability and reward (·, 1, 1, C), slot cost (1, 1, S, 1) and
    whether the ad is shown (n, D, 1, 1), broadcast over (delay, slot, creative)."""
    w, dyn, sc = world, world.dyn, world.scenario
    d_hours = w.delays  # (D,)
    at = batch.epoch[:, None] + d_hours[None, :]  # (n, D)
    hour = w.hour_of_epoch[at]
    fatigue = batch.fatigue[:, None] * w.decay_per_hour ** d_hours[None, :]
    aff = batch.interest @ w.latents.T  # (n, C)
    seg = batch.segment
    time_part = w.log_activity[seg[:, None], hour] - dyn.fatigue_weight * fatigue  # (n, D)
    base = dyn.affinity_weight * aff + dyn.quality_weight * w.quality  # (n, C)
    logit = dyn.base_click_logit + time_part[:, :, None, None] + w.log_attention[None, None, :, None]
    p_click = 1.0 / (1.0 + np.exp(-(logit + base[:, None, None, :])))
    p_conv = 1.0 / (1.0 + np.exp(-(dyn.base_conversion_logit + w.conv_propensity[seg, None]
                                   + dyn.conversion_affinity_weight * aff)))  # fmt: skip
    slot, creative = _broadcast_slots_creatives(world)
    rewards = sc.reward_table
    return (p_click, p_conv[:, None, None, :], rewards.conversion_reward[creative], rewards.slot_cost[slot],
            (at < sc.horizon)[:, :, None, None])  # fmt: skip


def _leave(world: World, batch: UserBatch) -> np.ndarray | None:
    """P(leave) (n, D, S, C) after the impression, or None when the market does not price churn (not needed)."""
    if not world.scenario.reward_table.churn_cost:
        return None
    fatigue = batch.fatigue[:, None] * world.decay_per_hour ** world.delays[None, :]  # (n, D)
    return world.leave_grid(fatigue, batch.segment, batch.creative_counts.astype(np.float64))


def _broadcast_slots_creatives(world: World) -> tuple[np.ndarray, np.ndarray]:
    """Slot (1, 1, S, 1) and creative (1, 1, 1, C) indices that broadcast over (n, delay, slot, creative)."""
    sc = world.scenario
    return np.arange(sc.n_slots)[None, None, :, None], np.arange(sc.n_creatives)[None, None, None, :]


def check_truth(world: World, batch: UserBatch, rng: np.random.Generator) -> None:
    """The broadcast truth equals World.probabilities + World.expected_reward on random actions."""
    sc = world.scenario
    act = np.stack([rng.integers(0, k, len(batch)) for k in sc.action_nvec], axis=1)
    ref = world.expected_reward(world.probabilities(batch, act), act)
    ref = np.where(batch.epoch + world.delays[act[:, 0]] < sc.horizon, ref, 0.0)
    got = true_action_values(world, batch)[np.arange(len(batch)), flat_index(act, sc.action_nvec)]
    if not np.allclose(got, ref, rtol=1e-10, atol=1e-12):
        raise AssertionError("broadcast truth disagrees with World.probabilities / expected_reward")


def per_decision_truth(
    scenario: Scenario,
    targets: dict[str, Any],
    *,
    n_users: int,
    seed: int | None,
    logging_policy: str = "epsilon-greedy",
    epsilon: float | Sequence[float] = 0.3,
    chunk_users: int = 65_536,
) -> dict[str, float]:
    """Mean true expected immediate reward of each target's action distribution over the logged decisions.

    The arguments must be those of the ``simulate`` call that wrote the logs.
    """
    world = World(scenario)
    policy = make_logging_policy(logging_policy, scenario, epsilon=epsilon)
    sums = dict.fromkeys(targets, 0.0)
    count = 0

    def on_decision(batch: UserBatch, obs: np.ndarray) -> None:
        nonlocal count
        q_true = true_action_values(world, batch)
        for name, target in targets.items():
            sums[name] += float(np.einsum("na,na->", target.action_probabilities(obs), q_true))
        count += len(batch)

    replay_decisions(scenario, n_users=n_users, seed=seed, logging_policy=policy, chunk_users=chunk_users,
                     on_decision=on_decision)  # fmt: skip
    return {k: v / max(count, 1) for k, v in sums.items()}


__all__ = ["check_truth", "per_decision_truth", "true_action_values", "true_reward_moments"]
