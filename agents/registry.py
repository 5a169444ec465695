"""Policy artifacts: one directory with ``manifest.json`` (+ ``*.safetensors`` / ``*.npy``), never pickle.

Every manifest holds ``kind``, ``version``, ``nvec``, ``obs_dim``, ``layout_hash``, ``scenario_hash``, the scenario
itself (so a policy can be served without the YAML it was trained on), ``policy_id`` and ``created``. Each policy
class registers its ``kind`` with :func:`register_kind` and implements ``save(path)`` / ``load(path)``;
:func:`load_policy_artifact` dispatches on the manifest's kind.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from adrl.errors import ArtifactError, FeatureMismatch
from adrl.features import FeatureLayout
from adrl.io import read_manifest, write_json_atomic
from adrl.scenario import Scenario, scenario_from_dict

MANIFEST = "manifest.json"
_LOADERS: dict[str, Callable[[Path], Any]] = {}


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
    for key in ("kind", "version", "nvec", "obs_dim", "layout_hash", "scenario"):
        if key not in manifest:
            raise ArtifactError(f"{path / MANIFEST}: missing field {key!r}; not an adrl policy artifact")
    scenario = scenario_from_dict(manifest["scenario"], source=f"{path / MANIFEST}: scenario")
    layout = FeatureLayout.from_scenario(scenario)
    if layout.hash != manifest["layout_hash"]:
        raise FeatureMismatch(
            f"{path}: policy was built for feature layout {manifest['layout_hash']}, its scenario gives "
            f"{layout.hash}; the artifact was written by an incompatible adrl version"
        )
    return manifest, scenario


def agent_config(config_cls: Any, manifest: dict[str, Any], path: Path | str) -> Any:
    """``config_cls(**manifest["config"])``, or an ``ArtifactError`` naming the artifact when it does not validate."""
    try:
        return config_cls(**manifest["config"])
    except (TypeError, ValueError, KeyError) as e:
        raise ArtifactError(f"{Path(path) / MANIFEST}: invalid agent config ({e})") from e


def load_policy_artifact(path: Path | str, *, expect_layout: FeatureLayout | None = None) -> Any:
    """Load any registered policy kind from ``path``; refuse it if ``expect_layout`` differs from its layout."""
    path = Path(path)
    manifest = read_manifest(path, name=MANIFEST)
    _import_builtin_kinds()
    kind = manifest.get("kind")
    if kind not in _LOADERS:
        raise ArtifactError(f"{path / MANIFEST}: unknown policy kind {kind!r}; known kinds are {sorted(_LOADERS)}")
    if expect_layout is not None and manifest.get("layout_hash") != expect_layout.hash:
        raise FeatureMismatch(
            f"{path}: policy feature layout {manifest.get('layout_hash')} does not match the environment's "
            f"{expect_layout.hash}; was it trained on another scenario?"
        )
    return _LOADERS[str(kind)](path)


def _import_builtin_kinds() -> None:
    """Importing the agent modules registers their kinds."""
    import importlib

    for module in ("baselines", "rules", "q_learning", "reinforce", "ppo", "sb3", "bandits"):
        try:
            importlib.import_module(f"adrl.agents.{module}")
        except ModuleNotFoundError as e:
            if e.name != f"adrl.agents.{module}":
                raise
