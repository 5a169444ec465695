"""adrl.load_policy: manifest checks, request encoding with clear errors, exploration with exact propensities."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import adrl
from adrl.agents.baselines import EpsilonGreedyPolicy, GreedyPolicy, RandomPolicy
from adrl.errors import ArtifactError, ConfigError, FeatureMismatch
from adrl.features import FeatureLayout
from adrl.policy import Exploration, load_policy
from adrl.requests import InvalidRequest
from adrl.scenario import Scenario

USER = {"segment": "commuter", "signals": {"travel": 0.7}}
CONTEXT = {"hour": 8}
HISTORY = {"impressions_1h": 1, "impressions_6h": 2, "impressions_24h": 2, "hours_since_last_ad": 0.5,
           "slot_counts": {"feed": 2}, "creative_counts": {"travel_0": 2},
           "slot_exposure": {"feed": 1.2}, "slot_repeat_exposure": {"feed": 0.7}}  # fmt: skip


@pytest.fixture(scope="module")
def greedy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("policies") / "greedy"
    GreedyPolicy(Scenario()).save(path)
    return path


def test_decide_returns_named_action_propensities_and_version(greedy_dir):
    policy = adrl.load_policy(greedy_dir)
    d = policy.decide(user=USER, context=CONTEXT, history=HISTORY)
    sc = Scenario()
    assert d.action.slot == sc.slots[d.action.slot_index].name
    assert d.action.creative == sc.creatives[d.action.creative_index].name
    assert d.action.delay_hours == sc.delays[d.action.delay_index]
    assert d.propensity == 1.0 and d.propensity_slot == 1.0  # deterministic policy, no exploration
    assert d.policy_version.startswith(policy.policy_id) and policy.kind == "greedy"


def test_encoding_matches_the_simulator_layout(greedy_dir):
    policy = load_policy(greedy_dir)
    layout = policy.layout
    x = policy.encode(USER, CONTEXT, HISTORY)
    assert x.shape == (layout.obs_dim,) and x.dtype == np.float32
    assert x[layout.index("segment")] == 0 and x[layout.index("signal_travel")] == pytest.approx(0.7)
    assert x[layout.index("hour")] == 8 and x[layout.index("day_progress")] == pytest.approx(8 / 24)
    assert x[layout.index("hours_since_last_ad")] == 0.5 and x[layout.index("slot_count_feed")] == 2
    assert x[layout.index("creative_count_travel_0")] == 2
    assert x[layout.index("exposure_feed")] == pytest.approx(1.2)
    assert x[layout.index("repeat_exposure_feed")] == pytest.approx(0.7) and x[layout.index("exposure_banner")] == 0
    assert policy.describe()["exposure_half_life_hours"] == Scenario().dynamics.fatigue_half_life
    empty = policy.encode({"segment": 1}, {"hour": 0})
    assert empty[layout.index("hours_since_last_ad")] == 24  # no ad today, as the simulator encodes it
    assert (empty >= layout.obs_low).all() and (empty <= layout.obs_high).all()
    # counts above the layout's cap saturate as in the simulator
    capped = policy.encode({"segment": 1}, {"hour": 0}, {"impressions_1h": 5, "impressions_6h": 5,
                                                        "impressions_24h": 5})  # fmt: skip
    assert capped[layout.index("impressions_1h")] == 1


@pytest.mark.parametrize(
    ("user", "context", "history", "needle"),
    [
        ({"segment": "astronaut"}, CONTEXT, None, "unknown segment"),
        ({"segment": 9}, CONTEXT, None, "segment index out of range"),
        ({"segment": "office", "signals": {"cars": 1.0}}, CONTEXT, None, "unknown category"),
        ({"segment": "office", "signals": {"travel": 9.0}}, CONTEXT, None, "less than or equal to 4"),
        ({"segment": "office", "signals": {"travel": float("nan")}}, CONTEXT, None, "finite number"),
        ({"segment": "office"}, {"hour": 24}, None, "less than or equal to 23"),
        ({"segment": "office"}, {"hour": "8"}, None, "valid integer"),
        ({"segment": "office"}, {}, None, "context.hour: Field required"),
        ({"segment": "office", "age": 3}, CONTEXT, None, "Extra inputs are not permitted"),
        ({"segment": "office"}, CONTEXT, {"clicks_today": -1}, "greater than or equal to 0"),
        ({"segment": "office"}, CONTEXT, {"slot_counts": {"sky": 1}}, "history.slot_counts.sky"),
        ({"segment": "office"}, CONTEXT, {"slot_exposure": {"sky": 1.0}}, "history.slot_exposure.sky"),
        ({"segment": "office"}, CONTEXT, {"slot_repeat_exposure": {"feed": -0.5}}, "greater than or equal to 0"),
        ({"segment": "office"}, CONTEXT, {"slot_exposure": {"feed": float("inf")}}, "finite number"),
        ({"segment": "office"}, CONTEXT, {"impressions_1h": 2, "impressions_6h": 1}, "shorter window"),
        ({"segment": "office"}, CONTEXT, {"clicks_today": 0, "conversions_today": 1}, "conversion follows a click"),
    ],
)
def test_bad_requests_name_the_field_and_value(greedy_dir, user, context, history, needle):
    policy = load_policy(greedy_dir)
    with pytest.raises(InvalidRequest, match=needle.replace("(", r"\(")) as e:
        policy.decide(user=user, context=context, history=history)
    assert e.value.errors and all("loc" in err for err in e.value.errors)


def test_missing_user_is_an_error_naming_the_alternative(greedy_dir):
    with pytest.raises(InvalidRequest, match="user and context are required"):
        load_policy(greedy_dir).decide(context=CONTEXT)


def test_raw_observation_is_checked_against_the_layout(greedy_dir):
    policy = load_policy(greedy_dir)
    x = policy.encode(USER, CONTEXT, HISTORY)
    assert policy.decide(obs=x).action == policy.decide(user=USER, context=CONTEXT, history=HISTORY).action
    with pytest.raises(InvalidRequest, match=f"expected {policy.layout.obs_dim} values"):
        policy.decide(obs=x[:-1])
    bad = x.copy()
    bad[policy.layout.index("hour")] = 7.5
    with pytest.raises(InvalidRequest, match="'hour' must be an integer"):
        policy.decide(obs=bad)
    bad[policy.layout.index("hour")] = np.inf
    with pytest.raises(InvalidRequest, match="'hour'"):
        policy.decide(obs=bad)


@pytest.mark.parametrize("spec", ["epsilon:0.3", "softmax:0.05"])
def test_propensity_is_the_exact_probability_of_the_served_action(greedy_dir, spec):
    policy = load_policy(greedy_dir, exploration=spec, seed=0)
    x = policy.encode(USER, CONTEXT, HISTORY)
    n = 4000
    obs = np.repeat(x[None, :], n, axis=0)
    arrays = policy.decide_arrays(obs)
    q = policy.distribution(obs[:1])[0]
    flat = (arrays.action[:, 0] * policy.nvec[1] + arrays.action[:, 1]) * policy.nvec[2] + arrays.action[:, 2]
    np.testing.assert_allclose(arrays.propensity, q[flat])
    cube = q.reshape(policy.nvec)
    np.testing.assert_allclose(arrays.components[:, 1], cube.sum(axis=(0, 2))[arrays.action[:, 1]])
    # the empirical frequency of the greedy action matches its propensity
    top = int(q.argmax())
    freq = (flat == top).mean()
    assert abs(freq - q[top]) < 4 * np.sqrt(q[top] * (1 - q[top]) / n)
    assert q.min() > 0  # exploration gives every action support, so off-policy estimators can use the log


def test_epsilon_mixture_formula_and_softmax_temperature():
    probs = np.array([[1.0, 0.0, 0.0, 0.0]])
    np.testing.assert_allclose(Exploration.parse("epsilon:0.2").apply(probs), [[0.85, 0.05, 0.05, 0.05]])
    soft = Exploration.parse("softmax:0.5").apply(probs)
    e = np.exp(2.0)
    np.testing.assert_allclose(soft, [[e / (e + 3), 1 / (e + 3), 1 / (e + 3), 1 / (e + 3)]])
    assert str(Exploration.parse("none")) == "none"
    for bad in ("epsilon:2", "softmax:0", "boltzmann:1", "epsilon:x"):
        with pytest.raises(ConfigError):
            Exploration.parse(bad)


def test_same_seed_same_actions(greedy_dir):
    a = load_policy(greedy_dir, exploration="epsilon:0.5", seed=7)
    b = load_policy(greedy_dir, exploration="epsilon:0.5", seed=7)
    reqs = [{"user": USER, "context": {"hour": h}} for h in range(24)]
    assert [d.action for d in a.decide_batch(reqs)] == [d.action for d in b.decide_batch(reqs)]


def test_batch_errors_name_the_index(greedy_dir):
    policy = load_policy(greedy_dir)
    with pytest.raises(InvalidRequest, match=r"^1\.user\.segment"):
        policy.decide_batch([{"user": USER, "context": CONTEXT}, {"user": {"segment": "x"}, "context": CONTEXT}])


def test_stochastic_baselines_load_and_serve(tmp_path):
    sc = Scenario()
    EpsilonGreedyPolicy(GreedyPolicy(sc), 0.2).save(tmp_path / "eg")
    RandomPolicy(sc, seed=1).save(tmp_path / "random")
    d = load_policy(tmp_path / "eg").decide(user=USER, context=CONTEXT)
    assert 0.2**3 / sc.n_actions * (1 - 1e-9) <= d.propensity <= 1  # each component explores alone: ε³/A at least
    r = load_policy(tmp_path / "random").decide(user=USER, context=CONTEXT)
    assert r.propensity == pytest.approx(1 / sc.n_actions) and r.propensity_slot == pytest.approx(1 / sc.n_slots)


def test_loading_refuses_a_mismatched_layout_or_broken_manifest(greedy_dir, tmp_path):
    other = FeatureLayout.from_scenario(Scenario(categories=("a", "b"), creatives=(
        {"name": "x", "category": "a"},), segments=({"name": "s", "share": 1.0},)))  # fmt: skip
    with pytest.raises(FeatureMismatch, match="does not match"):
        load_policy(greedy_dir, expect_layout=other)
    broken = tmp_path / "broken"
    broken.mkdir()
    manifest = json.loads((greedy_dir / "manifest.json").read_text())
    manifest["layout_hash"] = "0000000000000000"
    (broken / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(FeatureMismatch):
        load_policy(broken)
    manifest = json.loads((greedy_dir / "manifest.json").read_text())
    manifest["obs_dim"] = 3
    (broken / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(FeatureMismatch, match="obs_dim 3"):
        load_policy(broken)
    with pytest.raises(ArtifactError, match="does not exist"):
        load_policy(tmp_path / "nowhere")


def test_batch_encoding_matches_row_by_row_and_names_the_first_bad_row(greedy_dir):
    policy = load_policy(greedy_dir)
    enc = policy.encoder
    x = policy.encode(USER, CONTEXT, HISTORY)
    reqs = [
        {"user": USER, "context": CONTEXT, "history": HISTORY},
        {"user": {"segment": 1}, "context": {"hour": 0, "day_progress": 0.25}},
        {"obs": x.tolist()},
        {"user": {"segment": "office", "signals": {"travel": -1.5}}, "context": {"hour": 23},
         "history": {"impressions_1h": 5, "impressions_6h": 5, "impressions_24h": 9, "hours_since_last_ad": None,
                     "clicks_today": 2, "conversions_today": 1, "creative_counts": {"travel_0": 40}}},
    ]  # fmt: skip
    parsed = [policy.parse(r) for r in reqs]
    np.testing.assert_array_equal(enc.encode_many(parsed), np.stack([enc.encode(r) for r in parsed]))
    bad = [*parsed[:2], policy.parse({"user": USER, "context": CONTEXT, "history": {"conversions_today": 1}}),
           policy.parse({"user": USER, "context": CONTEXT, "history": {"slot_counts": {"sky": 1}}})]  # fmt: skip
    with pytest.raises(InvalidRequest, match=r"^2\.history\.conversions_today"):
        enc.encode_many(bad)
    with pytest.raises(InvalidRequest, match=r"^1\.history\.slot_counts\.sky"):
        enc.encode_many([bad[0], bad[3], bad[2]])
