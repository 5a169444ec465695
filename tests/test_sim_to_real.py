"""Sim-to-real: count features are capped at the logged range, the caps persist, the fidelity diagnostic runs."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from adrl.agents.baselines import RandomPolicy
from adrl.behavior import BehaviorModel, FitConfig, FitReport, LearnedResponse, fit_adrl
from adrl.behavior.inputs import AdrlEncoder, count_caps
from adrl.errors import ArtifactError
from adrl.features import FeatureLayout
from adrl.fidelity import QUANTITIES, rollout_fidelity
from adrl.logs import feature_columns, read_logs
from adrl.scenario import Scenario
from adrl.simulate import simulate

SMALL = FitConfig(epochs=1, batch_size=512, read_rows=4096, shuffle_rows=16_384, baselines=False, seed=0)


@pytest.fixture(scope="module")
def log_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("s2r") / "logs.parquet"
    simulate(Scenario(), n_users=1500, out=out, seed=5, progress=False)
    return out


@pytest.fixture(scope="module")
def report(log_path: Path) -> FitReport:
    return fit_adrl(log_path, Scenario(), SMALL, progress=False)


@pytest.fixture(scope="module")
def artifact(report: FitReport, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return report.model.save(tmp_path_factory.mktemp("s2r-model") / "behavior")


def _layout() -> FeatureLayout:
    return FeatureLayout.from_scenario(Scenario())


def _category_of(sc: Scenario) -> np.ndarray:
    return np.array([sc.categories.index(c.category) for c in sc.creatives])


def test_count_caps_are_exact_quantiles_of_the_rows() -> None:
    sc = Scenario()
    layout = _layout()
    obs = np.zeros((1000, layout.obs_dim), dtype=np.float32)
    obs[:, layout.index("clicks_today")] = np.repeat([0, 1, 2, 7], [900, 80, 19, 1])
    obs[:, layout.index("creative_count_games_0")] = np.repeat([0, 9], [990, 10])
    action = np.zeros((1000, 3), dtype=np.int64)
    action[:, 2] = np.repeat([4, 0], [995, 5])  # games_0 (seen 9 times) for 5 rows: times_seen 9 is pooled
    rows = [(obs[:400], action[:400]), (obs[400:], action[400:])]  # streamed in chunks
    caps = count_caps(layout, _category_of(sc), rows, 0.999)
    assert caps["clicks_today"] == 2.0  # the single 7 is left out
    assert caps["creative_count_games_0"] == 9.0
    assert caps["times_seen"] == 9.0
    assert caps["conversions_today"] == 0.0  # never seen above 0: constant for the model
    assert count_caps(layout, _category_of(sc), rows, 1.0)["clicks_today"] == 7.0  # quantile 1: the largest value
    assert count_caps(layout, _category_of(sc), rows, 0.9)["clicks_today"] == 0.0
    assert set(caps) == {f.name for f in layout.obs if f.kind == "count"} | {"times_seen"}
    with pytest.raises(ValueError, match="quantile"):
        count_caps(layout, _category_of(sc), rows, 0.0)


def test_encoder_clips_count_inputs() -> None:
    sc = Scenario()
    layout = _layout()
    caps = {"clicks_today": 2.0, "creative_count_games_0": 3.0, "times_seen": 5.0}
    enc = AdrlEncoder(layout, _category_of(sc), caps)
    obs = np.zeros((3, layout.obs_dim), dtype=np.float32)
    obs[:, layout.index("clicks_today")] = [2, 9, 9]
    obs[:, layout.index("creative_count_games_0")] = [5, 12, 4]
    games_0 = [c.name for c in sc.creatives].index("games_0")
    _, dense = enc.encode(obs, np.array([[0, 0, games_0]] * 3))
    np.testing.assert_array_equal(dense[0], dense[1])  # clicks_today, the creative's count and times_seen capped
    assert dense[1, enc.spec.dense_index("times_seen")] == 5.0  # its own (pooled) cap, not the creative's
    assert dense[2, enc.spec.dense_index("times_seen")] == 4.0
    assert dense[2, enc.spec.dense_index("creative_count_games_0")] == 3.0
    with pytest.raises(ArtifactError, match="count features"):
        AdrlEncoder(layout, _category_of(sc), {"hour_sin": 0.5})
    with pytest.raises(ArtifactError, match=">= 0"):
        AdrlEncoder(layout, _category_of(sc), {"clicks_today": -1.0})


def test_fit_stores_caps_within_the_logged_range(report: FitReport, log_path: Path) -> None:
    model = report.model
    assert model.encoder is not None and model.encoder.caps
    layout = _layout()
    df = read_logs(log_path)
    logged_max = df[df["shown"]][feature_columns(layout)].max()
    for name, cap in model.encoder.caps.items():
        assert 0 <= cap <= (logged_max[f"x_{name}"] if name != "times_seen" else Scenario().horizon)
    uncapped = fit_adrl(log_path, Scenario(), FitConfig(**{**vars(SMALL), "input_cap_quantile": None}), progress=False)
    assert uncapped.model.encoder is not None and uncapped.model.encoder.caps == {}


def test_predictions_do_not_change_past_the_caps(report: FitReport) -> None:
    model = report.model
    assert model.encoder is not None
    layout = _layout()
    caps = model.encoder.caps
    rng = np.random.default_rng(0)
    obs = np.zeros((64, layout.obs_dim), dtype=np.float32)
    obs[:, 0] = rng.integers(0, 4, 64)
    obs[:, layout.index("hours_since_last_ad")] = 1
    for name in ("clicks_today", "conversions_today", "impressions_24h"):
        obs[:, layout.index(name)] = caps[name]
    action = np.stack([rng.integers(0, k, 64) for k in Scenario().action_nvec], axis=1)
    at_cap = model.predict(obs, action)
    beyond = obs.copy()
    for name in ("clicks_today", "conversions_today", "impressions_24h"):
        beyond[:, layout.index(name)] = caps[name] + 5
    for a, b in zip(at_cap, model.predict(beyond, action), strict=True):
        np.testing.assert_array_equal(a, b)
    # the torch path encodes the same capped inputs
    cat, dense = model.encoder.encode(beyond, action)
    np.testing.assert_allclose(model.predict_inputs(cat, dense)[0], at_cap[0], rtol=1e-4, atol=1e-6)


def test_caps_round_trip_and_version_1_artifacts_still_load(artifact: Path, report: FitReport, tmp_path: Path) -> None:
    manifest = json.loads((artifact / "model.json").read_text())
    assert manifest["version"] == 2
    loaded = BehaviorModel.load(artifact)
    assert loaded.encoder is not None and report.model.encoder is not None
    assert loaded.encoder.caps == report.model.encoder.caps
    old = Path(shutil.copytree(artifact, tmp_path / "v1"))
    (old / "model.json").write_text(json.dumps({**manifest, "version": 1, "input_caps": None}))
    v1 = BehaviorModel.load(old)  # a version-1 model had no caps
    assert v1.encoder is not None and v1.encoder.caps == {}
    bad = Path(shutil.copytree(artifact, tmp_path / "bad"))
    (bad / "model.json").write_text(json.dumps({**manifest, "input_caps": {"segment": 1}}))
    with pytest.raises(ArtifactError, match="count features"):
        BehaviorModel.load(bad)
    (bad / "model.json").write_text(json.dumps({**manifest, "input_caps": None}))
    with pytest.raises(ArtifactError, match="input_caps"):
        BehaviorModel.load(bad)


def test_fidelity_diagnostic_compares_learned_and_true_probabilities(artifact: Path) -> None:
    sc = Scenario()
    response = LearnedResponse.load(artifact, sc)
    report = rollout_fidelity(RandomPolicy(sc, seed=0), response, n_envs=256, n_steps=30, seed=1)
    assert report.n_impressions > 0 and report.n_episodes > 0
    for q in QUANTITIES:
        d = report.overall[q]
        assert np.isfinite(d["predicted"]) and np.isfinite(d["true"]) and d["mae"] >= 0
    # a random policy stays near the logged states: the model's mean pCTR is close to the truth
    assert report.overall["p_click"]["ratio"] == pytest.approx(1.0, abs=0.35)
    clicks = report.by_feature["clicks_today"]
    assert sum(b["n"] for b in clicks.values()) == report.n_impressions
    assert {"slot", "delay", "fatigue", "times_seen"} <= set(report.by_feature)
    assert "clicks_today" in report.table()
    json.dumps(report.as_dict())  # plain JSON


def test_fidelity_on_ground_truth_rollouts_measures_the_model_on_the_states_the_policy_really_reaches(
    artifact: Path, log_path: Path, tmp_path: Path
) -> None:
    sc = Scenario()
    other = fit_adrl(log_path, sc, replace(SMALL, seed=1), progress=False).model.save(tmp_path / "other")
    # a fresh policy for each run: the random policy's own draws continue from one run to the next
    a, b = (rollout_fidelity(RandomPolicy(sc, seed=0), LearnedResponse.load(m, sc), n_envs=256, n_steps=30, seed=1,
                             rollouts="ground-truth") for m in (artifact, other))  # fmt: skip
    # the users live in the ground truth: their states, the truth and the return do not depend on the model
    assert a.rollouts == "ground-truth" and a.as_dict()["rollouts"] == "ground-truth"
    assert a.n_impressions == b.n_impressions and a.mean_return_learned == b.mean_return_learned
    for q in QUANTITIES:
        assert a.overall[q]["true"] == b.overall[q]["true"]
    assert a.overall["p_click"]["predicted"] != b.overall["p_click"]["predicted"]
    assert a.overall["p_click"]["ratio"] == pytest.approx(1.0, abs=0.35)  # random stays on the logged support
    policy = RandomPolicy(sc, seed=0)
    policy = RandomPolicy(sc, seed=0)
    learned = rollout_fidelity(policy, LearnedResponse.load(artifact, sc), n_envs=256, n_steps=30, seed=1)
    assert learned.rollouts == "learned" and learned.mean_return_learned != a.mean_return_learned
    with pytest.raises(ValueError, match="rollouts must be one of"):
        rollout_fidelity(policy, LearnedResponse.load(artifact, sc), rollouts="sim")  # type: ignore[arg-type]
