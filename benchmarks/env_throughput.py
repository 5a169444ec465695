"""Environment throughput (prints JSON): single-env steps/s and native vector-env user-steps/s, both backends.

Measures ``gym.make("adrl/AdPlacement-v0")`` (with Gymnasium's default wrappers, and unwrapped), the native vector
env at batch 1, 256 and 4096 for the ground truth and for a learned behavior model, and ``CartPole-v1`` in the same
run as a reference. Every figure is the best of ``--repeats`` timed runs (other work on the machine only slows a
run down). Actions are uniform random and drawn before timing.

The population env ``adrl/AdPlacement-Viral-v0`` runs on a ``--viral-users`` graph (default 100,000 users; the
default social section: block model by segment, 10 friends on average), shares and cascades included.

Goals on 2 cores: vector >= 2,000,000 user-steps/s (ground truth) and >= 1,000,000 (learned) at batch 4096;
single env >= 20,000 steps/s; viral env >= 500,000 user-steps/s on the 100,000-user graph.

BLAS threads are limited to ``--blas-threads`` (default 1) for the whole run: the learned model's small matmuls
gain nothing from more threads, and OpenBLAS worker threads spinning on a busy 2-core machine slow them ~15x.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from threadpoolctl import threadpool_limits

import adrl  # noqa: F401  (registers the ids)
from adrl.envs.registration import GROUND_TRUTH_ID, LEARNED_ID, VIRAL_ID
from adrl.scenario import Scenario, Social

Rate = tuple[float, float]  # per wall-clock second, per CPU second of this process


def interleaved(runs: dict[str, Callable[[], Rate]], repeats: int) -> dict[str, list[Rate]]:
    """Rates of every run, repeated round-robin so that background load hits all of them alike."""
    rates: dict[str, list[Rate]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            rates[name].append(run())
    return rates


def report(rates: list[Rate], unit: str) -> dict[str, Any]:
    """Best wall-clock rate (the figure), all runs, and the best rate per CPU second (robust to a busy machine)."""
    return {
        f"{unit}_per_second": round(max(r[0] for r in rates)),
        "all_runs": [round(r[0]) for r in rates],
        f"{unit}_per_cpu_second": round(max(r[1] for r in rates)),
    }


def single_env_rate(env: gym.Env[Any, Any], actions: np.ndarray) -> Rate:
    env.reset(seed=0)
    start, cpu = time.perf_counter(), time.process_time()
    for a in actions:
        _, _, terminated, truncated, _ = env.step(a)
        if terminated or truncated:
            env.reset()
    return len(actions) / (time.perf_counter() - start), len(actions) / (time.process_time() - cpu)


def vector_env_rate(env_id: str, num_envs: int, seconds: float, **kwargs: Any) -> Rate:
    envs = gym.make_vec(env_id, num_envs=num_envs, **kwargs)
    envs.reset(seed=0)
    n_steps = max(20, int(seconds * 3_000_000 / max(num_envs, 64) / 8))
    actions = np.random.default_rng(0).integers(0, [4, 3, 12], size=(min(n_steps, 64), num_envs, 3))
    envs.step(actions[0])  # warm-up
    start, cpu = time.perf_counter(), time.process_time()
    for i in range(n_steps):
        envs.step(actions[i % len(actions)])
    n = n_steps * num_envs
    return n / (time.perf_counter() - start), n / (time.process_time() - cpu)


def fit_behavior_model(out: Path) -> Path:
    """A behavior model with the default network size, fitted briefly on simulated logs (quality is irrelevant)."""
    from adrl.behavior import FitConfig, fit_adrl
    from adrl.simulate import simulate

    simulate(Scenario(), n_users=5000, out=out / "logs.parquet", seed=0, progress=False)
    report = fit_adrl(out / "logs.parquet", cfg=FitConfig(epochs=1, baselines=False, seed=0), progress=False)
    report.model.save(out / "behavior")
    return out / "behavior"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30_000, help="single-env steps per timed run")
    parser.add_argument("--seconds", type=float, default=1.0, help="rough length of one timed vector run")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per figure; the best is reported")
    parser.add_argument("--behavior", type=Path, default=None, help="a fitted behavior model (default: fit one)")
    parser.add_argument("--blas-threads", type=int, default=1, help="BLAS thread limit for the whole run")
    parser.add_argument("--viral-users", type=int, default=100_000, help="users of the viral env's graph")
    args = parser.parse_args()
    with threadpool_limits(limits=args.blas_threads), tempfile.TemporaryDirectory() as tmp:
        behavior = args.behavior or fit_behavior_model(Path(tmp))
        actions = np.random.default_rng(0).integers(0, [4, 3, 12], size=(args.steps, 3))
        cart_actions = np.random.default_rng(0).integers(0, 2, size=args.steps)
        single_runs: dict[str, Callable[[], Rate]] = {
            "gym_make": functools.partial(single_env_rate, gym.make(GROUND_TRUTH_ID), actions),
            "unwrapped": functools.partial(single_env_rate, gym.make(GROUND_TRUTH_ID).unwrapped, actions),
            "learned_gym_make": functools.partial(
                single_env_rate, gym.make(LEARNED_ID, behavior_model=behavior), actions
            ),
            "cartpole_v1_reference": functools.partial(single_env_rate, gym.make("CartPole-v1"), cart_actions),
        }
        single = {name: report(rates, "steps") for name, rates in interleaved(single_runs, args.repeats).items()}
        vector_runs: dict[str, Callable[[], Rate]] = {}
        for backend, env_id, kwargs in (
            ("ground_truth", GROUND_TRUTH_ID, {}),
            ("learned", LEARNED_ID, {"behavior_model": behavior}),
        ):
            for n in (1, 256, 4096):
                vector_runs[f"{backend}/batch_{n}"] = functools.partial(
                    vector_env_rate, env_id, n, args.seconds, **kwargs
                )
        viral_scenario = Scenario(social=Social())
        vector_runs[f"viral/users_{args.viral_users}"] = functools.partial(
            vector_env_rate, VIRAL_ID, args.viral_users, args.seconds, scenario=viral_scenario
        )
        vector: dict[str, dict[str, Any]] = {"ground_truth": {}, "learned": {}, "viral": {}}
        for key, rates in interleaved(vector_runs, args.repeats).items():
            backend, batch = key.split("/")
            vector[backend][batch] = report(rates, "user_steps")
    result = {
        "benchmark": "env_throughput",
        "cpus": os.cpu_count(),
        "blas_threads": args.blas_threads,
        "autoreset_mode": "NextStep",
        "goals": {
            "single_env_steps_per_second": 20_000,
            "vector_ground_truth_batch_4096": 2_000_000,
            "vector_learned_batch_4096": 1_000_000,
            "viral_users_100000": 500_000,
        },
        "single_env": single,
        "vector_env": vector,
        "met": {
            "single_env": single["gym_make"]["steps_per_second"] >= 20_000,
            "vector_ground_truth": vector["ground_truth"]["batch_4096"]["user_steps_per_second"] >= 2_000_000,
            "vector_learned": vector["learned"]["batch_4096"]["user_steps_per_second"] >= 1_000_000,
            "viral": vector["viral"][f"users_{args.viral_users}"]["user_steps_per_second"] >= 500_000,
        },
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
