"""The streamed pass of ``adrl ope``: the same estimates as in memory, in shards or whole, with bounded memory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from adrl.agents.baselines import GreedyPolicy, PacingPolicy
from adrl.cli import app
from adrl.errors import DataError
from adrl.features import FeatureLayout
from adrl.ope import stream
from adrl.ope.data import read_adrl_logs
from adrl.ope.model_based import logged_return
from adrl.ope.sequential import PDIS, WIS
from adrl.scenario import Scenario
from adrl.simulate import simulate

SC = Scenario()
LAYOUT = FeatureLayout.from_scenario(SC)


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("stream") / "logs.parquet"
    simulate(SC, n_users=1500, out=path, seed=3, epsilon=(1.0, 0.8, 0.6), progress=False)
    return path


@pytest.fixture(scope="module")
def targets() -> dict[str, object]:
    return {"pacing": PacingPolicy(SC, 3).action_probabilities, "greedy": GreedyPolicy(SC).action_probabilities}


def _cfg(**kw: object) -> stream.ScanConfig:
    return stream.ScanConfig(LAYOUT, horizon=2 * LAYOUT.horizon, **kw)  # type: ignore[arg-type]


def _close(a: object, b: object) -> None:
    for field in ("value", "lower", "upper", "ess", "max_weight"):
        x, y = getattr(a, field), getattr(b, field)
        assert x == pytest.approx(y, rel=1e-9, abs=1e-12, nan_ok=True), field


def _write(path: Path, table: pa.Table) -> Path:
    pq.write_table(table, path)
    return path


def test_streamed_importance_sampling_matches_the_in_memory_estimators(logs: Path, targets: dict) -> None:
    data = read_adrl_logs(logs, LAYOUT)
    # the file read in one batch, and in many (episodes held back across batches), give the same state
    for batch_rows in (10**9, 3000):
        state = stream.scan([logs], targets, _cfg(batch_rows=batch_rows))
        stream.check_grouped(state)
        assert state.n_rows == data.n and state.logged.n == data.n_episodes
        for name, probs in targets.items():
            tp = np.asarray(probs(data.obs))[np.arange(data.n), data.action]
            args = (data.episode_id, data.step, data.reward, data.propensity, tp)
            rng = np.random.default_rng(0)
            _close(stream.pdis_estimate(state.policies[name], state.horizon, 1.0, 0.05),
                   PDIS().estimate(*args, rng=rng, n_boot=0))  # fmt: skip
            _close(stream.wis_estimate(state.policies[name], state.horizon, 1.0, 0.05),
                   WIS().estimate(*args, rng=rng, n_boot=0))  # fmt: skip
        logged = stream.logged_estimate(state, 0.05)
        truth = logged_return(data)
        assert (logged.value, logged.lower, logged.upper) == pytest.approx((truth.value, truth.lower, truth.upper))


@pytest.mark.parametrize("order", ["grouped", "shuffled"])
def test_any_row_order_gives_the_same_estimates(logs: Path, targets: dict, tmp_path: Path, order: str) -> None:
    table = pq.read_table(logs)
    if order == "grouped":
        rows = np.lexsort((table["step"].to_numpy(), table["episode_id"].to_numpy()))
    else:  # the worst case for memory: every episode stays open to the end
        rows = np.random.default_rng(0).permutation(table.num_rows)
    other = _write(tmp_path / f"{order}.parquet", table.take(pa.array(rows)))
    whole = stream.scan([logs], targets, _cfg())
    batched = stream.scan([other], targets, _cfg(batch_rows=1000))  # episodes cross batch boundaries
    stream.check_grouped(batched)
    assert batched.n_rows == whole.n_rows
    for name in targets:
        _close(stream.wis_estimate(batched.policies[name], batched.horizon, 1.0, 0.05),
               stream.wis_estimate(whole.policies[name], whole.horizon, 1.0, 0.05))  # fmt: skip
        _close(stream.pdis_estimate(batched.policies[name], batched.horizon, 1.0, 0.05),
               stream.pdis_estimate(whole.policies[name], whole.horizon, 1.0, 0.05))  # fmt: skip


def test_the_survey_finds_each_episodes_last_row(tmp_path: Path) -> None:
    eid = np.array([5, 3, 5, 9, 3, 3, 7], dtype=np.int64)
    path = _write(tmp_path / "ids.parquet", pa.table({"episode_id": eid}))
    uniq, last = stream.survey(pq.ParquetFile(path), batch_rows=2)
    assert uniq.tolist() == [3, 5, 7, 9] and last.tolist() == [5, 2, 6, 3]


def test_shards_merge_to_the_same_estimates_as_one_pass(logs: Path, targets: dict, tmp_path: Path) -> None:
    table = pq.read_table(logs)
    odd = (table["episode_id"].to_numpy() % 3 == 0).astype(bool)
    shards = tmp_path / "shards"
    shards.mkdir()
    a = _write(shards / "a.parquet", table.filter(pa.array(odd)))
    b = _write(shards / "b.parquet", table.filter(pa.array(~odd)))
    cfg = _cfg(sample_fraction=0.5, seed=4)
    merged = stream.scan([b], targets, cfg)
    merged.merge(stream.scan([a], targets, cfg))  # shards reduced in another order than the files
    one = stream.scan([logs], targets, cfg)
    rngs = {k: np.random.default_rng(1) for k in targets}
    names = ["pdis", "wis", "wdr", "fqe"]
    m = stream.finish(merged, targets, names, cfg, sim=None, rng_for=rngs, alpha=0.05, n_boot=50, n_folds=2)
    rngs = {k: np.random.default_rng(1) for k in targets}
    o = stream.finish(one, targets, names, cfg, sim=None, rng_for=rngs, alpha=0.05, n_boot=50, n_folds=2)
    assert m.n_sample_episodes == o.n_sample_episodes > 0
    for name in targets:
        for k in names:
            _close(m.estimates[name][k], o.estimates[name][k])


def test_an_episode_split_over_two_files_is_a_clear_error(logs: Path, targets: dict, tmp_path: Path) -> None:
    table = pq.read_table(logs)
    half = table.num_rows // 2
    shards = tmp_path / "split"
    shards.mkdir()
    _write(shards / "a.parquet", table.slice(0, half))
    _write(shards / "b.parquet", table.slice(half))
    state = stream.scan(sorted(shards.glob("*.parquet")), targets, _cfg())
    with pytest.raises(DataError, match="more than one place"):
        stream.check_grouped(state)


@settings(max_examples=40, deadline=None)
@given(
    st.integers(min_value=2, max_value=60),
    st.lists(st.integers(min_value=1, max_value=20), min_size=1, max_size=5),
    st.integers(min_value=0, max_value=2**32 - 1),
)
def test_merged_moments_equal_the_sample_covariance(k_rows: int, splits: list[int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.lognormal(size=(k_rows + sum(splits), 3)) * 1e3 + 1e6  # far from zero: cancellation would show
    m = stream.Moments(3)
    lo = 0
    for size in [k_rows, *splits]:
        part = stream.Moments(3)
        part.add(x[lo : lo + size])
        m.merge(part)
        lo += size
    assert m.n == x.shape[0]
    np.testing.assert_allclose(m.mean, x.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(m.cov(), np.cov(x, rowvar=False), rtol=1e-7)


def test_sample_keys_are_uniform_and_keyed() -> None:
    ids = np.arange(200_000)
    u = stream.unit_key(ids, 0, 2)
    assert u.min() >= 0.0 and u.max() < 1.0
    assert abs((u < 0.1).mean() - 0.1) < 0.005
    assert not np.array_equal(u, stream.unit_key(ids, 1, 2))  # the seed re-draws the sample
    assert np.array_equal(u[::7], stream.unit_key(ids[::7], 0, 2))  # the same id, the same key, in any shard


def test_adrl_ope_stream_agrees_with_the_in_memory_path(logs: Path, tmp_path: Path) -> None:
    PacingPolicy(SC, 3).save(tmp_path / "pacing")
    runner = CliRunner()
    outs = {}
    for flag in ("--stream", "--no-stream"):
        out = tmp_path / f"{flag}.json"
        res = runner.invoke(app, ["ope", "--logs", str(logs), "--policy", str(tmp_path / "pacing"),
                                  "--estimators", "pdis,wis", "--n-boot", "0", "--out", str(out), flag])  # fmt: skip
        assert res.exit_code == 0, res.output
        outs[flag] = json.loads(out.read_text())
    assert "streamed" in outs["--stream"] and "streamed" not in outs["--no-stream"]
    for k in ("pdis", "wis"):
        a, b = outs["--stream"]["estimates"][k], outs["--no-stream"]["estimates"][k]
        assert a["value"] == pytest.approx(b["value"], rel=1e-9)
        assert a["upper"] == pytest.approx(b["upper"], rel=1e-9)
    assert outs["--stream"]["logged_value"]["value"] == pytest.approx(outs["--no-stream"]["logged_value"]["value"])
    bad = runner.invoke(app, ["ope", "--logs", str(logs), "--policy", str(tmp_path / "pacing"), "--estimand",
                              "step", "--stream"])  # fmt: skip
    assert bad.exit_code != 0 and "one-step estimand reads the log in memory" in bad.output


def test_the_ray_engine_gives_the_local_estimates_on_a_sharded_log(logs: Path, tmp_path: Path) -> None:
    pytest.importorskip("ray", reason="the Ray engine needs the optional extra: pip install 'adrl[ray]'")
    from adrl.ope.ray_engine import evaluate_log_ray

    table = pq.read_table(logs)
    shards = tmp_path / "shards"
    shards.mkdir()
    part = table["episode_id"].to_numpy() % 4
    for j in range(4):
        _write(shards / f"part-{j}.parquet", table.filter(pa.array(part == j)))
    PacingPolicy(SC, 3).save(tmp_path / "pacing")
    GreedyPolicy(SC).save(tmp_path / "greedy")
    policies = {str(tmp_path / "pacing"): str(tmp_path / "pacing"), str(tmp_path / "greedy"): str(tmp_path / "greedy")}
    names = ["pdis", "wis", "wdr"]
    local = stream.evaluate_log(shards, LAYOUT, _targets_of(policies), names, sim=None, seed=5, n_boot=50,
                                sample_episodes=600)  # fmt: skip
    paths, layout = (str(tmp_path / "pacing"), str(tmp_path / "greedy")), LAYOUT

    def make() -> dict[str, Any]:  # what `adrl ope` passes (commands.ope.load_targets), built here: tests stay
        from adrl.agents.registry import load_policy_artifact  # below adrl.commands; pickled by value for Ray

        return {p: load_policy_artifact(Path(p), expect_layout=layout).action_probabilities for p in paths}

    remote = evaluate_log_ray(shards, LAYOUT, make, names, sim=None, seed=5, n_boot=50, sample_episodes=600,
                              num_cpus=2)  # fmt: skip
    assert remote.n_rows == local.n_rows and remote.n_sample_episodes == local.n_sample_episodes
    for name in policies:
        for k in names:
            a, b = remote.estimates[name][k], local.estimates[name][k]
            assert abs(a.value - b.value) <= 1e-9 and abs(a.upper - b.upper) <= 1e-9, (name, k)


def _targets_of(policies: dict[str, str]) -> dict[str, Any]:
    from adrl.agents.registry import load_policy_artifact

    return {k: load_policy_artifact(Path(p), expect_layout=LAYOUT).action_probabilities for k, p in policies.items()}


def test_the_ray_engine_without_ray_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_ray(name: str, *args: object, **kwargs: object) -> object:
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(builtins, "__import__", no_ray)
    from adrl.errors import ConfigError
    from adrl.ope.ray_engine import _ray

    with pytest.raises(ConfigError, match=r"pip install 'adrl\[ray\]'"):
        _ray()
