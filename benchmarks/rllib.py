"""RLlib PPO (``adrl train --engine rllib``) beside adrl's own PPO (``ppo_native``), on the ground truth (JSON).

Quality: both train with the same hyper-parameters (the ppo_native preset, ``--n-envs`` users, ``--steps``
user-decisions, the same seed) on the default market's ground truth; their exported policies, with greedy and
random for scale, are evaluated on the same ``--episodes`` ground-truth user-days. ``ratio`` = RLlib's mean return
over adrl's (goal: within 5%, i.e. >= 0.95).

Throughput: RLlib env steps/s (user-decisions sampled and learned from, over the wall time between the first and
the last training iteration, so Ray's start and the first iteration are left out) with 1 and 2 env runners, each
with adrl's batched env inside (``vector_entry_point``) and with RLlib's Gymnasium vectorisation of single envs
(``sync``), ``--n-envs`` users in all; adrl's own PPO's rate at the same ``--n-envs`` for scale. Ray runs locally
with ``--num-cpus`` CPUs (one per env runner; the learner runs in the driver).
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from adrl.agents.baselines import GreedyPolicy, RandomPolicy
from adrl.agents.registry import load_policy_artifact
from adrl.evaluation import evaluate_policies
from adrl.rllib.train import train_rllib
from adrl.scenario import Scenario
from adrl.training import train_run

GROUND_TRUTH = "adrl/AdPlacement-v0"


def measured_rate(run: Path) -> float:
    """Steps/s between the first and the last metrics row (one row per training iteration)."""
    with open(run / "metrics.csv", newline="") as f:
        rows = [(float(r["step"]), float(r["wall_seconds"])) for r in csv.DictReader(f)]
    if len(rows) < 2:
        return float("nan")
    (s0, w0), (s1, w1) = rows[0], rows[-1]
    return (s1 - s0) / max(w1 - w0, 1e-9)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=300_000, help="training budget of both PPOs (user-decisions)")
    ap.add_argument("--n-envs", type=int, default=256, help="users stepped together (in all env runners)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--env-runners", type=int, default=2, help="env runners of the quality run")
    ap.add_argument("--episodes", type=int, default=20_000, help="ground-truth user-days of the evaluation")
    ap.add_argument("--throughput-steps", type=int, default=40_000, help="0: skip the throughput part")
    ap.add_argument("--num-cpus", type=int, default=2)
    args = ap.parse_args()
    import ray

    torch.set_num_threads(1)
    ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
    sc = Scenario()
    out: dict[str, Any] = {"benchmark": "rllib", "ray": ray.__version__, "steps": args.steps, "n_envs": args.n_envs,
                           "num_cpus": args.num_cpus, "quality": [], "throughput": {}}  # fmt: skip
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for seed in args.seeds:
                wall: dict[str, float] = {}
                t = time.perf_counter()
                train_run(agent_name="ppo_native", env_id=GROUND_TRUTH, out=Path(tmp) / f"adrl-{seed}",
                          steps=args.steps, n_envs=args.n_envs, seed=seed, progress=False)  # fmt: skip
                wall["ppo_native"] = time.perf_counter() - t
                t = time.perf_counter()
                train_rllib(agent_name="ppo", env_id=GROUND_TRUTH, out=Path(tmp) / f"rllib-{seed}",
                            steps=args.steps, n_envs=args.n_envs, seed=seed, num_env_runners=args.env_runners,
                            progress=False)  # fmt: skip
                wall["rllib_ppo"] = time.perf_counter() - t
                policies = {
                    "ppo_native": load_policy_artifact(Path(tmp) / f"adrl-{seed}" / "policy"),
                    "rllib_ppo": load_policy_artifact(Path(tmp) / f"rllib-{seed}" / "policy"),
                    "greedy": GreedyPolicy(sc),
                    "random": RandomPolicy(sc, seed=0),
                }
                evals = {e.name: e.overall for e in evaluate_policies(policies, sc, n_episodes=args.episodes,
                                                                      seed=100 + seed)}  # fmt: skip
                row: dict[str, Any] = {"seed": seed, "policies": {}}
                for name, m in evals.items():
                    row["policies"][name] = {"mean_return": round(m.mean_return, 5),
                                             "ci95": [round(m.ci_low, 5), round(m.ci_high, 5)]}  # fmt: skip
                    if name in wall:
                        row["policies"][name]["train_wall_seconds"] = round(wall[name], 1)
                ratio = evals["rllib_ppo"].mean_return / evals["ppo_native"].mean_return
                row["ratio"] = round(ratio, 4)
                row["at_least_95_percent"] = bool(ratio >= 0.95)  # the goal: RLlib within 5% of adrl or better
                out["quality"].append(row)
            if args.throughput_steps > 0:
                t = time.perf_counter()
                train_run(agent_name="ppo_native", env_id=GROUND_TRUTH, out=Path(tmp) / "adrl-rate",
                          steps=args.throughput_steps, n_envs=args.n_envs, seed=0, progress=False)  # fmt: skip
                out["throughput"]["ppo_native"] = round(args.throughput_steps / (time.perf_counter() - t), 1)
                for runners in (1, 2):
                    for mode in ("vector_entry_point", "sync"):
                        run = Path(tmp) / f"rate-{runners}-{mode}"
                        train_rllib(agent_name="ppo", env_id=GROUND_TRUTH, out=run, steps=args.throughput_steps,
                                    n_envs=args.n_envs, seed=0, num_env_runners=runners, vectorize=mode,
                                    progress=False)  # fmt: skip
                        out["throughput"][f"rllib_{runners}_runner_{mode}"] = round(measured_rate(run), 1)
    finally:
        ray.shutdown()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
