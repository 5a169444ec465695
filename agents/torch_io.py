"""Save and load torch modules with their optimizer state as one safetensors file (never pickle).

Tensors are stored as ``<module>.<param>`` and ``optim.<param id>.<state>``; the optimizer's param-group settings
(learning rates, betas, ...) are plain values and go into the JSON manifest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from adrl.errors import ArtifactError
from adrl.io import atomic_path

WEIGHTS = "weights.safetensors"


def save_torch_state(path: Path, modules: dict[str, nn.Module], optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Write ``path/weights.safetensors`` atomically; returns the manifest fields for the optimizer's groups."""
    tensors = {f"{name}.{k}": v.contiguous() for name, m in modules.items() for k, v in m.state_dict().items()}
    opt = optimizer.state_dict()
    for pid, st in opt["state"].items():
        for k, v in st.items():
            tensors[f"optim.{pid}.{k}"] = torch.as_tensor(v).reshape(-1).contiguous() if k == "step" else v
    with atomic_path(path / WEIGHTS) as tmp:
        save_file(tensors, str(tmp))
    return {"optim_param_groups": [{k: v for k, v in g.items() if k != "params"} for g in opt["param_groups"]]}


def load_torch_state(
    path: Path, modules: dict[str, nn.Module], optimizer: torch.optim.Optimizer, manifest: dict[str, Any]
) -> None:
    """Load weights into ``modules`` and state into ``optimizer``; ``ArtifactError`` if anything does not fit."""
    weights = path / WEIGHTS
    if not weights.is_file():
        raise ArtifactError(f"{weights} does not exist")
    try:
        tensors = load_file(str(weights))
    except Exception as e:  # safetensors raises its own error types for truncated or corrupt files
        raise ArtifactError(f"{weights} is not a readable safetensors file ({e}); is it truncated?") from e
    for name, module in modules.items():
        state = {k.removeprefix(f"{name}."): v for k, v in tensors.items() if k.startswith(f"{name}.")}
        try:
            module.load_state_dict(state)
        except RuntimeError as e:
            raise ArtifactError(f"{weights}: weights of {name!r} do not fit the network ({e})") from e
    saved: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, pid, stat = k.split(".", 2)
            saved.setdefault(int(pid), {})[stat] = v.reshape(()) if stat == "step" else v
    if not saved:
        return
    current = optimizer.state_dict()["param_groups"]
    groups = manifest.get("optim_param_groups", [])
    if not isinstance(groups, list) or len(groups) != len(current):
        raise ArtifactError(
            f"{path}/manifest.json: optimizer groups do not match the network ({len(current)} expected)"
        )
    param_groups = [{**g, "params": og["params"]} for g, og in zip(groups, current, strict=True)]
    try:
        optimizer.load_state_dict({"state": saved, "param_groups": param_groups})
    except (ValueError, KeyError, RuntimeError) as e:
        raise ArtifactError(f"{weights}: optimizer state does not fit ({e})") from e
