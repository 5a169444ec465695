"""One root for the errors adrl raises on purpose; each subclass also inherits the builtin it means."""

from __future__ import annotations


class AdrlError(Exception):
    """Root of every error raised on purpose; the CLI prints these without a traceback."""


class ConfigError(AdrlError, ValueError):
    """A scenario, agent preset or CLI option is invalid."""


class DataError(AdrlError, ValueError):
    """A log file or in-memory dataset does not match the expected schema or values."""


class ArtifactError(AdrlError, ValueError):
    """A model or policy artifact is missing, truncated, or does not match what is expected."""


class FeatureMismatch(ArtifactError):
    """An artifact was built for another feature layout than the one in use."""


class InvalidAction(AdrlError, ValueError):
    """An action outside the action space was given to an environment or policy."""


class ResetNeeded(AdrlError, RuntimeError):
    """An environment was stepped before ``reset`` or after its episode ended."""
