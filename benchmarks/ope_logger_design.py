"""How many logged decisions each target policy needs for a 5 % off-policy estimate, per ε-greedy logger (prints JSON).

The logger explores each action component (delay, slot, creative) around the myopic greedy rule at its own rate.
For every candidate rate and target, the variance of one decision's IPS term and of its DR term (with the exact
reward model) is computed in closed form from the world's true hidden state, so only the users' states are
sampled, not actions or rewards:

    E[(w·r)²] = E_x[Σ_a π_e(a|x)² / μ(a|x) · E[r² | s, a]],   V = E_x[Σ_a π_e(a|x) E[r | s, a]],

and the decisions needed for a mean absolute relative error of 5 % are Var / (V · 0.05 / √(2/π))² (the mean
absolute value of a normal error is √(2/π) of its standard deviation). This is how ``benchmarks/ope_accuracy.py``
chose its default rates, among those with the smallest largest need over greedy, pacing and the trained agent. It
ignores the correlation of decisions within a user-day; ope_accuracy's measured errors agree with it within the
noise of 50 draws.

Usage: python benchmarks/ope_logger_design.py [--policy runs/reinforce/policy] [--epsilon 1,0.8,0.6 ...]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from adrl.agents.baselines import GreedyPolicy, PacingPolicy
from adrl.agents.registry import load_policy_artifact
from adrl.features import FeatureLayout
from adrl.scenario import Scenario
from adrl.simulate import make_logging_policy, parse_epsilon, replay_decisions
from adrl.truth import true_reward_moments
from adrl.world import UserBatch, World

GRID = ("1,0.5,0.3", "1,0.5,0.5", "1,0.7,0.5", "1,0.7,0.7", "1,0.8,0.6", "1,0.9,0.6", "1,1,0.7", "0.8,0.8,0.6",
        "1,1,1", "0.3")  # fmt: skip
TARGET_ERROR = 0.05


def logger_moments(
    sc: Scenario, targets: dict[str, Any], epsilon: tuple[float, float, float], n_users: int, seed: int
) -> tuple[int, dict[str, np.ndarray]]:
    """Decisions simulated and, per target, the per-decision sums of (Σπ²/μ·E[r²], Σπ²/μ·Var[r], V_x, V_x², Σπ²/μ)."""
    world = World(sc)
    logger = make_logging_policy("epsilon-greedy", sc, epsilon=epsilon)
    sums = {k: np.zeros(5) for k in targets}
    count = 0

    def on_decision(batch: UserBatch, obs: np.ndarray) -> None:
        nonlocal count
        mu = logger.action_probabilities(obs)
        q, r2 = true_reward_moments(world, batch)
        for name, policy in targets.items():
            pi = policy.action_probabilities(obs)
            ratio = np.divide(pi * pi, mu, out=np.zeros_like(pi), where=pi > 0)
            v_x = np.einsum("na,na->n", pi, q)
            sums[name] += (np.einsum("na,na->", ratio, r2), np.einsum("na,na->", ratio, r2 - q * q),
                           v_x.sum(), v_x @ v_x, ratio.sum())  # fmt: skip
        count += obs.shape[0]

    replay_decisions(sc, n_users=n_users, seed=seed, logging_policy=logger, on_decision=on_decision)
    return count, sums


def needed(variance: float, value: float) -> int:
    """Decisions for a mean absolute relative error of TARGET_ERROR under a normal error of that variance."""
    sd_goal = abs(value) * TARGET_ERROR / math.sqrt(2.0 / math.pi)
    return round(variance / sd_goal**2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epsilon", action="append", default=[], help="candidate rate(s), 'delay,slot,creative'")
    ap.add_argument("--policy", type=Path, action="append", default=[], help="trained agent artifact(s) to add")
    ap.add_argument("--n-users", type=int, default=40_000, help="user-days simulated per candidate")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    candidates = [parse_epsilon(e) for e in (args.epsilon or GRID)]

    sc = Scenario()
    layout = FeatureLayout.from_scenario(sc)
    targets: dict[str, Any] = {"greedy": GreedyPolicy(sc), "pacing": PacingPolicy(sc, 3)}
    for p in args.policy:
        targets[f"agent:{p}"] = load_policy_artifact(p, expect_layout=layout)

    start = time.perf_counter()
    rows = []
    for eps in candidates:
        n, sums = logger_moments(sc, targets, eps, args.n_users, args.seed)
        per: dict[str, Any] = {}
        for name, s in sums.items():
            e_w2r2, e_w2var, s_v, s_vv, e_w2 = s / n
            value = s_v
            var_x = s_vv - value**2  # spread of the target's value over the logged states
            per[name] = {
                "per_decision_value": round(float(value), 5),
                "ess_fraction": round(float(1.0 / e_w2), 4),
                "decisions_for_5pct_ips": needed(e_w2r2 - value**2, value),
                "decisions_for_5pct_dr": needed(e_w2var + var_x, value),
            }
        worst = max(per, key=lambda k: per[k]["decisions_for_5pct_dr"])
        rows.append({"epsilon": list(eps), "decisions": n, "targets": per, "largest_need_dr": worst,
                     "decisions_for_all_dr": per[worst]["decisions_for_5pct_dr"]})  # fmt: skip
        print(f"epsilon {list(eps)}: {per[worst]['decisions_for_5pct_dr']:,} decisions ({worst})", flush=True)
    best = min(rows, key=lambda r: r["decisions_for_all_dr"])
    print(json.dumps({"target_error": TARGET_ERROR, "n_users_per_candidate": args.n_users,
                      "best_epsilon": best["epsilon"], "best_decisions_for_all_dr": best["decisions_for_all_dr"],
                      "candidates": rows, "seconds": round(time.perf_counter() - start, 1)}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
