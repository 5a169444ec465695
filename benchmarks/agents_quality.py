"""Do sequential agents beat myopic targeting? Train on the default scenario's ground truth, several seeds (JSON).

For each seed: train tabular Q-learning and REINFORCE with their presets (configs/agents/*.yaml), evaluate them on
20,000 ground-truth user-days beside greedy, pacing and random (the same users for every policy), and record the
training wall time and CPU time. Goals (issue 5): each learner beats greedy by >= 10% mean return with
non-overlapping 95% CIs and beats random by far; Q-learning trains within 2 minutes on 2 cores.

Issue 16 adds, per seed: the rules tuned on the ground truth (``tuned_pacing``, ``frequency_cap``, adrl.agents.rules)
and the oracle planner (benchmarks/oracle.py, on ``--oracle-users`` of the same users), with every policy's
``fraction_of_oracle``; and with ``--learned DIR`` (a quickstart output of that seed: ``DIR`` may hold ``{seed}``),
each agent trained again on its learned simulators: ``plain`` (the main model, ``DIR/behavior``), ``bagged`` (the
mean of the main model and the bootstrap members, ``DIR/simulator``, what the main job trains on) and
``bagged_pessimistic`` (the same with reward − ``--penalty`` · disagreement, the MOPO mode) and ``bagged_support``
(reward − ``--support-penalty`` · the logged support's width, the count-based mode), each with the ground-truth
return, the return inside the simulator it was trained on (``sim_return``; optimism = sim / truth − 1; for the
pessimistic modes also ``penalised_sim_return``, the objective it trained on, and its ``penalised_optimism``),
``sim_to_real`` = its ground-truth return over the one of the same agent trained on the ground truth, and
``predicted_over_true_on_truth``: the simulator's mean pCTR, pCTCVR, pLeave and immediate reward over the truth's on
the agent's own ground-truth trajectories (``adrl.fidelity``, ``rollouts="ground-truth"``), where its optimism
comes from.
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
MODES = ("plain", "bagged", "bagged_pessimistic", "bagged_support")  # the learned simulators of --learned


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--agents", nargs="+", default=["q_learning", "reinforce", "ppo_native"])
    ap.add_argument("--steps", type=int, default=None, help="override every agent's preset budget")
    ap.add_argument("--episodes", type=int, default=20_000)
    ap.add_argument("--oracle-users", type=int, default=1000, help="0: no oracle")
    ap.add_argument("--learned", default=None, help="quickstart dir of each seed, e.g. /tmp/qs{seed}")
    ap.add_argument("--penalty", type=float, default=0.25, help="lambda of the bagged_pessimistic mode")
    ap.add_argument("--support-penalty", type=float, default=0.05, help="kappa of the bagged_support mode")
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    args = ap.parse_args()
    sc = Scenario()
    from adrl.agents.baselines import PacingPolicy

    gap = search_pacing_gap(sc, None, None, seed=0)
    from adrl.agents.rules import tune_rules
    from adrl.evaluation import simulator_score

    tuned_pacing, frequency_cap, _ = tune_rules(sc, None, simulator_score(sc, None, seed=0, n_episodes=4000))
    baselines: dict[str, Any] = {
        "greedy": GreedyPolicy(sc),
        "pacing": PacingPolicy(sc, gap),
        "tuned_pacing": tuned_pacing,
        "frequency_cap": frequency_cap,
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
            if args.oracle_users > 0:
                import sys

                sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file, not with -m
                from benchmarks.oracle import OraclePlanner, evaluate_oracle

                oracle = evaluate_oracle(OraclePlanner(sc), n_users=args.oracle_users, seed=100 + seed)
                row["oracle"] = oracle.as_dict()
                for m in row["policies"].values():
                    m["fraction_of_oracle"] = round(m["mean_return"] / oracle.mean_return, 4)
            if args.learned:
                row["learned"] = _learned_runs(Path(args.learned.format(seed=seed)), args, seed, Path(tmp), row)
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


def _learned_runs(qs: Path, args: Any, seed: int, tmp: Path, row: dict[str, Any]) -> dict[str, Any]:
    """Each agent trained on each learned simulator (``--modes``) of quickstart dir ``qs``."""
    from adrl.behavior.ensemble import EnsembleResponse
    from adrl.envs.registration import LEARNED_ID
    from adrl.fidelity import QUANTITIES, rollout_fidelity
    from adrl.training import resolve_env

    sc = Scenario()
    out: dict[str, Any] = {}
    sims = {"plain": qs / "behavior", "bagged": qs / "simulator"}
    if (qs / "simulator").exists():
        bagged = EnsembleResponse.load(qs / "simulator", sc)
        bagged.penalty, bagged.support_penalty = args.penalty, 0.0
        sims["bagged_pessimistic"] = bagged.save(tmp / f"bagged-pessimistic-{seed}")
        if bagged.support is not None:  # ensembles saved before the count-based mode have none
            bagged.penalty, bagged.support_penalty = 0.0, args.support_penalty
            sims["bagged_support"] = bagged.save(tmp / f"bagged-support-{seed}")
    for mode in args.modes:
        sim = sims.get(mode)
        if sim is None or not sim.exists():
            continue
        response = resolve_env(LEARNED_ID, sc, sim).response
        for agent in args.agents:
            run = tmp / f"{agent}-{seed}-{mode}"
            train_run(agent_name=agent, env_id=LEARNED_ID, out=run, behavior=sim, steps=args.steps, seed=seed,
                      progress=False)  # fmt: skip
            policy = load_policy_artifact(run / "policy")
            truth = evaluate_policies({agent: policy}, sc, n_episodes=args.episodes, seed=100 + seed)[0].overall
            inside = evaluate_policies({agent: policy}, sc, n_episodes=args.episodes, seed=100 + seed,
                                       response=response)[0].overall  # fmt: skip
            on_truth = row["policies"][agent]["mean_return"]
            penalised: dict[str, float] = {}
            if getattr(response, "penalty", 0.0) or getattr(response, "support_penalty", 0.0):
                p = evaluate_policies({agent: policy}, sc, n_episodes=args.episodes, seed=100 + seed,
                                      response=response, pessimistic=True)[0].overall.mean_return  # fmt: skip
                penalised = {
                    "penalised_sim_return": round(p, 5),
                    "penalised_optimism": round(p / truth.mean_return - 1, 4),
                }
            # the simulator's calibration on the states the agent really reaches: the source of its optimism
            fid = rollout_fidelity(policy, response, n_envs=2048, n_steps=48, seed=100 + seed,
                                   deterministic=False, rollouts="ground-truth").overall  # fmt: skip
            calibration = {q: round(fid[q]["ratio"], 4) for q in QUANTITIES}
            out[f"{agent}/{mode}"] = {
                "penalty": float(getattr(response, "penalty", 0.0)),
                "support_penalty": float(getattr(response, "support_penalty", 0.0)),
                "mean_return": round(truth.mean_return, 5),
                "ci95": [round(truth.ci_low, 5), round(truth.ci_high, 5)],
                "churn_rate": round(truth.churn_rate, 4),
                "sim_return": round(inside.mean_return, 5),
                "optimism": round(inside.mean_return / truth.mean_return - 1, 4),
                **penalised,
                "sim_to_real": round(truth.mean_return / on_truth, 4),
                "predicted_over_true_on_truth": calibration,
                **({"fraction_of_oracle": round(truth.mean_return / row["oracle"]["mean_return"], 4)}
                   if "oracle" in row else {}),
            }  # fmt: skip
    return out


if __name__ == "__main__":
    main()
