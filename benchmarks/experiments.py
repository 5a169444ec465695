"""Repeated A/B and A/A experiments with a known truth: how trustworthy the readout is; prints one JSON object.

Each experiment runs through the serving code paths: a ``PolicyService`` with two arms (keyed-hash assignment with
a fresh salt, per-arm exploration, the decision log with its journal and parquet parts), ground-truth users of
``adrl.drive`` sending the same list requests and list feedback the HTTP API takes, but **in process** (no HTTP,
for speed: ``ServiceEndpoint``), and ``adrl.experiment.readout`` on the joined log. The truth of each arm is
``adrl.drive.true_values`` on a large population.

Measured (issue 18's goals in brackets):

1. ``coverage``: A (greedy, ε=0.1) vs B (pacing gap 3, ε=0.1), ``--reps`` experiments: share of 95% CIs of the
   return-per-user-day lift that cover the true lift [≥ 93%];
2. ``aa``: A vs A (the same artifact in both arms), ``--reps`` experiments read out after every day: share with a
   significant lift at any daily look, naive fixed-horizon z-test vs the always-valid mSPRT [mSPRT ≤ 5%];
3. ``srm``: users assigned by the server's own assignment code (``Experiment.assign``, fresh salt per run); in the
   broken runs 3% of arm B's users lose all their records; share flagged by the chi-square check (p < 0.001)
   [broken ≥ 95%, correct ≤ 1%]; the full-path A/A and A/B runs' final SRM flags are reported too;
4. ``cuped``: pacing gap 3 (A, ε=0.1) vs pacing gap 4 (B), ``--cuped-reps`` experiments of ``--cuped-days`` days
   after a ``--pre-days`` pre-period on a control-only server (the same users before the experiment). Covariates:
   each user's pre-period reward, clicks, conversions, impressions and leaves per user-day, and the segment
   (one-hot) and signals of the user's first decision; θ pooled within arms. Reported: CUPED CI width / plain CI
   width per metric [return ≤ 0.8], the within-arm R², and the share of CUPED and of plain 95% CIs of the return
   lift that cover the true lift (``true_values`` of the two pacing arms) [CUPED ≥ 93%]. ``r2_ceiling``: the R²
   of the best covariate there could be, each user's own expected return per day, from ``--ceiling-days`` days of
   ``--ceiling-users`` users per arm (one-way ANOVA), with its width-ratio floor sqrt(1 − R²) and the R² a
   pre-period mean of the return alone reaches: what limits the ratio is the users' day-to-day noise, not the fit.

Usage: .venv/bin/python benchmarks/experiments.py [--reps 200] [--users 300] [--days 5] [--srm-users 120000]
       [--only cuped --cuped-reps 40 --pre-days 28 --cuped-days 14 --ceiling-days 30]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from adrl.agents.baselines import GreedyPolicy, PacingPolicy
from adrl.drive import ServiceEndpoint, drive, live_days, true_values
from adrl.experiment import ReadoutOptions, readout, srm
from adrl.logs import read_logs
from adrl.policy import load_policy
from adrl.scenario import Scenario
from adrl.serving import PolicyService, ServeConfig
from adrl.serving.experiment import Arm, ArmSpec, ArmTag, Experiment, ExperimentSpec

EXPLORATION = "epsilon:0.1"


def service(policy: Path, log_dir: Path, seed: int, arms: tuple[Path, Path] | None, salt: bytes) -> PolicyService:
    spec = None
    if arms is not None:
        spec = ExperimentSpec("bench", (ArmSpec("A", arms[0], EXPLORATION), ArmSpec("B", arms[1], EXPLORATION)),
                              (50.0, 50.0), salt)  # fmt: skip
    cfg = ServeConfig(policy=policy, log_dir=log_dir, exploration=EXPLORATION, seed=seed, experiment=spec,
                      feedback_window=3600.0, flush_interval=3600.0)  # fmt: skip
    return PolicyService.from_config(cfg).start()


def run_experiment(
    root: Path,
    arms: tuple[Path, Path],
    *,
    rep: int,
    users: int,
    days: int,
    opts: ReadoutOptions,
    peek: bool,
    pre_days: int = 0,
) -> list[dict[str, Any]]:
    """Readouts of one experiment after every day (``peek``) or after the last one only."""
    sc = Scenario()
    rng = np.random.default_rng([rep, 7])
    salt = rng.bytes(16)
    work = root / f"rep-{rep}"
    pre = None
    user_seed = 10_000 + rep
    if pre_days:
        pre_svc = service(arms[0], work / "pre", rep, None, salt)
        drive(ServiceEndpoint(pre_svc), sc, users=users, days=pre_days, seed=user_seed)
        pre_svc.drain()
        pre_svc.close()
        pre = read_logs(work / "pre", columns=["user_id", "episode_id", "reward", "shown", "click", "conversion",
                                                "leave"])  # fmt: skip
    svc = service(arms[0], work / "log", rep, arms, salt)
    outs = []
    try:
        for day in range(days):
            drive(ServiceEndpoint(svc), sc, users=users, days=1, seed=user_seed, day_offset=pre_days + day)
            if peek or day == days - 1:
                svc.drain()
                df = read_logs(work / "log")
                outs.append(readout(df, split=(50.0, 50.0), arms=["A", "B"], pre=pre, options=opts))
    finally:
        svc.close()
        shutil.rmtree(work, ignore_errors=True)
    return outs


def srm_runs(reps: int, n_users: int, loss: float) -> dict[str, Any]:
    """Assignment through the server's code; broken runs drop ``loss`` of arm B's users' records."""
    sc = Scenario()
    flags = {"correct": 0, "broken": 0}
    with tempfile.TemporaryDirectory() as tmp:
        GreedyPolicy(sc).save(Path(tmp) / "g")
        arms = [load_policy(Path(tmp) / "g")]
        for rep in range(reps):
            rng = np.random.default_rng([rep, 11])
            exp = Experiment("srm", [Arm(ArmSpec(n, Path(tmp) / "g"), arms[0], ArmTag(n, "g", "g")) for n in "AB"],
                             (50.0, 50.0), rng.bytes(16))  # fmt: skip
            arm = exp.assign([f"user-{rep}-{i}" for i in range(n_users)])
            counts = np.bincount(arm, minlength=2)
            flags["correct"] += srm(counts.tolist(), [50, 50])["flag"]
            lost = int(rng.binomial(counts[1], loss))  # each of B's users loses their records with prob. `loss`
            flags["broken"] += srm([int(counts[0]), int(counts[1]) - lost], [50, 50])["flag"]
    return {
        "runs": reps,
        "users_per_run": n_users,
        "loss_in_arm_b": loss,
        "flagged_broken": flags["broken"] / reps,
        "flagged_correct": flags["correct"] / reps,
    }


