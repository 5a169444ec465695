"""Policy artifacts: one directory with ``manifest.json`` (+ ``*.safetensors`` / ``*.npy``), never pickle.

Every manifest holds ``kind``, ``version``, ``nvec``, ``obs_dim``, ``layout_hash``, ``scenario_hash``, the scenario
itself (so a policy can be served without the YAML it was trained on), ``policy_id`` and ``created``. Each policy
class registers its ``kind`` with :func:`register_kind` and implements ``save(path)`` / ``load(path)``;
:func:`load_policy_artifact` dispatches on the manifest's kind.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import importlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from adrl.errors import ArtifactError, ConfigError, FeatureMismatch
from adrl.features import FeatureLayout
from adrl.io import read_manifest, write_json_atomic, write_npy_atomic
from adrl.scenario import Scenario, scenario_from_dict

MANIFEST = "manifest.json"
_LOADERS: dict[str, Callable[[Path], Any]] = {}

# The one table of agents: name -> the module that builds it (its ``build(name, scenario, params, *, seed,
# value_model, score)``) and registers the artifact kinds it saves. A preset ``agents/presets/<name>.yaml`` ships
# beside it. Adding an agent is its own module, one line here and its preset.
AGENTS: dict[str, str] = {
    "q_learning": "adrl.agents.q_learning",
    "reinforce": "adrl.agents.reinforce",
    "ppo_native": "adrl.agents.ppo",
    "ppo": "adrl.agents.sb3",
    "a2c": "adrl.agents.sb3",
    "dqn": "adrl.agents.sb3",
    "linucb": "adrl.agents.bandits",
    "greedy": "adrl.agents.baselines",
    "pacing": "adrl.agents.baselines",
    "random": "adrl.agents.baselines",
    "tuned_pacing": "adrl.agents.rules",
    "frequency_cap": "adrl.agents.rules",
}
Score = Callable[[Any], float]  # mean return per user-day of a candidate policy on the simulator a run is for


def build_agent(
    name: str,
    scenario: Scenario,
    params: dict[str, Any],
    *,
    seed: int | None,
    value_model: Any = None,
    score: Score | None = None,
) -> Any:
    """Build agent ``name`` (a key of :data:`AGENTS`) with ``params``.

    Rules rank actions with ``value_model`` (the ground truth if None) and tune what their preset leaves open by
    ``score`` (e.g. pacing's ``min_gap``), the same way agents are trained: on the run's simulator.
    """
    if name not in AGENTS:
        raise ConfigError(f"unknown agent {name!r}; expected one of {list(AGENTS)}")
    module = importlib.import_module(AGENTS[name])
    return module.build(name, scenario, params, seed=seed, value_model=value_model, score=score)


def agent_params(config_cls: Any, params: dict[str, Any], agent: str) -> Any:
    """``config_cls(**params)`` for a dataclass config; unknown or invalid parameters are a ``ConfigError``."""
    known = {f.name for f in dataclasses.fields(config_cls)}
    check_params(params, known, agent)
    try:
        return typed_config(config_cls, params)
    except ValueError as e:
        raise ConfigError(f"{agent}: {e}") from None


def typed_config(config_cls: Any, values: Any) -> Any:
    """A dataclass config from ``values`` whose every field has its declared type (no "64" for 64, no list for a
    string; a JSON list for a tuple), then the class's own checks; ``ValueError`` says which field is wrong."""
    if not isinstance(values, dict):
        raise ValueError(f"expected a mapping of parameters, got {type(values).__name__}")
    unknown = sorted(set(values) - {f.name for f in dataclasses.fields(config_cls)})
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown}")
    try:
        text = json.dumps(values, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ValueError(f"parameters are not plain numbers, strings and lists ({e})") from None
    try:
        return TypeAdapter(config_cls).validate_json(text, strict=True)
    except ValidationError as e:
        first = e.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "config"
        raise ValueError(f"{where}: {first['msg'].removeprefix('Value error, ')}") from None


class _Manifest(BaseModel):
    """The fields every policy manifest has, with their types and bounds (kinds read their own extra fields)."""

    model_config = ConfigDict(extra="allow", strict=True)
    kind: str = Field(max_length=64)
    version: int = Field(ge=0, le=1_000_000)
    nvec: list[Annotated[int, Field(ge=1, le=1_000_000)]] = Field(min_length=3, max_length=3)
    obs_dim: int = Field(ge=1, le=1_000_000)
    layout_hash: str = Field(max_length=128)
    scenario_hash: str | None = Field(None, max_length=128)
    scenario: dict[str, Any]
    policy_id: str | None = Field(None, max_length=256)
    created: str | None = Field(None, max_length=64)
    steps_done: int = Field(0, ge=0, le=(1 << 63) - 1)
    seed: int | None = Field(None, ge=0, le=(1 << 64) - 1)
    rng_state: dict[str, Any] | None = None
    config: dict[str, Any] | None = None


def _checked_manifest(path: Path, manifest: dict[str, Any]) -> None:
    try:
        _Manifest.model_validate(manifest)
    except ValidationError as e:
        errors = e.errors(include_url=False)
        parts = []
        for err in errors[:3]:
            where = ".".join(str(p) for p in err["loc"])
            parts.append(f"{where}: {err['msg']}" if err["type"] != "missing" else f"missing field {where!r}")
        more = f" (+{len(errors) - 3} more)" if len(errors) > 3 else ""
        listed = "; ".join(parts) + more
        raise ArtifactError(f"{path / MANIFEST}: {listed}; not a valid adrl policy artifact") from None


def check_params(params: dict[str, Any], allowed: set[str], agent: str) -> None:
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise ConfigError(f"{agent}: unknown parameter(s) {unknown}; expected some of {sorted(allowed)}")


def register_kind(kind: str, loader: Callable[[Path], Any]) -> None:
    """Make ``load_policy_artifact`` load manifests of ``kind`` with ``loader(path)``."""
    _LOADERS[kind] = loader


def known_kinds() -> list[str]:
    _import_builtin_kinds()
    return sorted(_LOADERS)


def write_policy_manifest(
    path: Path | str, *, kind: str, version: int, scenario: Scenario, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Write ``path/manifest.json`` (atomically, last, so a complete manifest means a complete artifact)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    layout = FeatureLayout.from_scenario(scenario)
    created = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    manifest: dict[str, Any] = {
        "kind": kind,
        "version": version,
        "nvec": list(scenario.action_nvec),
        "obs_dim": layout.obs_dim,
        "layout_hash": layout.hash,
        "scenario_hash": scenario.content_hash,
        "scenario": scenario.model_dump(mode="json"),
        "created": created,
        **(extra or {}),
    }
    digest = hashlib.sha256(f"{kind}:{created}:{sorted((extra or {}).items())!r}".encode()).hexdigest()[:12]
    manifest.setdefault("policy_id", f"{kind}-{digest}")
    write_json_atomic(path / MANIFEST, manifest)
    return manifest


def read_policy_manifest(
    path: Path | str, *, kind: str | tuple[str, ...] | None = None, version: int | None = None
) -> tuple[dict[str, Any], Scenario]:
    """Read and check a policy manifest; returns it with its scenario (whose layout must match the hash)."""
    path = Path(path)
    manifest = read_manifest(path, kind=kind, version=version, name=MANIFEST)
    _checked_manifest(path, manifest)
    try:
        scenario = scenario_from_dict(manifest["scenario"], source=f"{path / MANIFEST}: scenario")
    except ConfigError as e:
        raise ArtifactError(str(e)) from None
    layout = FeatureLayout.from_scenario(scenario)
    if layout.hash != manifest["layout_hash"]:
        raise FeatureMismatch(
            f"{path}: policy was built for feature layout {manifest['layout_hash']}, its scenario gives "
            f"{layout.hash}; the artifact was written by an incompatible adrl version"
        )
    if list(manifest["nvec"]) != list(scenario.action_nvec):
        raise ArtifactError(
            f"{path / MANIFEST}: nvec {manifest['nvec']} does not match its scenario's action "
            f"sizes {list(scenario.action_nvec)}"
        )
    if manifest["obs_dim"] != layout.obs_dim:
        raise FeatureMismatch(
            f"{path / MANIFEST}: obs_dim {manifest['obs_dim']} does not match its scenario's "
            f"feature layout ({layout.obs_dim} features)"
        )
    return manifest, scenario


def write_learner_manifest(
    path: Path | str, agent: Any, extra: dict[str, Any], *, arrays: dict[str, np.ndarray] | None = None
) -> dict[str, Any]:
    """Save a learning agent: its ``arrays`` as ``.npy`` files (atomic), then the manifest with its config,
    ``extra``, and its progress and random state (for resume). The manifest comes last, so a manifest means a
    complete artifact."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    for name, array in (arrays or {}).items():
        write_npy_atomic(path / name, array)
    rng = getattr(agent, "rng", None)
    return write_policy_manifest(
        path, kind=agent.kind, version=agent.version, scenario=agent.scenario,
        extra={"config": dataclasses.asdict(agent.config), **extra, "steps_done": agent.steps_done, "seed": agent.seed,
               **({"rng_state": rng.bit_generator.state} if rng is not None else {})},
    )  # fmt: skip


def read_learner(cls: Any, config_cls: Any, path: Path | str) -> tuple[Any, dict[str, Any]]:
    """A learning agent of class ``cls`` rebuilt from its manifest (config, seed, progress, random state), with the
    manifest; the caller loads its weights."""
    manifest, scenario = read_policy_manifest(path, kind=cls.kind, version=cls.version)
    agent = cls(scenario, agent_config(config_cls, manifest, path), seed=manifest.get("seed"))
    agent.steps_done = int(manifest.get("steps_done", 0))
    state = manifest.get("rng_state")
    if isinstance(state, dict) and getattr(agent, "rng", None) is not None:
        try:
            agent.rng.bit_generator.state = state
        except (TypeError, ValueError, KeyError, OverflowError) as e:
            raise ArtifactError(f"{Path(path) / MANIFEST}: invalid rng_state ({e})") from None
    return agent, manifest


def agent_config(config_cls: Any, manifest: dict[str, Any], path: Path | str) -> Any:
    """``config_cls(**manifest["config"])``, or an ``ArtifactError`` naming the artifact when it does not validate."""
    try:
        return typed_config(config_cls, manifest.get("config"))
    except ValueError as e:
        raise ArtifactError(f"{Path(path) / MANIFEST}: invalid agent config ({e})") from None


def load_policy_artifact(path: Path | str, *, expect_layout: FeatureLayout | None = None) -> Any:
    """Load any registered policy kind from ``path``; refuse it if ``expect_layout`` differs from its layout."""
    path = Path(path)
    manifest, scenario = read_policy_manifest(path)  # the one check of the common fields, for every caller
    _import_builtin_kinds()
    kind = manifest["kind"]
    if kind not in _LOADERS:
        raise ArtifactError(f"{path / MANIFEST}: unknown policy kind {kind!r}; known kinds are {sorted(_LOADERS)}")
    if expect_layout is not None and manifest["layout_hash"] != expect_layout.hash:
        raise FeatureMismatch(
            f"{path}: policy feature layout {manifest['layout_hash']} does not match the environment's "
            f"{expect_layout.hash}; was it trained on another scenario?"
        )
    policy = _LOADERS[kind](path)
    if tuple(getattr(policy, "nvec", ())) != scenario.action_nvec:
        raise ArtifactError(
            f"{path}: policy action sizes {tuple(getattr(policy, 'nvec', ()))} differ from the scenario's "
            f"{scenario.action_nvec}"
        )
    return policy


def load_action_probabilities(paths: tuple[str, ...], layout: FeatureLayout) -> dict[str, Any]:
    """Each artifact's ``action_probabilities`` by path, refused if its layout differs: what a worker of a sharded
    evaluation builds for itself from paths (a function of plain data, so it travels to other processes)."""
    return {p: load_policy_artifact(Path(p), expect_layout=layout).action_probabilities for p in paths}


def _import_builtin_kinds() -> None:
    """Importing the agent modules registers their kinds."""
    for module in dict.fromkeys(AGENTS.values()):
        importlib.import_module(module)
