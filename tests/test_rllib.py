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


def test_the_day_end_reaches_rllib_as_terminated_not_truncated() -> None:
    """RLlib bootstraps a truncated step from V(final obs); the day's last hour has nothing after it."""
    pytest.importorskip("ray.rllib", reason="RLlib runs need the optional extra: pip install 'adrl[ray]'")
    from adrl.rllib.train import make_env

    sc = Scenario()
    wrapped = make_env({"env_id": "adrl/AdPlacement-v0", "scenario": sc.model_dump(mode="json"), "num_envs": 16})
    plain = AdPlacementVectorEnv(16, sc)
    wrapped.reset(seed=4)
    plain.reset(seed=4)
    rng = np.random.default_rng(0)
    ended = 0
    for _ in range(3 * sc.horizon):
        action = rng.integers(0, np.asarray(sc.action_nvec), size=(16, 3))
        obs_w, r_w, term_w, trunc_w, _ = wrapped.step(action)
        obs_p, r_p, term_p, trunc_p, _ = plain.step(action)
        np.testing.assert_array_equal(obs_w, obs_p)
        np.testing.assert_array_equal(r_w, r_p)
        np.testing.assert_array_equal(term_w, term_p | trunc_p)
        assert not trunc_w.any()
        ended += int(trunc_p.sum())
    assert ended > 0, "no day ran to its end: the check saw no truncation"


def test_the_learner_uses_adrls_adam_and_normalises_advantages_per_minibatch() -> None:
    pytest.importorskip("ray.rllib", reason="RLlib runs need the optional extra: pip install 'adrl[ray]'")
    import torch
    from ray.rllib.core.columns import Columns
    from ray.rllib.evaluation.postprocessing import Postprocessing

    from adrl.agents.ppo import PPOConfig
    from adrl.rllib.module import AdrlPPOLearner
    from adrl.rllib.train import algorithm_config, input_stats, make_env
    from adrl.training import resolve_env

    spec = resolve_env("adrl/AdPlacement-v0", None, None)
    cfg = algorithm_config(spec, PPOConfig(hidden=8), total_steps=1000, n_envs=4, num_env_runners=1,
                           norm=input_stats(spec, seed=0, n_users=32), seed=0)  # fmt: skip
    env = make_env({"env_id": spec.env_id, "scenario": spec.scenario.model_dump(mode="json")})
    learner = cfg.build_learner(env=env)
    assert isinstance(learner, AdrlPPOLearner)
    assert learner.get_optimizer().param_groups[0]["eps"] == 1e-5
    module = learner.module["default_policy"]
    n = 64
    obs, _ = AdPlacementVectorEnv(n, spec.scenario).reset(seed=2)
    rng = np.random.default_rng(1)
    batch = {Columns.OBS: torch.from_numpy(obs)}
    with torch.no_grad():
        logits = module.forward_train(batch)[Columns.ACTION_DIST_INPUTS]
    dist = module.get_train_action_dist_cls().from_logits(logits)
    actions = dist.sample()
    batch |= {
        Columns.ACTIONS: actions,
        Columns.ACTION_LOGP: dist.logp(actions).detach(),
        Columns.ACTION_DIST_INPUTS: logits,
        Postprocessing.VALUE_TARGETS: torch.zeros(n),
        Columns.LOSS_MASK: torch.from_numpy(np.arange(n) < n - 8),
    }
    adv = torch.from_numpy(rng.normal(size=n).astype(np.float32))

    def loss(advantages: torch.Tensor) -> float:
        b = {**batch, Postprocessing.ADVANTAGES: advantages}
        with torch.no_grad():
            fwd = module.forward_train(b)
            out = learner.compute_loss_for_module(module_id="default_policy", config=cfg, batch=b, fwd_out=fwd)
        return float(out)

    base = loss(adv)
    # an affine map of the minibatch's advantages, and anything in its masked rows, leave the loss unchanged
    assert loss(7.0 * adv - 3.0) == pytest.approx(base, abs=1e-5)
    masked = adv.clone()
    masked[n - 8 :] = 1e6
    assert loss(masked) == pytest.approx(base, abs=1e-5)
