"""``adrl ope``: adrl logs with a policy artifact, JSON output, OBD format, and clean errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from adrl.agents.baselines import GreedyPolicy
from adrl.cli import app
from adrl.scenario import Scenario
from adrl.simulate import simulate

runner = CliRunner()


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("ope")
    sc = Scenario()
    simulate(sc, n_users=300, out=root / "logs.parquet", seed=0, progress=False)
    GreedyPolicy(sc).save(root / "greedy")
    return root / "logs.parquet", root / "greedy"


def test_ope_prints_a_table_and_writes_json(logged, tmp_path):
    logs, policy = logged
    out = tmp_path / "ope.json"
    result = runner.invoke(app, ["ope", "--logs", str(logs), "--policy", str(policy), "--estimators",
                                 "dm,ips,snips,dr,pdis,wis,wdr,fqe", "--n-boot", "100", "--out", str(out)])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "ips" in result.output and "ESS" in result.output
    data = json.loads(out.read_text())
    assert list(data["estimates"]) == ["dm", "ips", "snips", "dr", "pdis", "wis", "wdr", "fqe"]
    ips = data["estimates"]["ips"]
    assert ips["lower"] <= ips["value"] <= ips["upper"] and ips["scope"] == "per-decision"
    assert data["n_rows"] > 300
    # 300 user-days of a 0.3-greedy logger give whole-episode weights far too few effective episodes: flagged
    assert any(w.startswith("pdis, wis, wdr: effective sample size") for w in data["warnings"])
    assert not any(w.startswith(("dm", "ips")) for w in data["warnings"])
    assert "warning: pdis, wis, wdr" in result.output


def test_ope_reads_a_log_directory_and_is_deterministic(logged, tmp_path):
    logs, policy = logged
    (tmp_path / "part").mkdir()
    (tmp_path / "part" / "a.parquet").write_bytes(logs.read_bytes())
    args = ["ope", "--logs", str(tmp_path / "part"), "--policy", str(policy), "--estimators", "ips,dr", "--json",
            "--n-boot", "50", "--seed", "3"]  # fmt: skip
    first, second = runner.invoke(app, args), runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    a, b = json.loads(first.output), json.loads(second.output)
    assert a["estimates"] == b["estimates"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--estimators", "ips,nope"], "unknown estimator"),
        (["--logs", "/nonexistent/logs.parquet"], "does not exist"),
        (["--policy", "/nonexistent/policy"], "does not exist"),
    ],
)
def test_ope_errors_exit_2_with_a_message(logged, extra, message):
    logs, policy = logged
    args = ["ope", "--logs", str(logs), "--policy", str(policy), *extra]
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert message in result.output


def test_ope_obd_format_on_fixture(tmp_path):
    from tests.test_ope_obd import write_fixture

    write_fixture(tmp_path, n=2000)
    out = tmp_path / "obd.json"
    result = runner.invoke(app, ["ope", "--format", "obd", "--logs", str(tmp_path), "--campaign", "men", "--policy",
                                 "bts", "--n-boot", "100", "--n-sim", "5000", "--out", str(out)])  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["on_policy_value"] > 0
    assert set(data["estimates"]) == {"dm", "ips", "snips", "dr", "sndr", "switch-dr"}
    assert all(np.isfinite(e["relative_error"]) for e in data["estimates"].values())
    bad = runner.invoke(app, ["ope", "--format", "obd", "--logs", str(tmp_path), "--campaign", "men", "--policy",
                              "bts", "--estimators", "fqe"])  # fmt: skip
    assert bad.exit_code == 2 and "need episodes" in bad.output
