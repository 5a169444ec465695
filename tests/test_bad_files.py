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


def _out_cases(tmp_path: Path) -> list[tuple[list[str], Path]]:
    logs = tmp_path / "logs.parquet"
    assert CliRunner().invoke(app, ["simulate", "--users", "60", "--out", str(logs), "--seed", "1"]).exit_code == 0
    return [
        (["simulate", "--users", "20", "--out"], logs),
        (["fit", "--logs", str(logs), "--epochs", "1", "--no-baselines", "--out"], tmp_path / "model"),
    ]


def test_no_command_overwrites_an_output_without_force(tmp_path: Path) -> None:
    runner = CliRunner()
    for args, out in _out_cases(tmp_path):
        if not out.exists():
            assert runner.invoke(app, [*args, str(out)]).exit_code == 0
        before = sorted((p.name, p.stat().st_mtime_ns) for p in ([out] if out.is_file() else out.iterdir()))
        result = runner.invoke(app, [*args, str(out)])
        assert result.exit_code == 2, result.output
        assert "already exists; pass --force to replace it" in result.output and "Traceback" not in result.output
        after = sorted((p.name, p.stat().st_mtime_ns) for p in ([out] if out.is_file() else out.iterdir()))
        assert after == before  # nothing written
        assert runner.invoke(app, [*args, str(out), "--force"]).exit_code == 0


def test_an_output_of_the_wrong_kind_or_an_unwritable_place_is_refused(tmp_path: Path) -> None:
    runner = CliRunner()
    (tmp_path / "adir").mkdir()
    (tmp_path / "afile").write_text("x")
    result = runner.invoke(app, ["simulate", "--users", "5", "--out", str(tmp_path / "adir")])
    assert result.exit_code == 2 and "is a directory; expected a file path" in result.output
    result = runner.invoke(app, ["fit", "--logs", str(tmp_path), "--out", str(tmp_path / "afile")])
    assert result.exit_code == 2 and "is a file; expected a directory path" in result.output
    result = runner.invoke(app, ["simulate", "--users", "5", "--out", str(tmp_path / "afile" / "x.parquet")])
    assert result.exit_code == 2 and "cannot write under" in result.output


def test_resume_without_a_checkpoint_is_refused_and_keeps_the_metrics(tmp_path: Path) -> None:
    out = tmp_path / "run"
    runner = CliRunner()
    assert runner.invoke(app, ["train", "--agent", "greedy", "--out", str(out)]).exit_code == 0
    metrics = (out / "metrics.csv").read_text()
    result = runner.invoke(app, ["train", "--agent", "greedy", "--out", str(out), "--resume"])
    assert result.exit_code == 2 and "no checkpoint to continue from" in result.output
    assert (out / "metrics.csv").read_text() == metrics
