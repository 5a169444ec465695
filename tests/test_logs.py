"""Logged data: deterministic simulation, exact propensities, schema round trip, clear errors on bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import typer
from typer.testing import CliRunner

from adrl.actions import flat_index
from adrl.cli import app
from adrl.errors import DataError
from adrl.features import FeatureLayout
from adrl.logs import feature_columns, log_schema, read_logs, read_schema
from adrl.scenario import Scenario
from adrl.simulate import make_logging_policy, simulate


@pytest.fixture(scope="module")
def log_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("logs") / "logs.parquet"
    simulate(Scenario(), n_users=400, out=out, seed=3, chunk_users=150, progress=False)
    return out


def test_same_seed_gives_identical_logs(tmp_path: Path, log_path: Path) -> None:
    again = tmp_path / "again.parquet"
    simulate(Scenario(), n_users=400, out=again, seed=3, chunk_users=150, progress=False)
    pd.testing.assert_frame_equal(read_logs(log_path), read_logs(again))
    other = tmp_path / "other.parquet"
    simulate(Scenario(), n_users=400, out=other, seed=4, chunk_users=150, progress=False)
    assert not read_logs(other)["reward"].equals(read_logs(log_path)["reward"])


def test_parquet_round_trips_with_the_schema(log_path: Path) -> None:
    sc = Scenario()
    layout = FeatureLayout.from_scenario(sc)
    schema = read_schema(log_path)
    expected = log_schema(layout, truth=True)
    assert schema.names == expected.names
    assert [f.type for f in schema] == [f.type for f in expected]
    meta = schema.metadata or {}
    assert meta[b"adrl.layout_hash"].decode() == layout.hash
    assert meta[b"adrl.scenario_hash"].decode() == sc.content_hash
    df = read_logs(log_path)
    assert df["episode_id"].nunique() == 400
    # steps count up from 0 within each episode and episodes end with a leave or the end of the day
    assert (df.groupby("episode_id")["step"].apply(lambda s: list(s) == list(range(len(s))))).all()
    obs = df[feature_columns(layout)].to_numpy()
    assert np.all(obs >= layout.obs_low) and np.all(obs <= layout.obs_high)


@pytest.mark.parametrize(
    ("name", "epsilon"), [("random", 0.2), ("epsilon-greedy", 0.2), ("epsilon-greedy", (1.0, 0.5, 0.3))]
)
def test_logged_propensities_are_the_logging_policy_probabilities(
    tmp_path: Path, name: str, epsilon: float | tuple[float, float, float]
) -> None:
    sc = Scenario()
    layout = FeatureLayout.from_scenario(sc)
    out = tmp_path / "l.parquet"
    simulate(sc, n_users=200, out=out, logging_policy=name, epsilon=epsilon, seed=0, progress=False)
    df = read_logs(out)
    policy = make_logging_policy(name, sc, epsilon=epsilon)
    obs = df[feature_columns(layout)].to_numpy(dtype=np.float32)
    probs = policy.action_probabilities(obs)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)  # a distribution over the whole action space
    action = df[["delay", "slot", "creative"]].to_numpy()
    logged = probs[np.arange(len(df)), flat_index(action, sc.action_nvec)]
    np.testing.assert_allclose(df["propensity"], logged)
    cube = probs.reshape(-1, *sc.action_nvec)
    rows = np.arange(len(df))
    np.testing.assert_allclose(df["propensity_delay"], cube.sum(axis=(2, 3))[rows, action[:, 0]])
    np.testing.assert_allclose(df["propensity_slot"], cube.sum(axis=(1, 3))[rows, action[:, 1]])
    np.testing.assert_allclose(df["propensity_creative"], cube.sum(axis=(1, 2))[rows, action[:, 2]])


def test_epsilon_greedy_logs_explore_every_dimension(log_path: Path) -> None:
    df = read_logs(log_path)
    assert df["delay"].nunique() == 4 and df["slot"].nunique() == 3 and df["creative"].nunique() == 12


def test_per_component_epsilon_explores_each_component_at_its_own_rate(tmp_path: Path) -> None:
    sc = Scenario()
    out = tmp_path / "l.parquet"
    simulate(sc, n_users=3000, out=out, epsilon=(1.0, 0.0, 0.3), seed=0, progress=False)
    df = read_logs(out)
    # delay fully random: uniform over the 4 delays, whatever the greedy rule prefers
    share = df["delay"].value_counts(normalize=True).sort_index().to_numpy()
    np.testing.assert_allclose(share, 0.25, atol=0.02)
    np.testing.assert_allclose(df["propensity_delay"], 0.25)
    # slot never explores: every logged slot is the greedy one, with propensity 1
    np.testing.assert_allclose(df["propensity_slot"], 1.0)
    assert set(np.unique(df["propensity_creative"].round(6))) == {round(0.3 / 12, 6), round(0.7 + 0.3 / 12, 6)}


def test_missing_column_wrong_dtype_and_empty_file_are_clear(tmp_path: Path, log_path: Path) -> None:
    table = pq.read_table(log_path)
    pq.write_table(table.drop(["propensity"]), tmp_path / "a.parquet")
    with pytest.raises(DataError, match=r"missing required column\(s\) \['propensity'\]"):
        read_logs(tmp_path / "a.parquet")
    i = table.schema.get_field_index("click")
    pq.write_table(table.set_column(i, "click", pa.array(["x"] * len(table))), tmp_path / "b.parquet")
    with pytest.raises(DataError, match="column 'click' has type string, expected bool"):
        read_logs(tmp_path / "b.parquet")
    pq.write_table(table.slice(0, 0), tmp_path / "c.parquet")
    with pytest.raises(DataError, match="empty"):
        read_logs(tmp_path / "c.parquet")
    (tmp_path / "d.parquet").write_bytes(b"not parquet")
    with pytest.raises(DataError, match="not a readable parquet file"):
        read_logs(tmp_path / "d.parquet")
    with pytest.raises(DataError, match="does not exist"):
        read_logs(tmp_path / "none.parquet")


def test_bad_propensity_names_the_row(tmp_path: Path, log_path: Path) -> None:
    table = pq.read_table(log_path)
    prop = table.column("propensity").to_numpy().copy()
    prop[5] = 0.0
    i = table.schema.get_field_index("propensity")
    pq.write_table(table.set_column(i, "propensity", pa.array(prop)), tmp_path / "p.parquet")
    with pytest.raises(DataError, match=r"propensity must be in \(0, 1\], got 0 at row 5"):
        read_logs(tmp_path / "p.parquet")


def test_interrupted_simulation_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "logs.parquet"
    out.write_bytes(b"previous results")
    import adrl.simulate as sim

    calls = {"n": 0}
    original = sim.World.step

    def failing_step(self: sim.World, *args: object, **kwargs: object) -> object:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(sim.World, "step", failing_step)
    with pytest.raises(KeyboardInterrupt):
        simulate(Scenario(), n_users=100, out=out, seed=0, progress=False)
    assert out.read_bytes() == b"previous results"  # the old file is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["logs.parquet"]  # and no temp file is left behind


def test_cli_simulate_writes_logs_and_reports_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "cli.parquet"
    result = runner.invoke(app, ["simulate", "--users", "50", "--out", str(out), "--seed", "1", "--json"])
    assert result.exit_code == 0, result.output
    assert '"n_users": 50' in result.output and out.is_file()
    bad = tmp_path / "bad.yaml"
    bad.write_text("horizon: 0\n")
    result = runner.invoke(app, ["simulate", "--scenario", str(bad), "--out", str(tmp_path / "x.parquet")])
    assert result.exit_code == 2
    assert "horizon = 0" in result.output
    result = runner.invoke(app, ["simulate", "--users", "0"])
    assert result.exit_code != 0
    three = tmp_path / "three.parquet"
    result = runner.invoke(app, ["simulate", "--users", "30", "--epsilon", "1,0.5,0.3", "--out", str(three), "--json"])
    assert result.exit_code == 0, result.output
    assert set(np.unique(read_logs(three)["propensity_delay"])) == {0.25}
    for bad_eps, says in [("1.5", "must be in [0, 1]"), ("1,0.5", "one number or three"), ("x", "is not a number")]:
        result = runner.invoke(app, ["simulate", "--users", "5", "--epsilon", bad_eps, "--out", str(tmp_path / "e.pq")])
        assert result.exit_code == 2, result.output
        assert says in result.output and "delay,slot,creative" in result.output
    assert not (tmp_path / "e.pq").exists()


def test_every_command_help_shows_an_example() -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    commands = sorted(typer.main.get_group(app).commands)
    assert "simulate" in commands
    for command in commands:
        result = runner.invoke(app, [command, "--help"])
        text = " ".join(result.output.split())
        assert result.exit_code == 0 and "Example:" in text and f"adrl {command} --" in text, command


def test_concat_logs_keeps_every_user_apart_and_refuses_another_schema(tmp_path: Path, log_path: Path) -> None:
    from adrl.logs import concat_logs

    other = tmp_path / "other.parquet"
    simulate(Scenario(), n_users=150, out=other, seed=4, progress=False)
    a, b = pq.read_table(log_path).to_pandas(), pq.read_table(other).to_pandas()
    union = tmp_path / "union.parquet"
    assert concat_logs([log_path, other], union) == len(a) + len(b)
    u = pq.read_table(union)
    assert u.schema.metadata == pq.read_schema(log_path).metadata  # layout and scenario travel with it
    df = u.to_pandas()
    head, tail = df.iloc[: len(a)], df.iloc[len(a) :].reset_index(drop=True)
    pd.testing.assert_frame_equal(head, a)
    shift = int(max(a["episode_id"].max(), a["user_id"].max())) + 1
    assert (tail["episode_id"] == b["episode_id"] + shift).all() and (tail["user_id"] == b["user_id"] + shift).all()
    pd.testing.assert_frame_equal(
        tail.drop(columns=["episode_id", "user_id"]), b.drop(columns=["episode_id", "user_id"])
    )
    assert df["episode_id"].nunique() == a["episode_id"].nunique() + b["episode_id"].nunique()

    # the output may be one of the inputs: it is replaced only once the union is whole
    copy = tmp_path / "copy.parquet"
    concat_logs([log_path], copy)
    concat_logs([copy, other], copy)
    assert pq.read_table(copy).equals(u)

    narrow = tmp_path / "narrow.parquet"
    pq.write_table(pq.read_table(other).drop_columns(["p_click"]), narrow)
    before = union.read_bytes()
    with pytest.raises(DataError, match="columns or feature layout differ"):
        concat_logs([union, narrow], union)
    assert union.read_bytes() == before  # nothing already written is lost
