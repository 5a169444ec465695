"""Speed of the off-policy estimators (prints JSON).

- DR on 1,000,000 logged decisions with a deterministic target, excluding reward-model fitting (goal ≤ 0.2 s):
  ``per_row``: from per-row arrays (reward, propensity, target_prob, q_logged, q_target) with the normal interval
  and ESS / max weight; ``from_policy_output``: also extracting π_e(a_i|x_i) and Σ_a π_e(a|x_i) q̂(x_i, a) from a
  one-hot (n, 144) target matrix and a dense (n, 144) q̂ matrix, the work the reference library's DR does.
- Bootstrap interval of 100,000 rows with 100 resamples (goal ≤ 0.5 s), percentile, vectorised.

- ``--return-users N`` (0: skip): the return-per-user-day estimators of one policy (``adrl ope``'s defaults for
  ``--estimand return``, ``--return-policy``, default pacing) on N logged user-days, given a fitted behavior model
  (fitted here on the same log, timed separately), beside the time ``simulate`` takes to write that log in the same
  run; with each estimate's seconds and the peak memory traced while estimating (tracemalloc, numpy included). The
  issue's size is 1,000,000 user-days.

Best of ``--repeat`` runs. Usage: python benchmarks/ope_speed.py [--repeat 5] [--return-users 100000]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from typing import Any

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


def return_estimators(
    n_users: int, policy_name: str, members: int, epochs: int, max_episodes: int | None
) -> dict[str, Any]:
    """Seconds and traced peak memory of the return estimators of one policy on ``n_users`` logged user-days."""
    import tempfile
    import tracemalloc
    from pathlib import Path

    from adrl.agents.baselines import GreedyPolicy, PacingPolicy, RandomPolicy, WorldValueModel
    from adrl.features import FeatureLayout
    from adrl.ope.data import read_adrl_logs
    from adrl.ope.members import fit_bootstrap_members, load_members
    from adrl.ope.model_based import Simulators
    from adrl.ope.run import ESTIMAND_DEFAULTS, evaluate
    from adrl.scenario import Scenario
    from adrl.simulate import simulate
    from adrl.world import World

    sc = Scenario()
    layout = FeatureLayout.from_scenario(sc)
    value = WorldValueModel(sc)
    policy: Any = {"pacing": PacingPolicy(sc, 3, value), "greedy": GreedyPolicy(sc, value), "random": RandomPolicy(sc)}[
        policy_name
    ]
    out: dict[str, Any] = {"users": n_users, "policy": policy_name, "members": members, "fit_epochs": epochs}
    with tempfile.TemporaryDirectory() as tmp:
        logs = Path(tmp) / "logs.parquet"
        t = time.perf_counter()
        summary = simulate(sc, n_users=n_users, out=logs, seed=0, progress=False)
        out["simulate_s"] = round(time.perf_counter() - t, 2)
        out["decisions"] = summary.n_decisions
        t = time.perf_counter()
        paths = fit_bootstrap_members(logs, sc, Path(tmp) / "members", n_members=members, seed=0, epochs=epochs)
        out["fit_s"] = round(time.perf_counter() - t, 2)
        sim = Simulators(World(sc), load_members(paths, sc))
        tracemalloc.start()
        t = time.perf_counter()
        data = read_adrl_logs(logs, layout)
        out["read_s"] = round(time.perf_counter() - t, 2)
        per: dict[str, float] = {}
        for k in ESTIMAND_DEFAULTS["return"]:
            t = time.perf_counter()
            evaluate(data, policy.action_probabilities, [k], rng=np.random.default_rng(0), sim=sim, n_boot=200,
                     max_episodes=max_episodes)  # fmt: skip
            per[k] = round(time.perf_counter() - t, 2)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    out["estimate_s"] = per
    out["all_estimators_s"] = round(sum(per.values()) + out["read_s"], 2)
    out["peak_traced_memory_gb"] = round(peak / 2**30, 3)
    out["max_episodes_for_row_rollouts"] = max_episodes
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--n-actions", type=int, default=144)
    ap.add_argument("--return-users", type=int, default=0, help="user-days for the return estimators (0: skip)")
    ap.add_argument("--return-policy", default="pacing", choices=("pacing", "greedy", "random"))
    ap.add_argument("--members", type=int, default=2)
    ap.add_argument("--fit-epochs", type=int, default=2)
    ap.add_argument("--max-episodes", type=int, default=None, help="episodes for the per-row rollouts (None: all)")
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
    result: dict[str, Any] = {
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
    if args.return_users:
        result["return_estimators"] = return_estimators(
            args.return_users, args.return_policy, args.members, args.fit_epochs, args.max_episodes
        )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
