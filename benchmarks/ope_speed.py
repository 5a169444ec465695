"""Speed of the off-policy estimators (prints JSON).

- DR on 1,000,000 logged decisions with a deterministic target, excluding reward-model fitting (goal ≤ 0.2 s):
  ``per_row``: from per-row arrays (reward, propensity, target_prob, q_logged, q_target) with the normal interval
  and ESS / max weight; ``from_policy_output``: also extracting π_e(a_i|x_i) and Σ_a π_e(a|x_i) q̂(x_i, a) from a
  one-hot (n, 144) target matrix and a dense (n, 144) q̂ matrix, the work the reference library's DR does.
- Bootstrap interval of 100,000 rows with 100 resamples (goal ≤ 0.5 s), percentile, vectorised.

Best of ``--repeat`` runs. Usage: python benchmarks/ope_speed.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable

import numpy as np

from adrl.ope.bandit import DR
from adrl.ope.estimate import bootstrap_mean


def best_of(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--n-actions", type=int, default=144)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    n, a = args.n, args.n_actions
    logged = rng.integers(0, a, n)
    target_action = rng.integers(0, a, n)
    propensity = np.where(logged == target_action, 0.7 + 0.3 / a, 0.3 / a)
    reward = rng.random(n) * (rng.random(n) < 0.1)
    q = rng.random((n, a)) * 0.1
    rows = np.arange(n)
    target_prob = (logged == target_action).astype(np.float64)
    q_logged, q_target = q[rows, logged], q[rows, target_action]
    dr = DR()

    def per_row() -> object:
        return dr.estimate(reward, propensity, target_prob, q_logged, q_target, rng=rng, n_boot=0)

    def from_policy_output() -> object:
        pi = np.zeros((n, a))
        pi[rows, target_action] = 1.0  # what a deterministic policy's action_probabilities returns
        t0 = time.perf_counter()
        tp = pi[rows, logged]
        qt = np.einsum("na,na->n", pi, q)
        ql = q[rows, logged]
        est = dr.estimate(reward, propensity, tp, ql, qt, rng=rng, n_boot=0)
        return time.perf_counter() - t0, est

    t_from = min(float(from_policy_output()[0]) for _ in range(args.repeat))  # type: ignore[index]
    boot_values = rng.random(100_000)
    result = {
        "cpu_count": os.cpu_count(),
        "dr_1m_per_row_s": round(best_of(per_row, args.repeat), 4),
        "dr_1m_from_policy_output_s": round(t_from, 4),
        "dr_goal_s": 0.2,
        "bootstrap_100k_x100_s": round(
            best_of(lambda: bootstrap_mean(boot_values, rng=rng, n_boot=100), args.repeat), 4
        ),
        "bootstrap_goal_s": 0.5,
        # the interval the estimators report: BCa (bootstrap plus a jackknife for the acceleration) of DR's terms
        "dr_100k_bca_x100_s": round(
            best_of(
                lambda: dr.estimate(
                    reward[:100_000],
                    propensity[:100_000],
                    target_prob[:100_000],
                    q_logged[:100_000],
                    q_target[:100_000],
                    rng=rng,
                    n_boot=100,
                ),
                args.repeat,
            ),
            4,
        ),
        "dr_1m_with_bootstrap_x100_s": round(
            best_of(
                lambda: dr.estimate(reward, propensity, target_prob, q_logged, q_target, rng=rng, n_boot=100),
                max(1, args.repeat // 2),
            ),
            4,
        ),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
