"""``adrl train --engine rllib``: RLlib PPO (new API stack) on adrl's envs, exported as a ``ppo-native`` artifact.

Ray is the optional extra ``adrl[ray]``; nothing here imports it at import time (:func:`require_ray` does, with
the install hint). :mod:`adrl.rllib.module` is the RLModule (adrl's PPO networks), :mod:`adrl.rllib.train` the
run (env registration on the workers, checkpoints, resume, export).
"""

from __future__ import annotations

from typing import Any

from adrl.errors import ConfigError

INSTALL_HINT = "pip install 'adrl[ray]'"


def require_ray() -> Any:
    """The ``ray`` module, or a ``ConfigError`` that says how to install it."""
    try:
        import ray
        import ray.rllib
    except ImportError as e:
        raise ConfigError(f"--engine rllib needs Ray RLlib: {INSTALL_HINT} (on the driver and every worker)") from e
    return ray
