"""``adrl train --engine rllib``: bad options fail before any work; a small RLlib PPO run on a local 2-CPU Ray
exports a ``ppo-native`` artifact that loads, decides exactly as the RLModule does and serves; resume continues."""

from __future__ import annotations

import csv
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

import adrl
from adrl.cli import app
from adrl.envs.vector import AdPlacementVectorEnv
from adrl.errors import ConfigError
from adrl.rllib import require_ray
from adrl.scenario import Scenario

SMALL = ["--steps", "3000", "--n-envs", "64", "--seed", "3", "--checkpoint-every", "1000",
         "--set", "hidden=16", "--set", "rollout_steps=8", "--set", "update_epochs=2"]  # fmt: skip


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--engine", "rllib", "--agent", "dqn"], "--engine rllib trains ppo, not 'dqn'"),
        (["--engine", "rllib", "--agent", "ppo", "--num-env-runners", "0"], ">= 1"),
        (["--engine", "rllib", "--agent", "ppo", "--num-env-runners", "-2"], "--num-env-runners must be an integer"),
        (["--engine", "rllib", "--agent", "ppo", "--address", "http://head"], "is not a Ray cluster address"),
        (["--engine", "rllib", "--agent", "ppo", "--address", "ray://head:99999"], "is not a Ray cluster address"),
        (["--engine", "spark", "--agent", "ppo"], "--engine must be one of local, rllib"),
        (["--agent", "ppo", "--num-env-runners", "2"], "--num-env-runners and --address are for --engine rllib"),
        (["--agent", "ppo", "--address", "ray://head:10001"], "--num-env-runners and --address are for --engine rllib"),
    ],
)
def test_bad_rllib_options_fail_before_any_work(tmp_path: Path, args: list[str], message: str) -> None:
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", *args, "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split()), result.output
    assert not out.exists()


def test_without_ray_the_engine_says_how_to_install_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError, as on the default install
    with pytest.raises(ConfigError, match=r"pip install 'adrl\[ray\]'"):
        require_ray()
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", "--engine", "rllib", "--agent", "ppo", "--out", str(out)])
    assert result.exit_code == 2 and "pip install 'adrl[ray]'" in result.output, result.output
    assert not out.exists()


@pytest.fixture(scope="module")
def local_ray() -> Iterator[Any]:
    ray = pytest.importorskip("ray", reason="RLlib runs need the optional extra: pip install 'adrl[ray]'")
    pytest.importorskip("ray.rllib", reason="RLlib runs need the optional extra: pip install 'adrl[ray]'")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def trained(local_ray: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("rllib") / "ppo"
    result = CliRunner().invoke(
        app, ["train", "--engine", "rllib", "--agent", "ppo", "--num-env-runners", "1", *SMALL, "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    return out


def metric_steps(run: Path) -> list[int]:
    with open(run / "metrics.csv", newline="") as f:
        return [int(float(r["step"])) for r in csv.DictReader(f)]


def test_the_exported_policy_loads_decides_and_matches_the_rlmodule(trained: Path) -> None:
    import torch
    from ray.rllib.core.rl_module.rl_module import RLModule

    policy = adrl.load_policy(trained / "policy", seed=0)
    assert policy.kind == "ppo-native" and policy.manifest["steps_done"] >= 3000
    decision = policy.decide(user={"segment": "commuter"}, context={"hour": 8})
    assert 0 < decision.propensity <= 1
    # the artifact computes what RLlib's module computes, on observations of the env it trained on
    ckpt = max((trained / "checkpoints").glob("step-*"))
    module = RLModule.from_checkpoint(ckpt / "rllib" / "learner_group" / "learner" / "rl_module" / "default_policy")
    env = AdPlacementVectorEnv(256, Scenario())
    obs, _ = env.reset(seed=1)
    for _ in range(5):
        obs, *_ = env.step(env.action_space.sample())
    with torch.no_grad():
        logits = module.forward_inference({"obs": torch.from_numpy(obs)})["action_dist_inputs"]
    nvec = list(Scenario().action_nvec)
    theirs = [torch.softmax(lg, -1).numpy() for lg in torch.split(logits, nvec, dim=-1)]
    ours = adrl.load_policy(ckpt).policy.component_probabilities(obs)
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert np.allclose(policy.policy.action_probabilities(obs).sum(axis=1), 1.0)


def test_the_exported_policy_serves(trained: Path, tmp_path: Path) -> None:
    from adrl.serving import PolicyService, ServeConfig, create_app

    service = PolicyService.from_config(ServeConfig(policy=trained / "policy", log_dir=None, seed=0))
    with TestClient(create_app(service)) as client:
        r = client.post("/v1/decisions", json={"user": {"segment": "office"}, "context": {"hour": 12}})
    assert r.status_code == 200, r.text
    assert 0 < r.json()["propensity"] <= 1 and r.json()["policy_id"].startswith("ppo-native")


def test_resume_continues_the_run_and_its_curve(trained: Path, tmp_path: Path) -> None:
    from adrl.rllib.train import train_rllib

    before = metric_steps(trained)
    assert before == sorted(set(before)) and before[-1] >= 3000
    summary = train_rllib(agent_name="ppo", env_id="adrl/AdPlacement-v0", out=trained, steps=4500, n_envs=64,
                          seed=3, checkpoint_every=1000, overrides={"hidden": 16, "update_epochs": 2},
                          resume=True, progress=False)  # fmt: skip
    after = metric_steps(trained)
    assert summary["steps_done"] >= 4500 and after[: len(before)] == before and after == sorted(set(after))
    assert adrl.load_policy(trained / "policy").manifest["steps_done"] == summary["steps_done"]


def test_the_same_seed_trains_the_same_weights(local_ray: Any, tmp_path: Path) -> None:
    from safetensors.numpy import load_file

    from adrl.rllib.train import train_rllib

    for name in ("a", "b"):
        train_rllib(agent_name="ppo", env_id="adrl/AdPlacement-v0", out=tmp_path / name, steps=600, n_envs=32, seed=5,
                    overrides={"hidden": 8, "update_epochs": 1}, progress=False)  # fmt: skip
    a, b = (load_file(str(tmp_path / name / "policy" / "weights.safetensors")) for name in ("a", "b"))
    assert sorted(a) == sorted(b) and any(k.startswith("policy.") for k in a)
    assert all(np.array_equal(a[k], b[k]) for k in a), "the same seed gave other weights"
