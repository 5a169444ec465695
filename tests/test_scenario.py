"""Scenario: defaults, YAML round trip, stable hash, and errors that name the bad field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from adrl.errors import ConfigError
from adrl.scenario import Scenario, load_scenario

REPO = Path(__file__).resolve().parents[1]


def test_shipped_default_yaml_is_the_default_scenario() -> None:
    sc = load_scenario(REPO / "configs" / "scenarios" / "default.yaml")
    assert sc == Scenario()
    assert sc.n_segments >= 4 and sc.n_creatives >= 12 and sc.n_categories >= 3 and sc.n_slots >= 3
    assert sc.horizon == 24 and sc.delays == (0, 1, 2, 4)


def test_content_hash_is_stable_and_changes_with_content(tmp_path: Path) -> None:
    a = Scenario()
    path = tmp_path / "s.yaml"
    a.to_yaml(path)
    assert load_scenario(path).content_hash == a.content_hash
    assert a.content_hash == "ba0b45bfdf823519"  # the same market hashes the same across runs and machines
    b = Scenario(horizon=12)
    assert b.content_hash != a.content_hash


def test_partial_file_takes_defaults(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("horizon: 12\nrewards: {click_value: 0.5}\n")
    sc = load_scenario(path)
    assert sc.horizon == 12 and sc.rewards.click_value == 0.5 and sc.slots == Scenario().slots


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("horizn: 3\n", ["horizn = 3", "Extra inputs are not permitted"]),
        ("horizon: 1\n", ["horizon = 1", "greater than or equal to 2"]),
        ("slots:\n  - {name: feed, cost: -1}\n", ["slots.0.cost = -1", "greater than or equal to 0"]),
        ("delays: [1, 2]\n", ["delays = [1, 2]", "must start at 0"]),
        ("delays: [0, 30]\n", ["largest delay 30", "shorter than horizon 24"]),
        (
            "segments:\n  - {name: a, share: 1, activity: [0.5, 0.5]}\n",
            ["segments.0.activity", "24 values"],
        ),
        (
            "creatives:\n  - {name: a, category: shoes}\n",
            ["creatives.0.category = 'shoes'", "not one of categories"],
        ),
        ("segments:\n  - {name: a, share: 1, interest: {cars: 1}}\n", ["unknown category 'cars'"]),
        ("rewards: {click_value: abc}\n", ["rewards.click_value = 'abc'", "valid number"]),
    ],
)
def test_bad_file_names_field_value_and_what_is_allowed(tmp_path: Path, text: str, expected: list[str]) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_scenario(path)
    message = str(err.value)
    assert message.startswith(f"{path}:")
    for part in expected:
        assert part in message


def test_two_errors_reported_in_one_message(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("horizn: 3\nslots:\n  - {name: a, cost: -1}\n")
    with pytest.raises(ConfigError) as err:
        load_scenario(path)
    message = str(err.value)
    assert "2 invalid field(s)" in message and "horizn" in message and "slots.0.cost" in message


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_scenario(tmp_path / "nope.yaml")
    path = tmp_path / "bad.yaml"
    path.write_text("slots: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_scenario(path)
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_scenario(path)


def test_duplicate_names_rejected() -> None:
    with pytest.raises(ValueError, match="duplicate slot name 'feed'"):
        Scenario.model_validate({"slots": [{"name": "feed"}, {"name": "feed"}]})


def test_yaml_round_trip_keeps_every_field(tmp_path: Path) -> None:
    sc = Scenario(horizon=18, start_hour=6, delays=(0, 3))
    path = tmp_path / "s.yaml"
    sc.to_yaml(path)
    assert yaml.safe_load(path.read_text())["start_hour"] == 6
    assert load_scenario(path) == sc
