"""Offline policy selection, the protocol of DOPE (Fu et al. 2021) and SCOPE-RL (prints JSON).

A zoo of candidate policies spanning the range (random, greedy, pacing with several gaps, ε-mixtures, tabular
Q-learning and REINFORCE each at two checkpoints of one training run on the ground-truth world) is evaluated from
logs of a logging policy, over independent log draws, by every estimator; each candidate's true return per user-day
comes from ``evaluate_policies`` on the ground-truth world. Per estimator, averaged over draws: mean |relative
error| of the candidates' returns, Spearman rank correlation with the true returns, regret@1
((V_best − V_picked) / V_best, the pick being the top estimate), 95% CI coverage, and seconds per draw.

Loggers: ``quickstart`` (ε-greedy around greedy, ε = 0.3 per component, the quickstart's) and ``softmax-pacing``
(production-like: a softmax, temperature 0.05, over the true immediate value plus a bonus of 0.05 for the delay a
3-hour pacing rule takes; every action keeps some probability).

For each draw the model-based estimators use ``--members`` behavior models fitted on bootstrap resamples of that
draw's user-days (``--fit-epochs`` each, ``--inputs`` decision or impression), calibrated in the large on that
draw's logs; they run in one call per policy (they share the simulator's Q̂ / V̂ and state ratios), so
``seconds_per_policy`` is the group's.
``per-decision-dr`` is the one-step DR estimate ranked as a stand-in.

Each finished draw is appended to ``<workdir>/draws-<logger>-<users>-<settings>.jsonl``; a run stopped part way
(Ctrl-C, a lost machine) and started again with the same arguments resumes at the next draw.

Usage (a run this machine affords; the full protocol is
``--users 60000,250000 --draws 20 --logger quickstart,softmax-pacing``):
    python benchmarks/ope_selection.py --users 60000 --draws 2 --logger quickstart --workdir runs/ope_selection
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np
from scipy.stats import spearmanr

from adrl.agents.baselines import EpsilonGreedyPolicy, GreedyPolicy, PacingPolicy, RandomPolicy, WorldValueModel
from adrl.agents.registry import load_policy_artifact
from adrl.evaluation import evaluate_policy
from adrl.features import FeatureLayout
from adrl.io import atomic_open
from adrl.ope.data import read_adrl_logs
from adrl.ope.members import calibrate_members, fit_bootstrap_members, load_members
from adrl.ope.model_based import Simulators, logged_return
from adrl.ope.run import evaluate
from adrl.scenario import Scenario
from adrl.simulate import simulate
from adrl.world import World

RETURN_ESTIMATORS = ("model", "magic", "model-wdr", "mis", "mdr", "pdis", "wis")
# 2: the model-based interval takes Student's t at the Barnard-Rubin degrees of freedom; records keep the intervals
JOURNAL_VERSION = 2


class SoftmaxPacingLogger:
    """Softmax (temperature ``t``) over the true immediate value of every action plus ``bonus`` for the delay a
    ``gap``-hour pacing rule would take: a production ranker with exploration, full support."""

    def __init__(self, scenario: Scenario, *, t: float = 0.05, bonus: float = 0.05, gap: int = 3) -> None:
        self.scenario, self.t, self.bonus = scenario, t, bonus
        self.nvec = scenario.action_nvec
        self.value = WorldValueModel(scenario)
        self.pacing = PacingPolicy(scenario, gap, self.value)

    def action_probabilities(self, obs: np.ndarray) -> np.ndarray:
        v = self.value.expected_reward(obs).reshape(obs.shape[0], -1)  # (n, A)
        d = self.pacing.choose(obs)[:, 0]
        per_delay = self.nvec[1] * self.nvec[2]
        delay_of = np.arange(v.shape[1]) // per_delay
        s = (v + self.bonus * (delay_of[None, :] == d[:, None])) / self.t
        s -= s.max(axis=1, keepdims=True)
        e = np.exp(s)
        return e / e.sum(axis=1, keepdims=True)


def build_zoo(sc: Scenario, workdir: Path, *, seed: int, q_steps: int, reinforce_steps: int) -> dict[str, Path]:
    """Candidate policy artifacts (trained once, reused by later runs of the benchmark)."""
    from adrl.training import train_run

    zoo = workdir / "zoo"
    paths: dict[str, Path] = {}
    value = WorldValueModel(sc)
    fixed: dict[str, Any] = {
        "random": RandomPolicy(sc),
        "greedy": GreedyPolicy(sc, value),
        **{f"pacing-{g}h": PacingPolicy(sc, g, value) for g in (2, 3, 4)},  # delays (0, 1, 2, 4): gap 6 acts as 4
        "eps0.3-greedy": EpsilonGreedyPolicy(GreedyPolicy(sc, value), 0.3),
        "eps0.5-pacing-3h": EpsilonGreedyPolicy(PacingPolicy(sc, 3, value), 0.5),
        "eps0.2-pacing-4h": EpsilonGreedyPolicy(PacingPolicy(sc, 4, value), 0.2),
    }
    for name, policy in fixed.items():
        p = zoo / name
        if not (p / "manifest.json").is_file():
            policy.save(p)
        paths[name] = p
    for agent, steps in (("q_learning", q_steps), ("reinforce", reinforce_steps)):
        run = zoo / f"{agent}-run"
        if not (run / "policy" / "manifest.json").is_file():
            if run.exists():
                shutil.rmtree(run)
            train_run(agent_name=agent, env_id="adrl/AdPlacement-v0", out=run, steps=steps, seed=seed,
                      checkpoint_every=max(steps // 3, 1), progress=False)  # fmt: skip
        checkpoints = sorted((run / "checkpoints").glob("step-*"))  # the last two kept: about 1/3 and 2/3 of training
        early = checkpoints[0]
        paths[f"{agent}-early"] = early
        paths[f"{agent}-final"] = run / "policy"
    return paths


def summarise(estimates: dict[str, dict[str, Any]], truth: dict[str, float]) -> dict[str, float]:
    names = list(truth)
    est = np.array([estimates[n]["value"] for n in names])
    tru = np.array([truth[n] for n in names])
    rel = np.abs(est - tru) / np.maximum(np.abs(tru), 1e-9)
    best = tru.max()
    picked = tru[int(np.argmax(est))]
    covered = [estimates[n]["lower"] <= truth[n] <= estimates[n]["upper"] for n in names]
    rho = spearmanr(est, tru).statistic
    return {
        "mean_abs_rel_error": float(rel.mean()),
        "max_abs_rel_error": float(rel.max()),
        "spearman": float(rho) if np.isfinite(rho) else math.nan,
        "regret_at_1": float((best - picked) / abs(best)),
        "coverage": float(np.mean(covered)),
    }


def _read_journal(path: Path) -> dict[int, dict[str, Any]]:
    """Finished draws of an earlier run with the same settings; a torn last line (a kill mid-write) is dropped."""
    done: dict[int, dict[str, Any]] = {}
    if not path.is_file():
        return done
    text = path.read_text()
    kept = []
    for line in text.splitlines(keepends=True):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if line.endswith("\n"):
            done[int(record["draw"])] = record
            kept.append(line)
    if "".join(kept) != text:  # drop the torn line, so the next append starts a line of its own
        with atomic_open(path) as fh:
            fh.write("".join(kept))
    return done


def _replay(
    record: dict[str, Any],
    rows: dict[str, list[dict[str, float]]],
    values: dict[str, dict[str, list[float]]],
    secs: dict[str, list[float]],
    logged_values: list[float],
    fit_secs: list[float],
    intervals: dict[str, dict[str, list[tuple[float, float]]]],
) -> None:
    """Add one draw's record to the running tables."""
    logged_values.append(record["logged_value"])
    fit_secs.append(record["fit_seconds"])
    for k in rows:
        rows[k].append(record["summary"][k])
        secs[k].append(record["seconds"][k])
        for n, v in record["values"][k].items():
            values[k][n].append(v)
        for n, (lo, hi) in record["intervals"][k].items():
            intervals[k][n].append((lo, hi))


