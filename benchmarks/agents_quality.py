"""Do sequential agents beat myopic targeting? Train on the default scenario's ground truth, several seeds (JSON).

For each seed: train tabular Q-learning and REINFORCE with their presets (configs/agents/*.yaml), evaluate them on
20,000 ground-truth user-days beside greedy, pacing and random (the same users for every policy), and record the
training wall time and CPU time. Goals (issue 5): each learner beats greedy by >= 10% mean return with
non-overlapping 95% CIs and beats random by far; Q-learning trains within 2 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from adrl.agents.baselines import GreedyPolicy, RandomPolicy
from adrl.agents.registry import load_policy_artifact
from adrl.evaluation import evaluate_policies, search_pacing_gap
from adrl.scenario import Scenario
from adrl.training import train_run

GROUND_TRUTH = "adrl/AdPlacement-v0"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--agents", nargs="+", default=["q_learning", "reinforce"])
    ap.add_argument("--steps", type=int, default=None, help="override every agent's preset budget")
    ap.add_argument("--episodes", type=int, default=20_000)
    args = ap.parse_args()
    sc = Scenario()
    from adrl.agents.baselines import PacingPolicy

    gap = search_pacing_gap(sc, None, None, seed=0)
    baselines: dict[str, Any] = {
        "greedy": GreedyPolicy(sc),
        "pacing": PacingPolicy(sc, gap),
        "random": RandomPolicy(sc, seed=0),
    }
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            policies = dict(baselines)
            timing: dict[str, dict[str, float]] = {}
            for agent in args.agents:
                wall, cpu = time.perf_counter(), time.process_time()
                train_run(agent_name=agent, env_id=GROUND_TRUTH, out=Path(tmp) / f"{agent}-{seed}", steps=args.steps,
                          seed=seed, progress=False)  # fmt: skip
                timing[agent] = {"wall_seconds": time.perf_counter() - wall, "cpu_seconds": time.process_time() - cpu}
                policies[agent] = load_policy_artifact(Path(tmp) / f"{agent}-{seed}" / "policy")
            evals = {
                e.name: e.overall for e in evaluate_policies(policies, sc, n_episodes=args.episodes, seed=100 + seed)
            }
            greedy, rand = evals["greedy"], evals["random"]
            row: dict[str, Any] = {"seed": seed, "policies": {}}
            for name, m in evals.items():
                row["policies"][name] = {
                    "mean_return": round(m.mean_return, 5),
                    "ci95": [round(m.ci_low, 5), round(m.ci_high, 5)],
                    "gain_over_greedy": round((m.mean_return - greedy.mean_return) / abs(greedy.mean_return), 4),
                    "beats_greedy_by_10pct_with_disjoint_ci": bool(
                        m.mean_return >= 1.1 * greedy.mean_return and m.ci_low > greedy.ci_high
                    ),
                    "times_random": round(m.mean_return / rand.mean_return, 2),
                    "churn_rate": round(m.churn_rate, 4),
                    "ads_per_user_day": round(m.impressions_per_user, 3),
                    **({k: round(v, 1) for k, v in timing[name].items()} if name in timing else {}),
                }
            runs.append(row)
            print(json.dumps(row), flush=True)
    summary = {
        agent: {
            "all_seeds_beat_greedy_by_10pct_with_disjoint_ci": all(
                r["policies"][agent]["beats_greedy_by_10pct_with_disjoint_ci"] for r in runs
            ),
            "mean_return_by_seed": [r["policies"][agent]["mean_return"] for r in runs],
            "max_wall_seconds": max(r["policies"][agent]["wall_seconds"] for r in runs),
            "max_cpu_seconds": max(r["policies"][agent]["cpu_seconds"] for r in runs),
        }
        for agent in args.agents
    }
    print(json.dumps({"benchmark": "agents_quality", "cpus": os.cpu_count(), "pacing_gap": gap,
                      "episodes": args.episodes, "summary": summary, "runs": runs}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
