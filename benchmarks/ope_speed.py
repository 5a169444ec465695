"""Speed of the off-policy estimators (prints JSON).

- DR on 1,000,000 logged decisions with a deterministic target, excluding reward-model fitting (goal ≤ 0.2 s):
  ``per_row``: from per-row arrays (reward, propensity, target_prob, q_logged, q_target) with the normal interval
  and ESS / max weight; ``from_policy_output``: also extracting π_e(a_i|x_i) and Σ_a π_e(a|x_i) q̂(x_i, a) from a
  one-hot (n, 144) target matrix and a dense (n, 144) q̂ matrix, the work the reference library's DR does.
- Bootstrap interval of 100,000 rows with 100 resamples (goal ≤ 0.5 s), percentile, vectorised.

- ``--return-users N`` (0: skip): ``adrl ope --stream`` with every default return estimator of one policy
  (``--return-policy``, default pacing) on N logged user-days, given fitted behavior members (``--behavior``, fitted
  beforehand on ``--fit-users`` user-days of the same logger, timed separately), in a child process: its wall time
  and peak resident memory, beside the time ``simulate`` takes to write that log in the same run. The issue's size
  is 1,000,000 user-days (goals: faster than simulate, under 2 GB). With ``--ray-shards K`` (needs ``adrl[ray]``)
  the same log is also split by episode id into K parquet files and evaluated with ``adrl ope --engine ray`` on a
  local Ray (every CPU of the machine, one shard per task): its wall time beside the local engine's on the same
  shards, and the largest difference between the two engines' estimates there (and between the sharded and the
  one-file log, where the model's starts are rolled out in another order).

Best of ``--repeat`` runs. Usage: python benchmarks/ope_speed.py [--repeat 5] [--return-users 1000000 --only-return]
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


def shard_by_episode(src: Any, shards: Any, k: int) -> None:
    """Split a log into ``k`` parquet files by ``episode_id % k``, row group by row group (rows keep their order)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    shards.mkdir()
    f = pq.ParquetFile(src)
    writers = [pq.ParquetWriter(shards / f"part-{j:03d}.parquet", f.schema_arrow) for j in range(k)]
    try:
        for g in range(f.num_row_groups):
            table = f.read_row_group(g)
            part = pc.remainder(table["episode_id"], k)
            for j, w in enumerate(writers):
                w.write_table(table.filter(pc.equal(part, j)))
    finally:
        for w in writers:
            w.close()


_MEASURE = (
    "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
)


