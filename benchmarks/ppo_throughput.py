"""Training throughput of the native batched PPO (``ppo_native``) and of SB3 PPO through the VecEnv adapter (JSON).

Both train on the ground-truth world with their presets' hyper-parameters (configs/agents/ppo_native.yaml and
ppo.yaml) for ``--steps`` user-decisions each, in the same process, one after the other, single-threaded torch;
steps/s is user-decisions over wall time of ``adrl.training``'s loop (env stepping and updates together).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from adrl.training import train_run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=500_000)
    ap.add_argument("--n-envs", type=int, default=None, help="override both presets' n_envs")
    args = ap.parse_args()
    torch.set_num_threads(1)
    out: dict[str, object] = {"benchmark": "ppo_throughput", "steps": args.steps}
    with tempfile.TemporaryDirectory() as tmp:
        for agent in ("ppo_native", "ppo"):
            t = time.perf_counter()
            train_run(agent_name=agent, env_id="adrl/AdPlacement-v0", out=Path(tmp) / agent, steps=args.steps,
                      n_envs=args.n_envs, seed=0, progress=False)  # fmt: skip
            out[f"{agent}_steps_per_second"] = round(args.steps / (time.perf_counter() - t), 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
