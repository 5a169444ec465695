"""Throughput of ``adrl simulate``: logged impressions per second on the default scenario (prints JSON).

Runs the command's library path (``adrl.simulate.simulate``) end to end, parquet writing included, for both
logging policies. Goal: >= 1,000,000 logged impressions/s on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from adrl.scenario import Scenario
from adrl.simulate import simulate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=400_000, help="user-days per run (~10 decisions each)")
    parser.add_argument("--workers", type=int, default=2, help="chunks simulated at once")
    parser.add_argument("--repeats", type=int, default=3, help="runs per policy; the best is reported")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "logs.parquet"
        for policy in ("epsilon-greedy", "random"):
            runs = [
                simulate(
                    Scenario(),
                    n_users=args.users,
                    out=out,
                    logging_policy=policy,
                    seed=i,
                    workers=args.workers,
                    progress=False,
                )
                for i in range(args.repeats)
            ]
            best = max(runs, key=lambda s: s.impressions_per_second)
            results[policy] = {
                "impressions_per_second": round(best.impressions_per_second),
                "all_runs": [round(s.impressions_per_second) for s in runs],
                "impressions": best.n_impressions,
                "decisions": best.n_decisions,
                "seconds": round(best.seconds, 3),
                "file_mb": round(out.stat().st_size / 1e6, 1),
            }
    print(
        json.dumps(
            {
                "benchmark": "simulate",
                "users": args.users,
                "cpus": os.cpu_count(),
                "goal_impressions_per_second": 1_000_000,
                "results": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
