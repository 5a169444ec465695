"""Scenario, preset and run-config files a user hands us: one clear error each, fast, never a hang or a default."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from adrl.agents.baselines import GreedyPolicy
from adrl.agents.factory import load_preset
from adrl.cli import app
from adrl.errors import ConfigError
from adrl.scenario import Scenario, load_scenario

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
    GreedyPolicy(Scenario()).save(tmp_path / "greedy")
    ope = ["ope", "--logs", str(logs), "--policy", str(tmp_path / "greedy"), "--estimand", "step"]
    return [
        (["simulate", "--users", "20", "--out"], logs),
        (["fit", "--logs", str(logs), "--epochs", "1", "--no-baselines", "--out"], tmp_path / "model"),
        ([*ope, "--estimators", "ips", "--n-boot", "0", "--out"], tmp_path / "ope.json"),
        (["train", "--agent", "greedy", "--out"], tmp_path / "run"),
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
    logs = tmp_path / "logs.parquet"
    assert runner.invoke(app, ["simulate", "--users", "5", "--out", str(logs)]).exit_code == 0
    result = runner.invoke(app, ["fit", "--logs", str(logs), "--out", str(tmp_path / "afile")])
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


@pytest.fixture(scope="module")
def small_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from adrl.simulate import simulate

    path = tmp_path_factory.mktemp("badlogs") / "logs.parquet"
    simulate(Scenario(), n_users=80, out=path, seed=0, progress=False)
    return path


def _variant(small_log: Path, tmp_path: Path, name: str, column: str, value: float | None) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(small_log)
    if value is None:  # duplicate the column
        table = pa.Table.from_arrays([*table.columns, table.column(column)], names=[*table.column_names, column])
    else:
        i = table.schema.get_field_index(column)
        field = table.schema.field(column)
        table = table.set_column(i, field, pa.array([value] * len(table), type=field.type))
    out = tmp_path / f"{name}.parquet"
    pq.write_table(table, out)
    return out


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("delay", None, "appear more than once"),
        ("delay", 99, "delay 99 at row 0 is outside 0..3"),
        ("creative", -1, "creative -1 at row 0 is outside"),
        ("x_segment", 9.0, "x_segment 9 at row 0 is outside 0..3"),
        ("x_hour", 77.0, "x_hour 77 at row 0 is outside 0..23"),
    ],
)
def test_a_log_out_of_the_markets_range_is_refused_by_fit_and_ope(
    small_log: Path, tmp_path: Path, column: str, value: float | None, message: str
) -> None:
    from adrl.agents.baselines import GreedyPolicy

    bad = _variant(small_log, tmp_path, "bad", column, value)
    GreedyPolicy(Scenario()).save(tmp_path / "greedy")
    runner = CliRunner()
    for args in (
        ["fit", "--logs", str(bad), "--out", str(tmp_path / "model"), "--epochs", "1", "--no-baselines"],
        ["ope", "--logs", str(bad), "--policy", str(tmp_path / "greedy"), "--estimand", "step"],
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args[0], result.output)
        assert message in result.output and "Traceback" not in result.output