def within_10pct(values: dict[str, list[float]], truth: dict[str, float]) -> float:
    """Share of (candidate, draw) estimates within 10% of the candidate's true return."""
    return float(np.mean([abs(x - truth[n]) <= 0.1 * abs(truth[n]) for n, v in values.items() for x in v]))


def by_policy(
    values: dict[str, list[float]], intervals: dict[str, list[tuple[float, float]]], truth: dict[str, float]
) -> dict[str, dict[str, float]]:
    """Per candidate over the draws: mean signed and absolute relative error, the share within 10%, CI coverage."""
    out = {}
    for n, v in values.items():
        rel = (np.asarray(v) - truth[n]) / max(abs(truth[n]), 1e-9)
        covered = [lo <= truth[n] <= hi for lo, hi in intervals[n]]
        out[n] = {
            "true_return": round(truth[n], 4),
            "mean_rel_error": round(float(rel.mean()), 4),
            "mean_abs_rel_error": round(float(np.abs(rel).mean()), 4),
            "within_10pct": round(float(np.mean(np.abs(rel) <= 0.1)), 4),
            "coverage": round(float(np.mean(covered)), 4),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", default="60000", help="comma-separated log sizes (user-days per draw)")
    ap.add_argument("--draws", type=int, default=20)
    ap.add_argument("--logger", default="quickstart,softmax-pacing")
    ap.add_argument("--members", type=int, default=3)
    ap.add_argument("--fit-epochs", type=int, default=8, help="epochs per member (the quickstart's; 4: 2x the error)")
    ap.add_argument(
        "--inputs",
        choices=("decision", "impression"),
        default="decision",
        help="the members' inputs (adrl.behavior.inputs): every input, or the state at the impression",
    )
    ap.add_argument("--max-starts", type=int, default=20_000, help="logged starts the model-based estimate uses")
    ap.add_argument("--max-episodes", type=int, default=4_000, help="episodes for model-WDR / MAGIC / MIS / MDR")
    ap.add_argument("--estimators", default=",".join(RETURN_ESTIMATORS))
    ap.add_argument("--eval-episodes", type=int, default=20_000)
    ap.add_argument("--q-steps", type=int, default=4_000_000)
    ap.add_argument("--reinforce-steps", type=int, default=600_000)
    ap.add_argument("--n-boot", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=Path, default=Path("runs/ope_selection"))
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    sc = Scenario()
    layout = FeatureLayout.from_scenario(sc)
    args.workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    zoo_paths = build_zoo(sc, args.workdir, seed=args.seed, q_steps=args.q_steps, reinforce_steps=args.reinforce_steps)
    zoo = {n: load_policy_artifact(p, expect_layout=layout) for n, p in zoo_paths.items()}
    zoo_seconds = time.perf_counter() - t0
    truth_file = args.workdir / f"truth-{args.eval_episodes}.json"
    truth = json.loads(truth_file.read_text()) if truth_file.is_file() else {}
    if set(truth) != set(zoo):
        # the policy OPE evaluates is action_probabilities: sample from it (ε-mixtures and REINFORCE are stochastic)
        truth = {
            n: evaluate_policy(p, sc, n_episodes=args.eval_episodes, seed=args.seed + 1, deterministic=False,
                               name=n).overall.mean_return
            for n, p in zoo.items()
        }  # fmt: skip
        truth_file.write_text(json.dumps(truth))
    estimators = [e.strip() for e in args.estimators.split(",") if e.strip()]
    # the draw count is left out: draw k's seed does not depend on it, so --draws 8 summarises the first 8 draws of
    # an interrupted --draws 20 run
    settings = [args.members, args.fit_epochs, args.max_starts, args.max_episodes, estimators,
                args.eval_episodes, args.n_boot, args.seed, sorted(zoo)]  # fmt: skip
    if args.inputs != "decision":  # journals of the default keep the key they had before the option
        settings.append(args.inputs)
    settings.append(JOURNAL_VERSION)
    config_key = hashlib.sha256(json.dumps(settings).encode()).hexdigest()[:10]
    results: dict[str, Any] = {}
    seeds = np.random.SeedSequence(args.seed).spawn(args.draws)
    for logger_name in args.logger.split(","):
        logger: Any = "epsilon-greedy" if logger_name == "quickstart" else SoftmaxPacingLogger(sc)
        for n_users in (int(u) for u in args.users.split(",")):
            rows: dict[str, list[dict[str, float]]] = {k: [] for k in (*estimators, "per-decision-dr")}
            values: dict[str, dict[str, list[float]]] = {k: {n: [] for n in zoo} for k in rows}
            intervals: dict[str, dict[str, list[tuple[float, float]]]] = {k: {n: [] for n in zoo} for k in rows}
            secs: dict[str, list[float]] = {k: [] for k in rows}
            logged_values: list[float] = []
            fit_secs: list[float] = []
            # each finished draw is appended (and flushed) here, so an interrupted run resumes at the next draw
            journal = args.workdir / f"draws-{logger_name}-{n_users}-{config_key}.jsonl"
            done = _read_journal(journal)
            for d, ss in enumerate(seeds):
                draw_seed = int(ss.generate_state(1)[0])
                if d in done:
                    _replay(done[d], rows, values, secs, logged_values, fit_secs, intervals)
                    continue
                with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
                    logs = Path(tmp) / "logs.parquet"
                    simulate(sc, n_users=n_users, out=logs, logging_policy=logger, seed=draw_seed, progress=False)
                    t = time.perf_counter()
                    members = fit_bootstrap_members(logs, sc, Path(tmp) / "members", n_members=args.members,
                                                    seed=draw_seed, epochs=args.fit_epochs,
                                                    impression_inputs=args.inputs == "impression")  # fmt: skip
                    fit_seconds = time.perf_counter() - t
                    sim = Simulators(World(sc), calibrate_members(load_members(members, sc), logs, layout))
                    data = read_adrl_logs(logs, layout)
                logged_value = logged_return(data).value
                draw_secs: dict[str, list[float]] = {k: [] for k in rows}
                per_est: dict[str, dict[str, dict[str, Any]]] = {k: {} for k in rows}
                for name, policy in zoo.items():
                    rng = np.random.default_rng([draw_seed, len(per_est[estimators[0]])])
                    t = time.perf_counter()  # together: they share the simulator's Q / V and the state ratios
                    res = evaluate(data, policy.action_probabilities, estimators, rng=rng, sim=sim, n_boot=args.n_boot,
                                   max_starts=args.max_starts, max_episodes=args.max_episodes)  # fmt: skip
                    for k in estimators:
                        draw_secs[k].append(time.perf_counter() - t)  # the group's seconds, the same for each
                        per_est[k][name] = res.estimates[k].as_dict()
                    t = time.perf_counter()
                    res = evaluate(data, policy.action_probabilities, ["dr"], rng=rng, n_boot=0)
                    draw_secs["per-decision-dr"].append(time.perf_counter() - t)
                    per_est["per-decision-dr"][name] = res.estimates["dr"].as_dict()
                record = {
                    "draw": d,
                    "logged_value": logged_value,
                    "fit_seconds": fit_seconds,
                    "summary": {k: summarise(per_est[k], truth) for k in rows},
                    "values": {k: {n: per_est[k][n]["value"] for n in zoo} for k in rows},
                    "intervals": {k: {n: [per_est[k][n]["lower"], per_est[k][n]["upper"]] for n in zoo} for k in rows},
                    "seconds": {k: float(np.mean(draw_secs[k])) for k in rows},
                }
                with journal.open("a") as fh:
                    fh.write(json.dumps(record) + "\n")
                    fh.flush()
                    os.fsync(fh.fileno())
                _replay(record, rows, values, secs, logged_values, fit_secs, intervals)
                progress = {k: round(rows[k][-1]["spearman"], 3) for k in rows}
                print(json.dumps({"draw": f"{logger_name} {n_users} {d + 1}/{args.draws}", "spearman": progress}),
                      file=sys.stderr, flush=True)  # fmt: skip
            results[f"{logger_name}/{n_users}"] = {
                "logger": logger_name,
                "users": n_users,
                "draws": args.draws,
                "logged_value": float(np.mean(logged_values)),
                "fit_seconds_per_draw": float(np.mean(fit_secs)),
                "estimators": {
                    k: {
                        **{m: float(np.nanmean([r[m] for r in rows[k]])) for m in rows[k][0]},
                        "seconds_per_policy": float(np.mean(secs[k])),
                        "mean_estimate": {n: round(float(np.mean(v)), 4) for n, v in values[k].items()},
                        "within_10pct": within_10pct(values[k], truth),
                        "by_policy": by_policy(values[k], intervals[k], truth),
                    }
                    for k in rows
                },
            }
    print(json.dumps({
        "candidates": {n: truth[n] for n in zoo},
        "zoo_seconds": zoo_seconds,
        "members": args.members,
        "fit_epochs": args.fit_epochs,
        "results": results,
        "seconds": time.perf_counter() - t0,
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
