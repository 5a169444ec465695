"""Scenario, preset and run-config files a user hands us: one clear error each, fast, never a hang or a default."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from adrl.agents.factory import load_preset
from adrl.cli import app
from adrl.errors import ConfigError
from adrl.scenario import load_scenario

BILLION_LAUGHS = "\n".join(
    ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    + [f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]" for i in range(8)]
    + ["horizon: 24"]
)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (BILLION_LAUGHS, "aliases"),
        ("", "empty"),
        ("   \n# only a comment\n", "empty"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00", "not a UTF-8 text file"),
        ("a: " + "[" * 200 + "]" * 200, "nested deeper than"),
        ("- 1\n- 2\n", "expected a mapping"),
        ("horizon: [1, 2", "not valid YAML"),
    ],
    ids=["alias-bomb", "empty", "comment-only", "binary", "deep", "list", "broken"],
)
def test_a_bad_scenario_file_is_one_clear_error(tmp_path: Path, content: str | bytes, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=message) as info:
        load_scenario(path)
    assert time.perf_counter() - start < 2.0
    assert str(path) in str(info.value)
    with pytest.raises(ConfigError, match=message):
        load_preset("q_learning", path)


def test_an_oversized_file_is_refused_before_parsing(tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    path.write_text("horizon: 24\n" + "# padding\n" * 200_000)
    with pytest.raises(ConfigError, match="at most"):
        load_scenario(path)


def test_the_cli_reports_an_alias_bomb_without_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(BILLION_LAUGHS)
    result = CliRunner().invoke(
        app, ["simulate", "--scenario", str(path), "--users", "10", "--out", str(tmp_path / "l")]
    )
    assert result.exit_code == 2, result.output
    assert "aliases" in result.output and "Traceback" not in result.output
