"""``adrl train --engine rllib --agent ppo``: RLlib PPO (new API stack) on adrl's envs, in an adrl run directory.

The run directory is the one of :mod:`adrl.training` (``config.yaml``, ``metrics.csv``, ``tb/``, ``checkpoints/``,
``learning_curve.png``, ``policy/``). Each ``checkpoints/step-N/`` is both an adrl policy artifact (its
``manifest.json`` and ``weights.safetensors``, written last) and, under ``rllib/``, RLlib's own checkpoint
(``Algorithm.save_to_path``: learner, optimizer, env-runner and connector states), which ``--resume`` restores
into an algorithm built from the same run config.

Hyper-parameters are those of adrl's PPO (the ``ppo_native`` preset and its ``--set`` keys: ``hidden``, ``lr``,
``rollout_steps``, ``update_epochs``, ``n_minibatches``, ``gamma``, ``gae_lambda``, ``clip_coef``, ``value_coef``,
``entropy_coef``, ``grad_clip``, ``anneal_lr``), mapped onto RLlib's: one update takes ``rollout_steps`` steps of
each of the ``n_envs`` users (split over the env runners), ``update_epochs`` passes of ``n_minibatches``
minibatches; the learning rate falls linearly to 5% of ``lr`` at 95% of the budget, as adrl's does. The learner
(:class:`~adrl.rllib.module.AdrlPPOLearner`) has adrl's Adam (eps 1e-5) and normalises advantages per minibatch,
and the env reports the day's end as terminated (adrl's PPO gives it value 0; RLlib would bootstrap a truncated
step from a value its net never learns). What still differs from adrl's PPO: the input statistics are fixed for
the run (taken from ``NORM_USERS`` users' days under uniformly random actions before training), not updated from
each rollout: the env runners and the learner then see the same inputs, and the export is exact.

Inside each env runner the env is adrl's batched :class:`~adrl.envs.vector.AdPlacementVectorEnv` (``vectorize=
"vector_entry_point"``, the default) or RLlib's Gymnasium vectorisation of single envs (``"sync"``);
``benchmarks/rllib.py`` measures both. The env is registered with ``ray.tune.registry.register_env`` by a creator
that lives in this module, so every worker imports adrl (the workers need ``adrl[ray]`` installed).

Determinism: ``seed`` goes to ``config.debugging(seed=...)`` (RLlib seeds each env runner's env and torch from
it and the runner's index, and the learner's torch) and to the input statistics; on a local Ray the same seed and
the same number of env runners give the same weights (tests/test_rllib.py checks it with one runner). Another
``--num-env-runners`` (or ``--n-envs``) draws other users; on a cluster, float summation on other hardware and
thread counts may differ, and a resumed run is not the uninterrupted one (a rebuilt env runner resets its envs
with the seed again, so the users after ``--resume`` repeat the stream from its start).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from adrl.agents.base import NeuralFeatures
from adrl.agents.factory import load_preset
from adrl.agents.ppo import PPOAgent, PPOConfig, RunningNorm
from adrl.agents.registry import agent_params
from adrl.behavior.training import torch_threads
from adrl.envs.registration import GROUND_TRUTH_ID, LEARNED_ID
from adrl.errors import ConfigError
from adrl.features import FeatureLayout
from adrl.rllib import require_ray
from adrl.scenario import scenario_from_dict
from adrl.training import EnvSpec, RunDir, StopRequested, Throughput, resolve_budget, resolve_env

ENV_NAME = "adrl-rllib-env"
PRESET = "ppo_native"  # adrl's own PPO: the same hyper-parameters and network
AGENTS = ("ppo",)
VECTORIZE = ("vector_entry_point", "sync")
MAX_RUNNERS = 4096
NORM_USERS = 2048  # users' days that fix the input statistics
_ADDRESS = re.compile(
    r"(?:ray://)?(?P<host>[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\]):(?P<port>\d{1,5})"
)


def check_address(address: str | None) -> None:
    """``None``, ``auto``, ``ray://HOST:PORT`` (Ray Client) or ``HOST:PORT`` (the GCS); anything else is refused."""
    if address is None or address == "auto":
        return
    m = _ADDRESS.fullmatch(address)
    if m is None or not 1 <= int(m["port"]) <= 65535:
        raise ConfigError(
            f"--address {address!r} is not a Ray cluster address; expected ray://HOST:PORT (Ray Client, port 10001 "
            "by default), HOST:PORT (the head's GCS, from a node of the cluster) or auto"
        )


