"""adrl: a reinforcement-learning workbench for ad placement."""

from adrl.errors import AdrlError, ArtifactError, ConfigError, DataError, FeatureMismatch, InvalidAction
from adrl.features import FeatureLayout
from adrl.scenario import Scenario, load_scenario
from adrl.world import World

__version__ = "0.1.0"

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
    "load_scenario",
]
