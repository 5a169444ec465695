"""Shared fixtures: small scenarios and logs, and the location of the real data samples."""

from __future__ import annotations

from pathlib import Path

import pytest

from adrl.scenario import Scenario

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def scenario() -> Scenario:
    return Scenario()


@pytest.fixture(scope="session")
def obd_dir() -> Path:
    path = SHARED_DATA / "obd"
    if not (path / "random" / "all" / "all.csv").is_file():
        pytest.skip(f"Open Bandit Dataset sample not found at {path} (it lives in ../shared/data/obd beside the repo)")
    return path