def check_options(agent_name: str, num_env_runners: int, address: str | None, vectorize: str = VECTORIZE[0]) -> None:
    """The checks of the RLlib engine's own options, before anything is read or started."""
    if agent_name not in AGENTS:
        raise ConfigError(f"--engine rllib trains {' or '.join(AGENTS)}, not {agent_name!r}")
    if isinstance(num_env_runners, bool) or not isinstance(num_env_runners, int) or num_env_runners < 1:
        raise ConfigError(f"--num-env-runners must be an integer >= 1, got {num_env_runners!r}")
    if num_env_runners > MAX_RUNNERS:
        raise ConfigError(f"--num-env-runners must be at most {MAX_RUNNERS}, got {num_env_runners}")
    if vectorize not in VECTORIZE:
        raise ConfigError(f"vectorize must be one of {VECTORIZE}, got {vectorize!r}")
    check_address(address)


# ---- the env inside each env runner ----------------------------------------------------------------------------
def make_env(ctx: Any) -> Any:
    """RLlib's env creator: a single env, or with ``num_envs`` in ``ctx`` adrl's batched env; infos dropped.

    Runs on the env runners (importing this module imports adrl, which registers the Gymnasium ids)."""
    cfg = dict(ctx)
    torch.set_num_threads(1)  # one env runner per CPU: its torch must not take the others
    scenario = scenario_from_dict(cfg["scenario"], source="rllib env_config scenario")
    kwargs: dict[str, Any] = {"scenario": scenario}
    if cfg.get("behavior"):
        kwargs["behavior_model"] = cfg["behavior"]
    if "num_envs" in cfg:
        vec = gym.make_vec(cfg["env_id"], num_envs=int(cfg["num_envs"]), vectorization_mode="vector_entry_point",
                           **kwargs)  # fmt: skip
        return _NoInfoVector(vec)
    return _NoInfo(gym.make(cfg["env_id"], **kwargs))


class _NoInfo(gym.Wrapper):  # type: ignore[type-arg, unused-ignore]
    """RLlib reads no info: dropping it saves converting adrl's info arrays to per-env dicts every step.

    The day's end is reported as terminated, not truncated: the hour is in the observation, so nothing follows
    the last hour (adrl's PPO gives it value 0). RLlib would bootstrap a truncated step from the value of the
    final observation, which its value net is never trained on."""

    def reset(self, **kwargs: Any) -> Any:
        obs, _ = self.env.reset(**kwargs)
        return obs, {}

    def step(self, action: Any) -> Any:
        obs, r, term, trunc, _ = self.env.step(action)
        return obs, r, bool(term or trunc), False, {}


class _NoInfoVector(gym.vector.VectorWrapper):
    """The same for adrl's batched env."""

    def reset(self, **kwargs: Any) -> Any:
        obs, _ = self.env.reset(**kwargs)
        return obs, {}

    def step(self, actions: Any) -> Any:
        obs, r, term, trunc, _ = self.env.step(actions)
        return obs, r, term | trunc, np.zeros_like(trunc), {}


