"""Behavior model: learns from a small log, round-trips through its artifact, refuses bad artifacts and logs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

from adrl.agents.baselines import GreedyPolicy, ValueModel
from adrl.behavior import (
    BehaviorModel,
    BehaviorValueModel,
    FitConfig,
    FitReport,
    LearnedResponse,
    fit_adrl,
)
from adrl.behavior.inputs import decision_time_inputs
from adrl.behavior.metrics import auc, expected_calibration_error, head_metrics
from adrl.behavior.training import AdrlLogSource, unit_hash
from adrl.cli import app
from adrl.errors import ArtifactError, ConfigError, DataError, FeatureMismatch
from adrl.features import FeatureLayout
from adrl.logs import feature_columns, read_logs
from adrl.protocols import ResponseModel
from adrl.scenario import Scenario
from adrl.simulate import simulate
from adrl.world import World

FAST = FitConfig(
    epochs=8,
    batch_size=512,
    learning_rate=1e-2,
    read_rows=4096,
    shuffle_rows=16_384,  # several shuffle windows and parquet chunks: the streaming path is exercised
    baseline_rows=8000,
    forest_rows=4000,
    forest_trees=10,
    seed=0,
)


@pytest.fixture(scope="module")
def log_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("behavior") / "logs.parquet"
    simulate(Scenario(), n_users=4000, out=out, seed=11, progress=False)
    return out


@pytest.fixture(scope="module")
def report(log_path: Path) -> FitReport:
    return fit_adrl(log_path, Scenario(), FAST, progress=False)


@pytest.fixture(scope="module")
def artifact(report: FitReport, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return report.model.save(tmp_path_factory.mktemp("model") / "behavior")


@pytest.fixture(scope="module")
def logged(log_path: Path) -> tuple[np.ndarray, np.ndarray]:
    df = read_logs(log_path)
    df = df[df["shown"]].head(3000)
    obs = df[feature_columns(FeatureLayout.from_scenario(Scenario()))].to_numpy(dtype=np.float32)
    return obs, df[["delay", "slot", "creative"]].to_numpy()


def copy_artifact(artifact: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(artifact, tmp_path / "copy"))


# ---- learning ----------------------------------------------------------------------------------------------------
def test_training_on_a_small_log_clearly_beats_the_baselines(report: FitReport) -> None:
    click = report.metrics["click"]
    assert click["model"].auc > 0.78
    assert click["model"].normalized_entropy < 0.92  # far better than predicting the base rate
    assert click["model"].auc > click["logistic_regression"].auc - 0.01
    assert click["model"].auc > click["random_forest"].auc
    assert abs(click["model"].calibration - 1.0) < 0.15
    assert click["truth"].auc >= click["model"].auc - 0.08  # the truth bounds what any model can reach
    for head in ("conversion", "leave"):
        m = report.metrics[head]["model"]
        assert m.auc > 0.7 and m.normalized_entropy < 1.0
    assert report.history and report.n_train > 10_000 and report.n_validation > 2000


def test_metrics_and_heads_are_written_to_model_json(artifact: Path) -> None:
    manifest = json.loads((artifact / "model.json").read_text())
    assert manifest["kind"] == "behavior-model" and manifest["format"] == "adrl"
    assert manifest["heads"] == {"click": True, "conversion": True, "leave": True}
    assert manifest["layout_hash"] == FeatureLayout.from_scenario(Scenario()).hash
    assert manifest["scenario_hash"] == Scenario().content_hash
    click = manifest["metrics"]["validation"]["click"]
    assert set(click) == {"model", "logistic_regression", "random_forest", "truth"}
    assert {"auc", "log_loss", "normalized_entropy", "calibration", "ece", "base_rate"} <= set(click["model"])
    assert set(click["model"]["calibration_by_slot"]) == {"feed", "banner", "interstitial"}
    assert manifest["training"]["config"]["seed"] == 0


def test_users_never_straddle_the_split(log_path: Path) -> None:
    src = AdrlLogSource(log_path, Scenario(), FAST)
    users = read_logs(log_path, columns=["user_id"])["user_id"].to_numpy()
    is_val = unit_hash(users) < FAST.validation_fraction
    assert set(users[is_val]).isdisjoint(users[~is_val])
    assert 0.15 < is_val.mean() < 0.25
    assert np.array_equal(unit_hash(users), unit_hash(users.copy()))  # fixed, not seeded
    n_train = sum(len(b) for b in src.train_batches(np.random.default_rng(0)))
    shown = read_logs(log_path, columns=["user_id", "shown"])
    assert n_train == int((shown["shown"] & ~is_val).sum())


def test_same_seed_gives_the_same_model(log_path: Path, logged: tuple[np.ndarray, np.ndarray]) -> None:
    cfg = FitConfig(epochs=1, batch_size=1024, baselines=False, seed=5)
    a = fit_adrl(log_path, cfg=cfg, progress=False).model.predict(*logged)
    b = fit_adrl(log_path, cfg=cfg, progress=False).model.predict(*logged)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


# ---- inference -------------------------------------------------------------------------------------------------
def test_fast_path_matches_the_torch_network(report: FitReport, logged: tuple[np.ndarray, np.ndarray]) -> None:
    model = report.model
    fast = model.predict(*logged)
    assert model.encoder is not None
    cat, dense = model.encoder.encode(*logged)
    with torch.no_grad():
        p = torch.sigmoid(model.net(torch.from_numpy(cat), torch.from_numpy(dense))).numpy()
    for got, want in zip(fast, (p[:, 0], p[:, 0] * p[:, 1], p[:, 2]), strict=True):
        assert got.dtype == np.float32 and got.shape == (len(cat),)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_an_impression_time_model_reads_the_state_at_the_impression_not_the_decision(
    report: FitReport, log_path: Path, logged: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    layout = FeatureLayout.from_scenario(Scenario())
    obs, action = logged
    model = fit_adrl(log_path, cfg=FitConfig(epochs=1, baselines=False, impression_inputs=True),
                     progress=False).model  # fmt: skip
    assert model.encoder is not None and set(model.spec.unused) == set(decision_time_inputs(layout))
    cat, dense = model.encoder.encode(obs, action)
    assert np.all(cat[:, model.spec.cat_index("delay")] == 0)
    with torch.no_grad():  # the folded fast path holds the same inputs at 0
        p = torch.sigmoid(model.net(torch.from_numpy(cat), torch.from_numpy(dense))).numpy()
    np.testing.assert_allclose(model.predict(obs, action)[0], p[:, 0], rtol=1e-4, atol=1e-6)
    clock = obs.copy()  # another decision-time clock, the same impression (its hour is the categorical "hour")
    for name in ("hour_sin", "hour_cos", "day_progress"):
        clock[:, layout.index(name)] = -clock[:, layout.index(name)] + 0.3
    for a, b in zip(model.predict(obs, action), model.predict(clock, action), strict=True):
        np.testing.assert_array_equal(a, b)
    everything = report.model  # the default reads every input
    assert everything.spec.unused == ()
    assert not np.allclose(everything.predict(obs, action)[0], everything.predict(clock, action)[0])
    path = everything.save(tmp_path / "everything")
    manifest = json.loads((path / "model.json").read_text())
    del manifest["inputs"]["unused"]  # as written before the option existed: every input is read
    (path / "model.json").write_text(json.dumps(manifest))
    for a, b in zip(everything.predict(obs, action), BehaviorModel.load(path).predict(obs, action), strict=True):
        np.testing.assert_array_equal(a, b)
    manifest["inputs"]["unused"] = ["delay", "no_such_input"]
    (path / "model.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="'unused' names \\['no_such_input'\\]"):
        BehaviorModel.load(path)
    manifest["inputs"]["unused"] = ["creative"]  # a categorical the model cannot do without
    (path / "model.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="only 'delay' and dense inputs"):
        BehaviorModel.load(path)
    loaded = BehaviorModel.load(model.save(tmp_path / "impression"))
    assert loaded.spec.unused == model.spec.unused
    for a, b in zip(model.predict(obs, action), loaded.predict(obs, action), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_model_without_the_wide_part_still_loads_and_a_bad_flag_is_refused(
    log_path: Path, logged: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    narrow = fit_adrl(log_path, cfg=FitConfig(epochs=1, baselines=False, wide=False), progress=False).model
    assert not narrow.net.wide and not hasattr(narrow.net, "wide_dense")
    path = narrow.save(tmp_path / "narrow")
    manifest = json.loads((path / "model.json").read_text())
    del manifest["architecture"]["wide"]  # as written before the wide part existed
    (path / "model.json").write_text(json.dumps(manifest))
    for a, b in zip(narrow.predict(*logged), BehaviorModel.load(path).predict(*logged), strict=True):
        np.testing.assert_array_equal(a, b)
    manifest["architecture"]["wide"] = "yes"
    (path / "model.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="'wide' must be true or false"):
        BehaviorModel.load(path)
    with pytest.raises(ConfigError, match="wide must be true or false"):
        FitConfig(wide="yes")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="impression_inputs must be true or false"):
        FitConfig(impression_inputs=1)  # type: ignore[arg-type]


def test_save_load_round_trip_gives_identical_predictions(
    report: FitReport, artifact: Path, logged: tuple[np.ndarray, np.ndarray]
) -> None:
    loaded = BehaviorModel.load(artifact)
    for a, b in zip(report.model.predict(*logged), loaded.predict(*logged), strict=True):
        np.testing.assert_array_equal(a, b)
    assert loaded.metrics["validation"]["click"]["model"]["auc"] == pytest.approx(report.metrics["click"]["model"].auc)


def test_learned_response_drives_the_world(artifact: Path, report: FitReport) -> None:
    scenario = Scenario()
    response = LearnedResponse.load(artifact)  # the scenario comes from model.json
    assert isinstance(response, ResponseModel)
    world = World(scenario)
    rng = np.random.default_rng(0)
    batch = world.sample_users(500, rng)
    action = np.stack([rng.integers(0, k, 500) for k in scenario.action_nvec], axis=1)
    resp = response.probabilities(batch, action)
    p_click, p_ctcvr, p_leave = report.model.predict(FeatureLayout.from_scenario(scenario).encode(batch), action)
    np.testing.assert_allclose(resp.p_click, p_click, rtol=1e-5)
    np.testing.assert_allclose(resp.p_conversion, p_ctcvr / p_click, rtol=1e-4)
    np.testing.assert_allclose(resp.p_leave, p_leave, rtol=1e-5)
    assert ((resp.p_conversion >= 0) & (resp.p_conversion <= 1)).all()
    result = world.step(batch, action, rng, response=response)
    assert result.click.dtype == bool and result.shown.all()


def test_value_model_ranks_actions_for_greedy(report: FitReport) -> None:
    scenario = Scenario()
    value = BehaviorValueModel(report.model, scenario)
    assert isinstance(value, ValueModel)
    world = World(scenario)
    obs = FeatureLayout.from_scenario(scenario).encode(world.sample_users(7, np.random.default_rng(1)))
    v = value.expected_reward(obs)
    assert v.shape == (7, scenario.n_delays, scenario.n_slots, scenario.n_creatives)
    assert value.expected_reward(obs, np.array([0])).shape == (7, 1, scenario.n_slots, scenario.n_creatives)
    # the value is click value * pCTR + conversion value * pCTCVR - slot cost, for one action checked by hand
    p_click, p_ctcvr, _ = report.model.predict(obs[:1], np.array([[1, 2, 5]]))
    rw = scenario.rewards
    want = rw.click_value * p_click + rw.conversion_weight * scenario.creatives[5].conversion_value * p_ctcvr
    assert v[0, 1, 2, 5] == pytest.approx(float(want[0]) - scenario.slots[2].cost, rel=1e-5)
    action = GreedyPolicy(scenario, value).predict(obs)
    assert action.shape == (7, 3) and (action[:, 0] == 0).all()


# ---- bad artifacts -----------------------------------------------------------------------------------------------
def test_missing_files_are_reported(artifact: Path, tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="does not exist"):
        BehaviorModel.load(tmp_path / "nowhere")
    bad = copy_artifact(artifact, tmp_path)
    (bad / "weights.safetensors").unlink()
    with pytest.raises(ArtifactError, match=r"weights file .*weights.safetensors does not exist"):
        BehaviorModel.load(bad)
    (bad / "model.json").unlink()
    with pytest.raises(ArtifactError, match=r"model.json does not exist"):
        BehaviorModel.load(bad)


def test_truncated_or_altered_weights_are_refused(artifact: Path, tmp_path: Path) -> None:
    bad = copy_artifact(artifact, tmp_path)
    weights = bad / "weights.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError, match="truncated"):
        BehaviorModel.load(bad)
    altered = bytearray(data)
    altered[-5] ^= 0xFF
    weights.write_bytes(bytes(altered))
    with pytest.raises(ArtifactError, match="sha256 does not match"):
        BehaviorModel.load(bad)


def test_truncated_manifest_is_refused(artifact: Path, tmp_path: Path) -> None:
    bad = copy_artifact(artifact, tmp_path)
    text = (bad / "model.json").read_text()
    (bad / "model.json").write_text(text[: len(text) // 2])
    with pytest.raises(ArtifactError, match="not valid JSON"):
        BehaviorModel.load(bad)


def test_wrong_layout_hash_is_refused(artifact: Path, tmp_path: Path) -> None:
    other = Scenario(delays=(0, 1, 3))
    with pytest.raises(FeatureMismatch, match="feature layout"):
        LearnedResponse.load(artifact, other)
    with pytest.raises(FeatureMismatch):
        BehaviorModel.load(artifact, layout=FeatureLayout.from_scenario(other))
    bad = copy_artifact(artifact, tmp_path)
    manifest = json.loads((bad / "model.json").read_text())
    manifest["layout_hash"] = "0123456789abcdef"
    (bad / "model.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="layout_hash '0123456789abcdef' does not match"):
        BehaviorModel.load(bad)


def test_wrong_kind_or_version_is_refused(artifact: Path, tmp_path: Path) -> None:
    bad = copy_artifact(artifact, tmp_path)
    manifest = json.loads((bad / "model.json").read_text())
    (bad / "model.json").write_text(json.dumps({**manifest, "version": 99}))
    with pytest.raises(ArtifactError, match="format version is 99"):
        BehaviorModel.load(bad)


# ---- bad logs ----------------------------------------------------------------------------------------------------
def test_log_with_missing_columns_is_refused(log_path: Path, tmp_path: Path) -> None:
    table = pq.read_table(log_path)
    bad = tmp_path / "missing.parquet"
    pq.write_table(table.drop(["click"]), bad)
    with pytest.raises(DataError, match=r"missing required column\(s\) \['click'\]"):
        fit_adrl(bad, cfg=FAST, progress=False)


def test_log_with_wrong_dtypes_is_refused(log_path: Path, tmp_path: Path) -> None:
    table = pq.read_table(log_path)
    i = table.schema.get_field_index("click")
    bad = tmp_path / "dtype.parquet"
    pq.write_table(table.set_column(i, "click", table["click"].cast(pa.string())), bad)
    with pytest.raises(DataError, match=r"column 'click' has type string, expected bool"):
        fit_adrl(bad, cfg=FAST, progress=False)


def test_empty_logs_are_refused(log_path: Path, tmp_path: Path) -> None:
    table = pq.read_table(log_path)
    empty = tmp_path / "empty.parquet"
    pq.write_table(table.slice(0, 0), empty)
    with pytest.raises(DataError, match="the log is empty"):
        fit_adrl(empty, cfg=FAST, progress=False)
    zero = tmp_path / "zero.parquet"
    zero.write_bytes(b"")
    with pytest.raises(DataError, match="not a readable parquet file"):
        fit_adrl(zero, cfg=FAST, progress=False)
    with pytest.raises(DataError, match="does not exist"):
        fit_adrl(tmp_path / "absent.parquet", cfg=FAST, progress=False)
    unshown = tmp_path / "unshown.parquet"
    i = table.schema.get_field_index("shown")
    pq.write_table(table.set_column(i, "shown", pa.array(np.zeros(len(table), dtype=bool))), unshown)
    with pytest.raises(DataError, match="shown is False everywhere"):
        fit_adrl(unshown, cfg=FAST, progress=False)


def test_log_of_another_scenario_is_refused(log_path: Path) -> None:
    with pytest.raises(FeatureMismatch, match="--scenario"):
        fit_adrl(log_path, Scenario(delays=(0, 1, 3)), FAST, progress=False)


# ---- metrics -----------------------------------------------------------------------------------------------------
def test_metrics_of_known_cases() -> None:
    rng = np.random.default_rng(0)
    p = rng.uniform(0.01, 0.3, 200_000)
    y = rng.random(p.size) < p
    m = head_metrics(y, p, slot=np.zeros(p.size, dtype=np.int64), hour=np.arange(p.size) % 24, slot_names=("feed",))
    assert m.calibration == pytest.approx(1.0, abs=0.02) and m.ece < 0.005 and m.normalized_entropy < 1.0
    assert set(m.calibration_by_slot) == {"feed"} and len(m.calibration_by_hour) == 24
    constant = head_metrics(y, np.full(p.size, y.mean()))
    assert constant.normalized_entropy == pytest.approx(1.0) and constant.auc == pytest.approx(0.5)
    assert expected_calibration_error(y, np.clip(p * 2, 0, 1)) > 0.05
    assert np.isnan(auc(np.zeros(5), np.linspace(0, 1, 5)))
    assert head_metrics(y, p).as_dict()["calibration_by_slot"] == {}


# ---- CLI ---------------------------------------------------------------------------------------------------------
def test_cli_fits_and_prints_the_metrics_table(log_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli-model"
    args = ["fit", "--logs", str(log_path), "--out", str(out), "--epochs", "1", "--no-baselines"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "AUC" in result.output and "ECE" in result.output and "behavior" in result.output
    assert (out / "model.json").is_file() and (out / "weights.safetensors").is_file()
    assert LearnedResponse.load(out).model.enabled_heads == {"click": True, "conversion": True, "leave": True}
    assert BehaviorModel.load(out).spec.unused == ()
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "at-impression"), "--inputs", "impression"])
    assert result.exit_code == 0, result.output
    layout = FeatureLayout.from_scenario(Scenario())
    assert BehaviorModel.load(tmp_path / "at-impression").spec.unused == decision_time_inputs(layout)
    result = CliRunner().invoke(app, ["fit", "--format", "obd", "--logs", str(tmp_path), "--inputs", "impression"])
    assert result.exit_code != 0 and "--inputs applies to adrl logs only" in result.output


def test_cli_errors_exit_non_zero_with_the_message(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["fit", "--logs", str(tmp_path / "absent.parquet"), "--out", str(tmp_path / "m")])
    assert result.exit_code == 2
    assert "does not exist" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["fit", "--logs", str(tmp_path), "--out", str(tmp_path / "m"), "--hidden", "6x"])
    assert result.exit_code == 2 and "--hidden must be comma-separated" in result.output
    result = runner.invoke(app, ["fit", "--logs", str(tmp_path), "--out", str(tmp_path / "m"), "--clusters", "4"])
    assert result.exit_code == 2 and "adrl logs carry the user segment" in result.output
