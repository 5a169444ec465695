"""Batched inference speed of the behavior model (the learned simulator's hot path); prints JSON.

Goal: >= 2,000,000 predictions/s at batch 4096 on 2 cores. Speed does not depend on the weights, so by default an
untrained model of the default architecture is timed; ``--model DIR`` times a fitted artifact instead.
Besides wall-clock throughput it reports predictions per CPU-second (robust to other load on a shared machine).

    .venv/bin/python benchmarks/behavior_inference.py [--model runs/behavior] [--batch 4096] [--seconds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from threadpoolctl import ThreadpoolController

from adrl.behavior import BehaviorModel, BehaviorNet, FitConfig, LearnedResponse
from adrl.behavior.inputs import AdrlEncoder
from adrl.features import FeatureLayout
from adrl.scenario import Scenario
from adrl.world import World


def untrained_model(scenario: Scenario, cfg: FitConfig) -> BehaviorModel:
    layout = FeatureLayout.from_scenario(scenario)
    category_of = np.array([scenario.categories.index(c.category) for c in scenario.creatives])
    spec = AdrlEncoder(layout, category_of).spec
    net = BehaviorNet(spec, embedding_dim=cfg.embedding_dim, fm_dim=cfg.fm_dim, hidden=cfg.hidden, wide=cfg.wide)
    return BehaviorModel(
        net,
        data_format="adrl",
        heads=(True, True, True),
        layout=layout,
        category_of=category_of,
        scenario=scenario.model_dump(mode="json"),
        scenario_hash=scenario.content_hash,
    )


def rate(fn: Callable[[], object], n: int, seconds: float) -> dict[str, float]:
    fn()
    calls = 0
    wall0, cpu0 = time.perf_counter(), time.process_time()
    while time.perf_counter() - wall0 < seconds:
        fn()
        calls += 1
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return {"per_second": calls * n / wall, "per_cpu_second": calls * n / cpu, "ms_per_batch": 1e3 * wall / calls}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="fitted artifact directory (default: untrained default model)")
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    scenario = Scenario()
    model = BehaviorModel.load(args.model) if args.model else untrained_model(scenario, FitConfig())
    world = World(scenario)
    rng = np.random.default_rng(args.seed)
    batch = world.sample_users(args.batch, rng)
    for _ in range(4):  # some history, so counts and recency are not all zero
        act = np.stack([rng.integers(0, k, args.batch) for k in scenario.action_nvec], axis=1)
        act[:, 0] = 0
        world.step(batch, act, rng)
    batch.epoch[:] = np.minimum(batch.epoch, scenario.horizon - 1)
    action = np.stack([rng.integers(0, k, args.batch) for k in scenario.action_nvec], axis=1)
    layout = FeatureLayout.from_scenario(scenario)
    obs = layout.encode(batch)
    response = LearnedResponse(model, scenario)
    controller = ThreadpoolController()
    results: dict[str, Any] = {
        "batch": args.batch,
        "architecture": model.net.architecture(),
        "cpu_count": os.cpu_count(),
        "load_average_1m": os.getloadavg()[0],
    }
    for threads in (1, 2):  # the predictor caps BLAS threads per call (default 1); time both settings
        model.fast.blas_threads = threads
        with controller.limit(limits=threads, user_api="blas"):
            results[f"predict_blas{threads}"] = rate(lambda: model.predict(obs, action), args.batch, args.seconds)
            results[f"response_from_obs_blas{threads}"] = rate(
                lambda: response.probabilities_from_obs(obs, action), args.batch, args.seconds
            )
            results[f"response_with_encode_blas{threads}"] = rate(
                lambda: response.probabilities(batch, action), args.batch, args.seconds
            )
    best = max(v["per_second"] for k, v in results.items() if k.startswith("predict_"))
    best_cpu = max(v["per_cpu_second"] for k, v in results.items() if k.startswith("predict_"))
    results["predictions_per_second"] = best
    results["predictions_per_cpu_second"] = best_cpu
    results["goal_predictions_per_second"] = 2_000_000
    results["meets_goal"] = bool(best >= 2_000_000)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