def run_measured(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, peak resident GB) of ``cmd``, run under a fresh wrapper process so that the peak is its own
    (``RUSAGE_CHILDREN`` of this process also holds children reaped before, e.g. by the fitting)."""
    import subprocess
    import sys

    t = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _MEASURE, *cmd], check=True, capture_output=True, text=True)
    return time.perf_counter() - t, int(done.stdout.split()[-1]) / 2**20


def return_estimators(
    n_users: int,
    policy_name: str,
    members: int,
    epochs: int,
    fit_users: int,
    sample_episodes: int,
    max_starts: int,
    ray_shards: int = 0,
) -> dict[str, Any]:
    """``adrl ope`` (streamed, every default return estimator) of one policy on ``n_users`` logged user-days, in a
    child process so that its wall time and peak resident memory are its own, beside ``simulate``'s time to write
    that log in the same run. The behavior members are fitted beforehand on the first ``fit_users`` user-days of
    the same logger (timed separately)."""
    import sys
    import tempfile
    from pathlib import Path

    from adrl.agents.baselines import GreedyPolicy, PacingPolicy, RandomPolicy
    from adrl.ope.members import fit_bootstrap_members
    from adrl.scenario import Scenario
    from adrl.simulate import simulate

    sc = Scenario()
    policy: Any = {"pacing": PacingPolicy(sc, 3), "greedy": GreedyPolicy(sc), "random": RandomPolicy(sc)}[policy_name]
    out: dict[str, Any] = {"users": n_users, "policy": policy_name, "members": members, "fit_epochs": epochs,
                           "fit_users": fit_users, "sample_episodes": sample_episodes,
                           "max_starts": max_starts}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        logs, fit_logs = Path(tmp) / "logs.parquet", Path(tmp) / "fit.parquet"
        t = time.perf_counter()
        summary = simulate(sc, n_users=n_users, out=logs, seed=0, progress=False)
        out["simulate_s"] = round(time.perf_counter() - t, 2)
        out["decisions"] = summary.n_decisions
        simulate(sc, n_users=fit_users, out=fit_logs, seed=1, progress=False)
        t = time.perf_counter()
        fit_bootstrap_members(fit_logs, sc, Path(tmp) / "members", n_members=members, seed=0, epochs=epochs)
        out["fit_s"] = round(time.perf_counter() - t, 2)
        policy.save(Path(tmp) / "policy")
        cmd = [sys.executable, "-m", "adrl.cli", "ope", "--logs", str(logs), "--policy", str(Path(tmp) / "policy"),
               "--behavior", str(Path(tmp) / "members"), "--stream", "--sample-episodes", str(sample_episodes),
               "--max-starts", str(max_starts),
               "--n-boot", "200", "--out", str(Path(tmp) / "ope.json")]  # fmt: skip
        seconds, peak = run_measured(cmd)
        out["ope_s"], out["ope_peak_rss_gb"] = round(seconds, 2), round(peak, 3)
        result = json.loads((Path(tmp) / "ope.json").read_text())
        if ray_shards > 0:
            shards = Path(tmp) / "shards"
            t = time.perf_counter()
            shard_by_episode(logs, shards, ray_shards)
            out["ray_shard_s"] = round(time.perf_counter() - t, 2)
            on_shards = [c if c != str(logs) else str(shards) for c in cmd]
            on_shards[on_shards.index(str(Path(tmp) / "ope.json"))] = str(Path(tmp) / "ope_shards.json")
            ray_cmd = [*on_shards, "--engine", "ray"]
            ray_cmd[ray_cmd.index(str(Path(tmp) / "ope_shards.json"))] = str(Path(tmp) / "ope_ray.json")
            out["local_on_shards_s"] = round(run_measured(on_shards)[0], 2)
            out["ray_ope_s"] = round(run_measured(ray_cmd)[0], 2)
            out["ray_shards"] = ray_shards
            local = json.loads((Path(tmp) / "ope_shards.json").read_text())["estimates"]
            remote = json.loads((Path(tmp) / "ope_ray.json").read_text())["estimates"]
            # the same sharded log: the engines must agree; the one-file log orders the model's starts otherwise
            out["ray_max_abs_diff"] = max(abs(remote[k]["value"] - v["value"]) for k, v in local.items())
            out["shards_vs_one_file_max_abs_diff"] = max(
                abs(local[k]["value"] - v["value"]) for k, v in result["estimates"].items()
            )
            out["ray_over_local"] = round(out["ray_ope_s"] / out["local_on_shards_s"], 3)
    out["estimates"] = {k: round(v["value"], 5) for k, v in result["estimates"].items()}
    out["streamed"] = result.get("streamed")
    out["ope_over_simulate"] = round(out["ope_s"] / out["simulate_s"], 3)
    out["goals"] = {
        "ope_faster_than_simulate": out["ope_s"] < out["simulate_s"],
        "ope_under_2gb": out["ope_peak_rss_gb"] < 2,
    }
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
    ap.add_argument("--fit-users", type=int, default=100_000, help="user-days the behavior members are fitted on")
    ap.add_argument("--sample-episodes", type=int, default=20_000, help="episodes the row-level estimators see")
    ap.add_argument("--max-starts", type=int, default=100_000, help="starts the model-based estimate rolls out from")
    ap.add_argument("--only-return", action="store_true", help="skip the per-decision timings")
    ap.add_argument("--ray-shards", type=int, default=0, help="also time adrl ope --engine ray on K shards (0: skip)")
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

    if args.only_return and args.return_users:
        print(json.dumps({"cpu_count": os.cpu_count(), "return_estimators": return_estimators(
            args.return_users, args.return_policy, args.members, args.fit_epochs, args.fit_users,
            args.sample_episodes, args.max_starts, args.ray_shards)}, indent=2))  # fmt: skip
        return
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
            args.return_users,
            args.return_policy,
            args.members,
            args.fit_epochs,
            args.fit_users,
            args.sample_episodes,
            args.max_starts,
            args.ray_shards,
        )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