def input_stats(spec: EnvSpec, seed: int, n_users: int = NORM_USERS) -> RunningNorm:
    """The fixed input statistics: ``n_users`` users' days under uniformly random actions (seeded)."""
    from adrl.envs.vector import AdPlacementVectorEnv

    features = NeuralFeatures(FeatureLayout.from_scenario(spec.scenario))
    norm = RunningNorm(features.dim)
    env = AdPlacementVectorEnv(n_users, spec.scenario, spec.response)
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    pending = np.zeros(n_users, dtype=bool)
    nvec = np.asarray(spec.scenario.action_nvec)
    for _ in range(spec.scenario.horizon):
        keep = ~pending
        if keep.any():
            norm.update(features(obs[keep]))
        obs, _, terminated, truncated, _ = env.step(rng.integers(0, nvec, size=(n_users, 3)))
        pending = np.asarray(terminated | truncated, dtype=bool)
    env.close()
    return norm


# ---- the algorithm ---------------------------------------------------------------------------------------------
def algorithm_config(
    spec: EnvSpec,
    ppo: PPOConfig,
    *,
    total_steps: int,
    n_envs: int,
    num_env_runners: int,
    norm: RunningNorm,
    seed: int,
    vectorize: str = VECTORIZE[0],
) -> Any:
    """RLlib's ``PPOConfig`` for adrl's hyper-parameters (see the module docstring for the mapping)."""
    from ray.rllib.algorithms.ppo import PPOConfig as RllibPPOConfig
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec

    from adrl.rllib.module import AdrlPPOLearner, AdrlPPOModule

    per_runner = math.ceil(n_envs / num_env_runners)
    batch = ppo.rollout_steps * per_runner * num_env_runners
    lr: Any = ppo.lr
    if ppo.anneal_lr:  # adrl: lr · max(1 − t/T, 0.05), i.e. linear to 5% at 0.95 T, then flat
        lr = [[0, ppo.lr], [max(1, int(0.95 * total_steps)), 0.05 * ppo.lr]]
    scenario_json = spec.scenario.model_dump(mode="json")
    model_config = {
        "scenario": scenario_json,
        "hidden": ppo.hidden,
        "norm_mean": norm.mean.tolist(),
        "norm_var": norm.var.tolist(),
        "norm_count": float(norm.count),
    }
    env_config = {
        "env_id": spec.env_id,
        "scenario": scenario_json,
        "behavior": str(spec.behavior_path.resolve()) if spec.behavior_path else None,  # the workers' cwd differs
    }
    return (
        RllibPPOConfig()
        .environment(ENV_NAME, env_config=env_config)
        .framework("torch")
        .env_runners(
            num_env_runners=num_env_runners,
            num_envs_per_env_runner=per_runner,
            num_cpus_per_env_runner=1,
            rollout_fragment_length="auto",
            gym_env_vectorize_mode=vectorize,
        )
        .learners(num_learners=0)
        .training(
            train_batch_size_per_learner=batch,
            minibatch_size=max(1, batch // ppo.n_minibatches),
            num_epochs=ppo.update_epochs,
            lr=lr,
            gamma=ppo.gamma,
            lambda_=ppo.gae_lambda,
            clip_param=ppo.clip_coef,
            vf_loss_coeff=ppo.value_coef,
            entropy_coeff=ppo.entropy_coef,
            grad_clip=ppo.grad_clip,
            grad_clip_by="global_norm",
            use_kl_loss=False,
            vf_clip_param=float("inf"),
            learner_class=AdrlPPOLearner,
        )
        .rl_module(rl_module_spec=RLModuleSpec(module_class=AdrlPPOModule, model_config=model_config))
        .reporting(metrics_num_episodes_for_smoothing=max(100, n_envs))
        .debugging(seed=seed)
    )


def export_agent(module: Any, spec: EnvSpec, ppo: PPOConfig, *, seed: int, steps_done: int) -> PPOAgent:
    """A ``ppo-native`` agent with the RLModule's policy, value and input statistics (the same network format)."""
    agent = PPOAgent(spec.scenario, ppo, seed=seed)
    with torch.no_grad():
        agent.policy.load_state_dict(module.policy.state_dict())
        agent.value.load_state_dict(module.value.state_dict())
        agent.norm.load_state_dict(module.norm.state_dict())
    agent.steps_done = int(steps_done)
    return agent


class _Checkpoint:
    """What ``RunDir.checkpoint`` saves: RLlib's checkpoint under ``rllib/``, then the adrl artifact (manifest last)."""

    def __init__(self, algo: Any, export: Callable[[], PPOAgent]) -> None:
        self.algo, self.export = algo, export

    def save(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self.algo.save_to_path(str((path / "rllib").resolve()))
        self.export().save(path)


def _init_ray(ray: Any, address: str | None, num_cpus: int | None) -> bool:
    """Start (or connect to) Ray unless it is already up; True if this call started it."""
    if ray.is_initialized():
        return False
    try:
        ray.init(address=address, num_cpus=num_cpus if address is None else None, include_dashboard=False,
                 log_to_driver=False, configure_logging=False)  # fmt: skip
    except Exception as e:  # ConnectionError, TimeoutError, RuntimeError, ValueError: the address is the cause
        if address is None:
            raise
        raise ConfigError(f"--address {address}: cannot connect to the Ray cluster ({type(e).__name__}: {e})") from e
    return True


def _result_value(result: dict[str, Any], *keys: str) -> float:
    value: Any = result
    for k in keys:
        if not isinstance(value, dict) or k not in value:
            return math.nan
        value = value[k]
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _finite(x: float) -> float:
    return x if math.isfinite(x) else 0.0


def train_rllib(
    *,
    agent_name: str,
    env_id: str,
    out: Path,
    steps: int | None = None,
    seed: int = 0,
    behavior: Path | None = None,
    scenario_path: Path | None = None,
    preset_file: Path | None = None,
    n_envs: int | None = None,
    checkpoint_every: int | None = None,
    overrides: dict[str, Any] | None = None,
    resume: bool = False,
    force: bool = False,
    num_env_runners: int = 1,
    address: str | None = None,
    num_cpus: int | None = None,
    vectorize: str = VECTORIZE[0],
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train (or resume) RLlib PPO into the run directory ``out``; returns the summary ``train_run`` returns.

    ``address``: a Ray cluster (None: a local Ray with ``num_cpus``, all cores if None). The exported
    ``out/policy`` is a ``ppo-native`` artifact."""
    check_options(agent_name, num_env_runners, address, vectorize)
    ray = require_ray()
    preset = load_preset(PRESET, preset_file)
    params = {**preset.params, **(overrides or {})}
    ppo = agent_params(PPOConfig, params, f"{agent_name} (rllib)")
    total, n, every = resolve_budget(preset, steps, n_envs, checkpoint_every)
    if n < num_env_runners:
        raise ConfigError(f"--n-envs ({n}) must be at least --num-env-runners ({num_env_runners}): users per runner")
    if env_id not in (GROUND_TRUTH_ID, LEARNED_ID):
        raise ConfigError(f"--engine rllib trains on {GROUND_TRUTH_ID!r} or {LEARNED_ID!r}, not {env_id!r}")
    spec = resolve_env(env_id, scenario_path, behavior)
    if hasattr(spec.response, "last_disagreement"):
        raise ConfigError("--engine rllib does not train on a behavior ensemble (its pessimistic env); fit one model")
    config = {
        "agent": agent_name,
        "engine": "rllib",
        "env": env_id,
        "steps": total,
        "n_envs": n,
        "num_env_runners": num_env_runners,
        "vectorize": vectorize,
        "checkpoint_every": every,
        "seed": seed,
        "behavior": str(behavior) if behavior else None,
        "scenario": spec.scenario.model_dump(mode="json"),
        "params": params,
    }
    run = RunDir.create(out, config, resume=resume, force=force)
    latest = run.latest_checkpoint() if resume else None
    refused = None
    if resume and run.load_config().get("engine") != "rllib":
        refused = f"--resume: {out} was not trained with --engine rllib"
    elif resume and (latest is None or not (latest[0] / "rllib").is_dir()):
        refused = f"--resume: {out} has no RLlib checkpoint to continue from; train into a new --out"
    if refused is not None:  # close the run's metrics file before refusing, as train_run does
        run.close()
        raise ConfigError(refused)
    if latest is not None:
        norm = PPOAgent.load(latest[0]).norm  # the run's fixed statistics, as its checkpoint holds them
        start = latest[1]
    else:
        norm = input_stats(spec, seed)
        start = 0
    started_ray = _init_ray(ray, address, num_cpus)
    from ray.tune.registry import register_env

    register_env(ENV_NAME, make_env)
    algo: Any = None
    summary: dict[str, Any] = {"run": str(run.path), "agent": agent_name, "env": env_id, "engine": "rllib"}
    before = run.open_metrics(resume_step=start if latest else None)
    stop = StopRequested()
    try:
        algo = algorithm_config(spec, ppo, total_steps=total, n_envs=n, num_env_runners=num_env_runners, norm=norm,
                                seed=seed, vectorize=vectorize).build_algo()  # fmt: skip
        if latest is not None:
            algo.restore_from_path(str((latest[0] / "rllib").resolve()))
            if log is not None and progress:
                log(f"resuming {out} from checkpoint at step {start:,}")
        steps_done = [start]

        def export() -> PPOAgent:
            return export_agent(algo.get_module(), spec, ppo, seed=seed, steps_done=steps_done[0])

        checkpoint = _Checkpoint(algo, export)
        throughput = Throughput(start)
        last_ckpt = start
        base_steps: float | None = None
        base_episodes: float | None = None
        with stop.installed(), torch_threads(ppo.threads):  # the learner runs here, beside the env runners
            while steps_done[0] < total and not stop.requested:
                result = algo.train()
                lifetime = _result_value(result, "env_runners", "num_env_steps_sampled_lifetime")
                episodes = _result_value(result, "env_runners", "num_episodes_lifetime")
                if base_steps is None:  # the lifetime counts this process's algorithm started at (restored or not)
                    base_steps = _finite(lifetime - _result_value(result, "env_runners", "num_env_steps_sampled"))
                    base_episodes = _finite(episodes - _result_value(result, "env_runners", "num_episodes"))
                if not math.isfinite(lifetime):
                    raise RuntimeError(f"RLlib reported no env-step count (ray {ray.__version__}); adrl pins 2.60.0")
                steps_done[0] = start + int(lifetime - base_steps)
                rate, wall = throughput.update(steps_done[0])
                learner = result.get("learners", {}).get("default_policy", {})
                stats = {
                    "mean_return": _result_value(result, "env_runners", "episode_return_mean"),
                    "episodes": before["episodes"] + episodes - (base_episodes or 0.0),
                    "loss": _result_value(learner, "total_loss"),
                    "entropy": _result_value(learner, "entropy"),
                    "steps_per_second": rate,
                    "wall_seconds": before["wall_seconds"] + wall,
                }
                run.log(steps_done[0], stats)
                if log is not None and progress:
                    log(f"step {steps_done[0]:,}  return {stats['mean_return']:.4f}  {rate:,.0f} steps/s")
                if steps_done[0] - last_ckpt >= every or stop.requested:
                    run.checkpoint(checkpoint, steps_done[0])
                    last_ckpt = steps_done[0]
        run.checkpoint(checkpoint, steps_done[0])
        summary["steps_done"] = steps_done[0]
        if stop.requested:
            summary["interrupted"] = stop.signal_name
        export().save(run.policy_path)
        summary["policy"] = str(run.policy_path)
        summary["learning_curve"] = str(run.plot_learning_curve(f"{agent_name} (RLlib) on {env_id}"))
    finally:
        run.close()
        if algo is not None:
            algo.stop()
        if started_ray:
            ray.shutdown()
    return summary