def coverage_part(
    tmp: Path, arms: tuple[Path, Path], true_lift: float, args: argparse.Namespace, opts: ReadoutOptions
) -> dict[str, Any]:
    t0 = time.perf_counter()
    covered, widths, seq_power, srm_ab = 0, [], 0, 0
    for rep in range(args.reps):
        out = run_experiment(tmp, arms, rep=rep, users=args.users, days=args.days, opts=opts, peek=False)[-1]
        lo, hi = out["lift"]["B"]["return_per_user_day"]["absolute_ci"]
        covered += lo <= true_lift <= hi
        widths.append(hi - lo)
        seq_power += out["lift"]["B"]["sequential"]["reject"]
        srm_ab += out["srm"]["flag"]
    return {
        "runs": args.reps, "users": args.users, "days": args.days, "coverage_95": covered / args.reps,
        "mean_ci_width": float(np.mean(widths)), "msprt_reject_at_end": seq_power / args.reps,
        "srm_false_alarms": srm_ab / args.reps, "seconds": round(time.perf_counter() - t0, 1),
    }  # fmt: skip


def aa_part(tmp: Path, arm: Path, args: argparse.Namespace, opts: ReadoutOptions) -> dict[str, Any]:
    t0 = time.perf_counter()
    naive, seq, srm_aa, naive_final = 0, 0, 0, 0
    for rep in range(args.reps):
        looks = run_experiment(tmp, (arm, arm), rep=100_000 + rep, users=args.users, days=args.days, opts=opts,
                               peek=True)  # fmt: skip
        lifts = [look["lift"]["B"]["return_per_user_day"] for look in looks]
        naive += any(x["p_value"] < 0.05 for x in lifts)
        naive_final += lifts[-1]["p_value"] < 0.05
        seq += any(look["lift"]["B"]["sequential"]["reject"] for look in looks)
        srm_aa += looks[-1]["srm"]["flag"]
    return {
        "runs": args.reps, "looks": args.days, "fpr_daily_peeking_naive": naive / args.reps,
        "fpr_daily_peeking_msprt": seq / args.reps, "fpr_single_final_look": naive_final / args.reps,
        "srm_false_alarms": srm_aa / args.reps, "seconds": round(time.perf_counter() - t0, 1),
    }  # fmt: skip


