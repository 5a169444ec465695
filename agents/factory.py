"""Agent presets (``configs/agents/<name>.yaml``) and the one place that builds an agent from a name.

A preset names the agent, its training budget and its hyper-parameters::

    agent: q_learning
    steps: 100000000        # user-decisions of training
    n_envs: 4096            # users stepped together
    checkpoint_every: 20000000
    params: {gamma: 0.98}   # the agent's config fields; unknown ones are errors

CLI flags override the budget and ``--set key=value`` overrides single params.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from adrl.errors import ConfigError
from adrl.scenario import Scenario, format_validation_error

AGENT_NAMES = ("q_learning", "reinforce", "ppo", "ppo_native", "a2c", "dqn", "linucb", "greedy", "pacing", "random")
BASELINES = ("greedy", "pacing", "random")
PRESET_DIR = Path(__file__).resolve().parents[1] / "configs" / "agents"


class TrainPreset(BaseModel):
    """A validated agent preset."""

    model_config = ConfigDict(extra="forbid")
    agent: str
    steps: int = Field(1_000_000, ge=1, description="user-decisions of training")
    n_envs: int = Field(1024, ge=1, le=1_000_000, description="users stepped together")
    checkpoint_every: int = Field(1_000_000, ge=1, description="steps between checkpoints")
    params: dict[str, Any] = Field(default_factory=dict)


def preset_path(name: str) -> Path:
    return PRESET_DIR / f"{name}.yaml"


def load_preset(agent: str, path: Path | None = None) -> TrainPreset:
    """Read the preset of ``agent`` (or the file ``path``) and validate it."""
    if agent not in AGENT_NAMES:
        raise ConfigError(f"unknown agent {agent!r}; expected one of {list(AGENT_NAMES)}")
    path = path or preset_path(agent)
    if not path.is_file():
        raise ConfigError(f"agent preset {path} does not exist; pass --preset FILE")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping, got {type(data).__name__}")
    try:
        preset = TrainPreset.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, str(path))) from None
    if preset.agent != agent:
        raise ConfigError(f"{path}: preset is for agent {preset.agent!r}, not {agent!r}")
    return preset


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["lr=0.001", "hidden=64"]`` -> ``{"lr": 0.001, "hidden": 64}`` (values parsed as YAML scalars)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value, got {pair!r}")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {pair!r}: cannot parse the value ({e})") from None
    return out


def _config(cls: type, params: dict[str, Any], agent: str) -> Any:
    import dataclasses

    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(params) - known)
    if unknown:
        raise ConfigError(f"{agent}: unknown parameter(s) {unknown}; expected some of {sorted(known)}")
    try:
        return cls(**params)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{agent}: {e}") from None


def make_agent(
    name: str,
    scenario: Scenario,
    params: dict[str, Any],
    *,
    seed: int | None,
    value_model: Any = None,
    response: Any = None,
) -> Any:
    """Build agent ``name`` with ``params``.

    Baselines rank actions with ``value_model`` (the ground truth if None); pacing's ``min_gap``, when not given,
    is searched on the simulator the agent is for (``response``: None for the ground truth).
    """
    if name == "q_learning":
        from adrl.agents.q_learning import QLearningConfig, TabularQAgent

        return TabularQAgent(scenario, _config(QLearningConfig, params, name), seed=seed)
    if name == "reinforce":
        from adrl.agents.reinforce import ReinforceAgent, ReinforceConfig

        return ReinforceAgent(scenario, _config(ReinforceConfig, params, name), seed=seed)
    if name == "ppo_native":
        from adrl.agents.ppo import PPOAgent, PPOConfig

        return PPOAgent(scenario, _config(PPOConfig, params, name), seed=seed)
    if name in ("ppo", "a2c", "dqn"):
        from adrl.agents.sb3 import SB3Agent, SB3Config

        log_every = int(params.get("log_every", 100_000))
        hyper = {k: v for k, v in params.items() if k != "log_every"}
        return SB3Agent(scenario, SB3Config(algo=name, hyperparameters=hyper, log_every=log_every), seed=seed)
    if name == "linucb":
        from adrl.agents.bandits import LinUCBAgent, LinUCBConfig

        return LinUCBAgent(scenario, _config(LinUCBConfig, params, name), seed=seed)
    from adrl.agents.baselines import GreedyPolicy, PacingPolicy, RandomPolicy

    if name == "greedy":
        _config_keys(params, set(), name)
        return GreedyPolicy(scenario, value_model)
    if name == "pacing":
        _config_keys(params, {"min_gap"}, name)
        gap = params.get("min_gap")
        if gap is None:
            gap = search_pacing_gap(scenario, value_model, response, seed=seed or 0)
        return PacingPolicy(scenario, int(gap), value_model)
    if name == "random":
        _config_keys(params, set(), name)
        return RandomPolicy(scenario, seed=seed)
    raise ConfigError(f"unknown agent {name!r}; expected one of {list(AGENT_NAMES)}")


def _config_keys(params: dict[str, Any], allowed: set[str], agent: str) -> None:
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise ConfigError(f"{agent}: unknown parameter(s) {unknown}; expected some of {sorted(allowed)}")


def search_pacing_gap(
    scenario: Scenario,
    value_model: Any,
    response: Any,
    *,
    seed: int = 0,
    gaps: tuple[int, ...] = (1, 2, 3, 4, 5, 6),
    n_episodes: int = 4000,
) -> int:
    """The ``min_gap`` with the best mean return of pacing in the simulator ``response`` (None: ground truth).

    Searching on the simulator the policy is built for keeps the ground truth out of a learned-simulator run.
    """
    from adrl.agents.baselines import PacingPolicy
    from adrl.evaluation import evaluate_policy

    best, best_value = gaps[0], float("-inf")
    for gap in gaps:
        policy = PacingPolicy(scenario, gap, value_model)
        value = evaluate_policy(
            policy, scenario, n_episodes=n_episodes, seed=seed, response=response
        ).overall.mean_return
        if value > best_value + 1e-12:
            best, best_value = gap, value
    return best
