"""The package version, on the ground floor so that artifacts can record it without importing ``adrl``."""

__version__ = "0.1.0"