def cuped_part(
    tmp: Path, arms: tuple[Path, Path], true_lift: float, args: argparse.Namespace, opts: ReadoutOptions
) -> dict[str, Any]:
    """``--cuped-reps`` experiments of ``--cuped-days`` days after a ``--pre-days`` pre-period: CUPED CI width over
    the plain CI's per metric, the within-arm R², and how often each CI of the return lift covers the true lift."""
    t0 = time.perf_counter()
    ratios: dict[str, list[float]] = {}
    r2: list[float] = []
    covered = {"cuped": 0, "plain": 0}
    n_cov = 0
    for rep in range(args.cuped_reps):
        out = run_experiment(tmp, arms, rep=200_000 + rep, users=args.users, days=args.cuped_days, opts=opts,
                             peek=False, pre_days=args.pre_days)[-1]  # fmt: skip
        cuped = out["lift"]["B"]["cuped"]
        n_cov = cuped["n_covariates"]
        for m, v in cuped.items():
            if isinstance(v, dict):
                ratios.setdefault(m, []).append(v["width_ratio"])
        r2.append(cuped["return_per_user_day"]["r2"])
        for kind, ci in (("cuped", cuped["return_per_user_day"]["absolute_ci"]),
                         ("plain", out["lift"]["B"]["return_per_user_day"]["absolute_ci"])):  # fmt: skip
            covered[kind] += ci[0] <= true_lift <= ci[1]
    return {
        "runs": args.cuped_reps, "users": args.users, "pre_days": args.pre_days, "days": args.cuped_days,
        "n_covariates": n_cov, "width_ratio_median": {m: float(np.median(v)) for m, v in ratios.items()},
        "r2_median": float(np.median(r2)), "coverage_95": {k: v / args.cuped_reps for k, v in covered.items()},
        "seconds": round(time.perf_counter() - t0, 1),
    }  # fmt: skip


