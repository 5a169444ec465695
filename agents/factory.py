"""Agent presets (``agents/presets/<name>.yaml``, shipped in the package) and building an agent from its name.

A preset names the agent, its training budget and its hyper-parameters::

    agent: q_learning
    steps: 100000000        # user-decisions of training
    n_envs: 4096            # users stepped together
    checkpoint_every: 20000000
    params: {gamma: 0.98}   # the agent's config fields; unknown ones are errors

CLI flags override the budget and ``--set key=value`` overrides single params.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from adrl.agents.registry import AGENTS, build_agent
from adrl.errors import ConfigError
from adrl.io import read_yaml_mapping
from adrl.scenario import format_validation_error

AGENT_NAMES = tuple(AGENTS)


class TrainPreset(BaseModel):
    """A validated agent preset."""

    model_config = ConfigDict(extra="forbid")
    agent: str
    steps: int = Field(1_000_000, ge=1, description="user-decisions of training")
    n_envs: int = Field(1024, ge=1, le=1_000_000, description="users stepped together")
    checkpoint_every: int = Field(1_000_000, ge=1, description="steps between checkpoints")
    params: dict[str, Any] = Field(default_factory=dict)


def preset_path(name: str) -> Path:
    """The preset shipped for agent ``name`` (package data, so it is there in an installed wheel too)."""
    return Path(str(resources.files("adrl.agents") / "presets" / f"{name}.yaml"))


def load_preset(agent: str, path: Path | None = None) -> TrainPreset:
    """Read the preset of ``agent`` (or the file ``path``) and validate it."""
    if agent not in AGENT_NAMES:
        raise ConfigError(f"unknown agent {agent!r}; expected one of {list(AGENT_NAMES)}")
    path = path or preset_path(agent)
    if not path.is_file():
        raise ConfigError(f"agent preset {path} does not exist; pass --preset FILE")
    data = read_yaml_mapping(path, what="agent preset")
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


make_agent = build_agent  # the name the training loop and scripts use
