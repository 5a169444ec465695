"""adrl: a reinforcement-learning workbench for ad placement."""

from typing import TYPE_CHECKING

import adrl.envs.registration  # noqa: F401  (registers adrl/AdPlacement-v0 and adrl/AdPlacement-Learned-v0)
from adrl.errors import AdrlError, ArtifactError, ConfigError, DataError, FeatureMismatch, InvalidAction
from adrl.features import FeatureLayout
from adrl.scenario import Scenario, load_scenario
from adrl.version import __version__
from adrl.world import World

if TYPE_CHECKING:
    from adrl.policy import load_policy


__all__ = [
    "AdrlError",
    "ArtifactError",
    "ConfigError",
    "DataError",
    "FeatureLayout",
    "FeatureMismatch",
    "InvalidAction",
    "Scenario",
    "World",
    "__version__",
    "load_policy",
    "load_scenario",
]


def __getattr__(name: str) -> object:
    if name == "load_policy":  # lazy: importing adrl stays light for code that never serves a policy
        from adrl.policy import load_policy

        return load_policy
    raise AttributeError(f"module 'adrl' has no attribute {name!r}")