def r2_ceiling(policies: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """What limits the CUPED ratio: the R² of the best possible covariate, each user's own expected return per day μ
    (no pre-period can beat knowing it). From ``--ceiling-days`` days of ``--ceiling-users`` users under each arm
    (the truth's decisions, no server), one-way ANOVA: within-user day variance σ²_w, between-user σ²_b = var(user
    means) − σ²_w / days; for a ``--cuped-days`` experiment R²_max = σ²_b / (σ²_b + σ²_w / D), and a
    ``--pre-days`` pre-period mean of the return alone reaches σ²_b² / ((σ²_b + σ²_w / P)(σ²_b + σ²_w / D))."""
    t0 = time.perf_counter()
    sc, n, days = Scenario(), args.ceiling_users, args.ceiling_days
    out: dict[str, Any] = {"users": n, "days": days}
    for name, policy in policies.items():

        def decide(obs: np.ndarray, idx: np.ndarray, day: int, steps: np.ndarray, p: Any = policy) -> Any:
            return p.decide_arrays(obs).action, [None] * len(idx), []

        daily = np.stack([live_days(sc, decide, None, users=n, days=1, seed=20_000, day_offset=d).reward
                          for d in range(days)], axis=1)  # fmt: skip
        within = float(daily.var(axis=1, ddof=1).mean())
        between = float(daily.mean(axis=1).var(ddof=1) - within / days)
        exp_var, pre_var = between + within / args.cuped_days, between + within / args.pre_days
        r2_max = between / exp_var
        out[name] = {
            "between_user_var": between, "within_user_day_var": within, "r2_max": r2_max,
            "width_ratio_floor": float(np.sqrt(1 - r2_max)), "r2_pre_mean_return": between**2 / (pre_var * exp_var),
        }  # fmt: skip
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=200, help="experiments per kind (A/B and A/A)")
    ap.add_argument("--users", type=int, default=300, help="users per experiment")
    ap.add_argument("--days", type=int, default=5, help="days per experiment (A/A: one look per day)")
    ap.add_argument("--truth-users", type=int, default=200_000)
    ap.add_argument("--srm-users", type=int, default=120_000)
    ap.add_argument("--cuped-reps", type=int, default=40, help="CUPED experiments")
    ap.add_argument("--pre-days", type=int, default=28, help="CUPED: days of the pre-period (control only)")
    ap.add_argument("--cuped-days", type=int, default=14, help="CUPED: days of each experiment")
    ap.add_argument("--ceiling-days", type=int, default=30, help="CUPED R² ceiling: days per user")
    ap.add_argument("--ceiling-users", type=int, default=4000, help="CUPED R² ceiling: users per arm")
    ap.add_argument("--tau", type=float, default=0.1, help="mSPRT mixture scale (return per user-day)")
    ap.add_argument("--only", default="coverage,aa,srm,cuped", help="the parts to run, comma-separated")
    args = ap.parse_args()
    parts = set(args.only.split(","))
    if not parts <= {"coverage", "aa", "srm", "cuped"}:
        raise SystemExit(f"--only {args.only!r}: expected parts among coverage, aa, srm, cuped")
    # a within-user variance needs two days of each user
    least = {"reps": 1, "users": 1, "days": 1, "cuped_reps": 1, "pre_days": 1, "cuped_days": 1, "ceiling_users": 2,
             "ceiling_days": 2}  # fmt: skip
    for k, low in least.items():
        if getattr(args, k) < low:
            raise SystemExit(f"--{k.replace('_', '-')} {getattr(args, k)}: expected at least {low}")
    os.environ.setdefault("ADRL_LOG_KEY", "bench-only-key-0123456789abcdef")
    sc = Scenario()
    started = time.perf_counter()
    result: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "settings": vars(args) | {"exploration": EXPLORATION, "path": "PolicyService in process (no HTTP)"},
    }
    opts = ReadoutOptions(tau=args.tau)
    with tempfile.TemporaryDirectory(prefix="adrl-exp-bench-") as tmp_name:
        tmp = Path(tmp_name)
        GreedyPolicy(sc).save(tmp / "greedy")
        PacingPolicy(sc, 3).save(tmp / "pacing")
        a, b = tmp / "greedy", tmp / "pacing"
        if "coverage" in parts:
            t0 = time.perf_counter()
            arm_policies = {"A": load_policy(a, exploration=EXPLORATION, seed=1),
                            "B": load_policy(b, exploration=EXPLORATION, seed=2)}  # fmt: skip
            truth = true_values(arm_policies, sc, users=args.truth_users, days=1, seed=999)
            true_lift = truth["B"]["return_per_user_day"] - truth["A"]["return_per_user_day"]
            result["truth"] = truth | {"lift": true_lift, "seconds": round(time.perf_counter() - t0, 1)}
            result["coverage"] = coverage_part(tmp, (a, b), true_lift, args, opts)
        if "aa" in parts:
            result["aa"] = aa_part(tmp, a, args, opts)
        if "srm" in parts:
            t0 = time.perf_counter()
            result["srm"] = srm_runs(args.reps, args.srm_users, 0.03) | {"seconds": round(time.perf_counter() - t0, 1)}
        if "cuped" in parts:
            # two pacing gaps: arms that differ, so a θ that took up the treatment effect would show in the ratio
            PacingPolicy(sc, 4).save(tmp / "pacing-4")
            t0 = time.perf_counter()
            cuped_policies = {"A": load_policy(b, exploration=EXPLORATION, seed=1),
                              "B": load_policy(tmp / "pacing-4", exploration=EXPLORATION, seed=2)}  # fmt: skip
            cuped_truth = true_values(cuped_policies, sc, users=args.truth_users, days=1, seed=999)
            cuped_lift = cuped_truth["B"]["return_per_user_day"] - cuped_truth["A"]["return_per_user_day"]
            result["cuped_truth"] = cuped_truth | {"lift": cuped_lift, "seconds": round(time.perf_counter() - t0, 1)}
            result["cuped"] = cuped_part(tmp, (b, tmp / "pacing-4"), cuped_lift, args, opts)
            result["cuped"]["r2_ceiling"] = r2_ceiling(cuped_policies, args)
    goals = {
        "coverage": lambda r: {"coverage_ge_93pct": r["coverage_95"] >= 0.93},
        "aa": lambda r: {"aa_msprt_fpr_le_5pct": r["fpr_daily_peeking_msprt"] <= 0.05},
        "srm": lambda r: {"srm_broken_flagged_ge_95pct": r["flagged_broken"] >= 0.95,
                          "srm_correct_flagged_le_1pct": r["flagged_correct"] <= 0.01},
        "cuped": lambda r: {"cuped_return_width_ratio_le_0.8": r["width_ratio_median"]["return_per_user_day"] <= 0.8,
                            "cuped_coverage_ge_93pct": r["coverage_95"]["cuped"] >= 0.93},
    }  # fmt: skip
    result["goals"] = {k: v for part, check in goals.items() if part in result for k, v in check(result[part]).items()}
    result["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
