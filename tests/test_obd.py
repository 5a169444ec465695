"""Open Bandit Dataset: the reader checks files and values; the click head fits on OBD-format data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from adrl.behavior import BehaviorModel, FitConfig, FitReport, LearnedResponse, fit_obd, predict_obd
from adrl.cli import app
from adrl.errors import ArtifactError, DataError
from adrl.obd import ObdData, read_obd, write_synthetic_obd

OBD_FAST = FitConfig(
    epochs=30,
    batch_size=128,
    learning_rate=1e-2,
    weight_decay=1e-3,
    validation_fraction=0.3,
    forest_trees=10,
    clusters=4,
    seed=0,
)


@pytest.fixture(scope="module")
def fixture_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_obd(tmp_path_factory.mktemp("obd"), n_rounds=4000, n_items=8, seed=3)


@pytest.fixture(scope="module")
def obd_report(fixture_root: Path) -> FitReport:
    return fit_obd(fixture_root, OBD_FAST, progress=False)


def csv_of(root: Path) -> Path:
    return root / "random" / "all" / "all.csv"


def rewrite(root: Path, tmp_path: Path, edit: object) -> Path:
    """A copy of the fixture campaign folder with ``edit(frame)`` applied to its impressions CSV."""
    folder = tmp_path / "random" / "all"
    folder.mkdir(parents=True)
    (folder / "item_context.csv").write_bytes((csv_of(root).parent / "item_context.csv").read_bytes())
    frame = pd.read_csv(csv_of(root), index_col=0)
    frame = edit(frame)  # type: ignore[operator]
    frame.to_csv(folder / "all.csv")
    return folder


# ---- reader ------------------------------------------------------------------------------------------------------
def test_reader_returns_time_ordered_checked_arrays(fixture_root: Path) -> None:
    data = read_obd(fixture_root, behavior_policy="random", campaign="all")
    assert isinstance(data, ObdData) and data.n_rounds == 4000 and data.n_items == 8
    assert data.positions == (1, 2, 3) and set(np.unique(data.position)) == {0, 1, 2}
    assert data.frame["timestamp"].is_monotonic_increasing
    assert data.action.dtype == np.int64 and data.action.max() < data.n_items
    np.testing.assert_allclose(data.pscore, 1 / 8)
    assert set(np.unique(data.reward)) == {0, 1}
    assert data.affinity().shape == (4000, 8) and data.user_features().shape == (4000, 4)
    assert data.context().shape[0] == 4000 and data.action_context().shape[0] == 8
    assert ((data.hour >= 0) & (data.hour < 24)).all()
    early, late = data.time_split(0.25)
    assert (early.n_rounds, late.n_rounds) == (3000, 1000)
    assert early.frame["timestamp"].max() <= late.frame["timestamp"].min()
    # a campaign folder or the CSV itself work too
    assert read_obd(csv_of(fixture_root).parent).n_rounds == 4000
    assert read_obd(csv_of(fixture_root)).n_rounds == 4000


def test_reader_names_missing_files(tmp_path: Path, fixture_root: Path) -> None:
    with pytest.raises(DataError, match="no OBD data"):
        read_obd(tmp_path)
    with pytest.raises(DataError, match="campaign must be one of"):
        read_obd(fixture_root, campaign="kids")
    folder = tmp_path / "random" / "all"
    folder.mkdir(parents=True)
    (folder / "all.csv").write_bytes(csv_of(fixture_root).read_bytes())
    with pytest.raises(DataError, match=r"item_context\.csv does not exist"):
        read_obd(tmp_path)
    (folder / "item_context.csv").write_text("")
    with pytest.raises(DataError, match=r"item_context\.csv is empty"):
        read_obd(tmp_path)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda f: f.drop(columns=["click"]), r"missing required column\(s\) \['click'\]"),
        (lambda f: f.drop(columns=["user-item_affinity_7"]), "missing affinity column"),
        (lambda f: f.assign(item_id=f["item_id"] + 5), r"column 'item_id' must be in 0..7, got 8"),
        (lambda f: f.assign(click=f["click"] * 2), r"column 'click' must be in 0..1, got 2"),
        (lambda f: f.assign(click=f["click"].astype(str) + "x"), r"column 'click' has dtype \w+, expected integers"),
        (lambda f: f.assign(propensity_score=0.0), r"propensity_score must be in \(0, 1\], got 0 at row 0"),
        (lambda f: f.assign(timestamp="yesterday"), "'timestamp' is not ISO-8601"),
        (lambda f: f.iloc[:0], "has a header but no rows"),
    ],
)
def test_reader_refuses_bad_values(fixture_root: Path, tmp_path: Path, edit: object, message: str) -> None:
    folder = rewrite(fixture_root, tmp_path, edit)
    with pytest.raises(DataError, match=message):
        read_obd(folder)


# ---- fitting -----------------------------------------------------------------------------------------------------
def test_click_head_fits_the_fixture_and_beats_the_base_rate(obd_report: FitReport) -> None:
    assert set(obd_report.metrics) == {"click"}  # conversion and leave are disabled
    click = obd_report.metrics["click"]
    assert set(click) == {"model", "logistic_regression", "random_forest"}  # no true probabilities in OBD
    assert click["model"].auc > 0.7 and click["model"].normalized_entropy < 0.95
    assert click["model"].auc > click["logistic_regression"].auc - 0.03
    assert obd_report.n_validation == 1200  # the latest 30% of 4000 rows
    assert obd_report.model.enabled_heads == {"click": True, "conversion": False, "leave": False}


def test_obd_artifact_round_trips_and_says_which_heads_are_off(
    obd_report: FitReport, fixture_root: Path, tmp_path: Path
) -> None:
    out = obd_report.model.save(tmp_path / "obd-model")
    manifest = json.loads((out / "model.json").read_text())
    assert manifest["format"] == "obd" and manifest["heads"] == {"click": True, "conversion": False, "leave": False}
    assert manifest["layout_hash"] is None and manifest["extra"]["obd"]["clusters"] == 4
    data = read_obd(fixture_root)
    loaded = BehaviorModel.load(out)
    np.testing.assert_array_equal(predict_obd(obd_report.model, data), predict_obd(loaded, data))
    with pytest.raises(ArtifactError, match="cannot drive the adrl simulator"):
        LearnedResponse.load(out)


def test_cli_fits_obd_format(fixture_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "m"
    args = ["fit", "--format", "obd", "--logs", str(fixture_root), "--out", str(out), "--epochs", "2"]
    result = CliRunner().invoke(app, [*args, "--clusters", "3", "--no-baselines"])
    assert result.exit_code == 0, result.output
    assert "AUC" in result.output and (out / "weights.safetensors").is_file()
    bad = CliRunner().invoke(app, ["fit", "--format", "obd", "--logs", str(tmp_path / "none"), "--out", str(out)])
    assert bad.exit_code == 2 and "no OBD data" in bad.output


# ---- the real sample (skips when ../shared/data/obd is absent) -------------------------------------------------
def test_reads_the_real_obd_sample(obd_dir: Path) -> None:
    data = read_obd(obd_dir, behavior_policy="random", campaign="all")
    assert data.n_rounds == 10_000 and data.n_items == 80 and data.positions == (1, 2, 3)
    np.testing.assert_allclose(data.pscore, 1 / 80)
    assert read_obd(obd_dir, behavior_policy="bts", campaign="men").n_items == 34


def test_fits_the_real_obd_sample_on_a_time_ordered_split(obd_dir: Path) -> None:
    cfg = FitConfig(epochs=3, batch_size=128, learning_rate=1e-2, weight_decay=1e-3, validation_fraction=0.3, seed=0)
    report = fit_obd(obd_dir, cfg, progress=False)
    click = report.metrics["click"]
    assert report.n_validation == 3000
    assert np.isfinite(click["model"].log_loss) and np.isfinite(click["logistic_regression"].log_loss)
    assert 0.0 <= click["model"].auc <= 1.0
