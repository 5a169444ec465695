"""Experiments in process: assignment and split, the experiment YAML, bad input, the driver's requests, the readout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from adrl.agents.baselines import GreedyPolicy, PacingPolicy
from adrl.cli import app
from adrl.drive import RequestBuilder, ServiceEndpoint, check_loopback, drive, population
from adrl.errors import ConfigError, DataError, FeatureMismatch
from adrl.experiment import USER_COLUMNS, ReadoutOptions, cuped_fit, msprt, ratio, readout, report, srm
from adrl.features import FeatureLayout
from adrl.logs import read_logs
from adrl.policy import load_policy
from adrl.scenario import Scenario
from adrl.serving import PolicyService, ServeConfig
from adrl.serving.experiment import (
    BUCKETS,
    Arm,
    ArmSpec,
    ArmTag,
    Experiment,
    ExperimentSpec,
    bounds_of,
    bucket_of,
    parse_split,
    read_experiment,
)

KEY = "experiment-test-key-0123456789"


@pytest.fixture(scope="module")
def arms(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("arms")
    GreedyPolicy(Scenario()).save(root / "greedy")
    PacingPolicy(Scenario(), 3).save(root / "pacing")
    GreedyPolicy(Scenario(delays=(0, 1, 3))).save(root / "other-layout")
    return {"greedy": root / "greedy", "pacing": root / "pacing", "other": root / "other-layout"}


def two_arms(arms: dict[str, Path], split: tuple[float, ...] = (50.0, 50.0)) -> ExperimentSpec:
    return ExperimentSpec("t", (ArmSpec("A", arms["greedy"], "epsilon:0.1"), ArmSpec("B", arms["pacing"])), split)


def experiment_of(arms: dict[str, Path], split: tuple[float, ...], salt: bytes) -> Experiment:
    p = load_policy(arms["greedy"])
    return Experiment(
        "h", [Arm(ArmSpec(n, arms["greedy"]), p, ArmTag(n, "g", "g")) for n in "ABCD"[: len(split)]], split, salt
    )


# ---- assignment and split: the whole input space -------------------------------------------------------------
splits = st.lists(st.integers(0, BUCKETS), min_size=1, max_size=3).map(
    lambda cuts: [b - a for a, b in zip([0, *sorted(cuts)], [*sorted(cuts), BUCKETS], strict=True)]
)


@settings(max_examples=60, deadline=None)
@given(buckets=splits, salt=st.binary(min_size=8, max_size=64), users=st.lists(st.text(min_size=1), max_size=30))
def test_assignment_is_sticky_and_follows_the_split(arms, buckets, salt, users):
    split = tuple(b / 100 for b in buckets)
    assert parse_split(",".join(f"{p:g}" for p in split), len(split)) == split
    exp = experiment_of(arms, split, salt)
    got = exp.assign(users)
    assert np.array_equal(got, exp.assign(users))  # sticky (the cache agrees with a fresh hash)
    bounds = bounds_of(split)
    for u, k in zip(users, got.tolist(), strict=True):
        b = bucket_of(salt, u)
        assert 0 <= b < BUCKETS and bounds[k] > b and (k == 0 or bounds[k - 1] <= b)
        assert split[k] > 0  # an arm with no share gets nobody


@settings(max_examples=60, deadline=None)
@given(values=st.lists(st.floats(-50, 150, allow_nan=False), min_size=1, max_size=4))
def test_a_split_is_accepted_exactly_when_it_sums_to_100(values):
    ok = all(v >= 0 and abs(v * 100 - round(v * 100)) < 1e-6 for v in values)
    ok = ok and round(sum(values) * 100) == BUCKETS
    if ok:
        assert parse_split(values, len(values)) == tuple(values)
    else:
        with pytest.raises(ConfigError, match="split"):
            parse_split(values, len(values))


def test_split_shares_match_on_many_users_and_salts_differ(arms):
    users = [f"user-{i}" for i in range(40_000)]
    a = experiment_of(arms, (20.0, 80.0), b"salt-one-0123").assign(users)
    b = experiment_of(arms, (20.0, 80.0), b"salt-two-0123").assign(users)
    assert abs(np.mean(a == 0) - 0.2) < 0.01
    assert 0.6 < np.mean(a == b) < 0.72  # independent across experiments: 0.2² + 0.8² = 0.68


# ---- bad input ------------------------------------------------------------------------------------------------
def test_bad_splits_layouts_and_yaml_are_clear_errors(arms, tmp_path):
    with pytest.raises(ConfigError, match="sums to 110"):
        parse_split("60,50", 2)
    with pytest.raises(ConfigError, match="2 value"):
        parse_split("50,50", 3)
    with pytest.raises(FeatureMismatch, match="same features"):
        Experiment.load(
            ExperimentSpec("t", (ArmSpec("A", arms["greedy"]), ArmSpec("B", arms["other"])), (50.0, 50.0)),
            seed=0, log_key=None,
        )  # fmt: skip
    y = tmp_path / "exp.yaml"
    y.write_text(f"name: t\narms:\n  - {{name: A, policy: {arms['greedy']}}}\n  - {{name: A, policy: x}}\n")
    with pytest.raises(ConfigError, match="more than once"):
        read_experiment(y)
    y.write_text(f"arms:\n  - {{name: A, policy: {arms['greedy']}, weight: 3}}\n")
    with pytest.raises(ConfigError, match="unknown field"):
        read_experiment(y)
    y.write_text("arms:\n  - {name: A, policy: greedy}\n  - {name: B, policy: pacing}\nsplit: [30, 70]\n")
    spec = read_experiment(y)
    assert spec.split == (30.0, 70.0) and spec.arms[0].policy == tmp_path / "greedy"


def test_serve_refuses_a_bad_split_or_mixed_layouts_and_writes_nothing(arms, tmp_path, monkeypatch):
    monkeypatch.setenv("ADRL_LOG_KEY", KEY)
    for extra, message in (
        (["--policy", str(arms["pacing"]), "--split", "60,50"], "sum to 100"),
        (["--policy", str(arms["other"]), "--split", "50,50"], "same features"),
        (["--policy", str(arms["pacing"])], "need --split"),
    ):
        log = tmp_path / "log"
        done = CliRunner().invoke(app, ["serve", "--policy", str(arms["greedy"]), *extra, "--log-dir", str(log)])
        assert done.exit_code == 2 and message in " ".join(done.output.split()), done.output
        assert not log.exists()


def test_an_experiment_needs_a_user_and_swaps_refuse_bad_arms(arms):
    with PolicyService.from_config(ServeConfig(policy=arms["greedy"], experiment=two_arms(arms), seed=0)) as s:
        with pytest.raises(Exception, match=r"user\.id"):
            s.decide({"user": {"segment": "office"}, "context": {"hour": 3}})
        before = s.experiment
        with pytest.raises(FeatureMismatch):
            s.swap([ArmSpec("B", arms["other"])])
        with pytest.raises(ConfigError, match="needs a split"):
            s.swap([ArmSpec("C", arms["greedy"])])
        assert s.experiment is before  # a refused swap changes nothing
        d = s.decide({"episode_id": "ep-1", "obs": None, "user": {"segment": "office"}, "context": {"hour": 3}})
        assert d["arm"] in {"A", "B"} and d["policy_id"].split("-")[0] in {"greedy", "pacing"}


def test_report_refuses_logs_without_arms_and_unknown_arms(arms, tmp_path, monkeypatch):
    monkeypatch.setenv("ADRL_LOG_KEY", KEY)
    cfg = ServeConfig(policy=arms["greedy"], log_dir=tmp_path / "single", seed=0)
    with PolicyService.from_config(cfg) as s:
        drive(ServiceEndpoint(s), Scenario(), users=20, days=1, seed=0)
        s.drain()
    out = tmp_path / "r.json"
    done = CliRunner().invoke(app, ["experiment", "report", "--logs", str(tmp_path / "single"), "--out", str(out)])
    assert done.exit_code == 2 and "no 'arm' column" in done.output and not out.exists()

    cfg = ServeConfig(policy=arms["greedy"], log_dir=tmp_path / "ab", seed=0, experiment=two_arms(arms))
    with PolicyService.from_config(cfg) as s:
        drive(ServiceEndpoint(s), Scenario(), users=60, days=1, seed=0)
        s.drain()
    done = CliRunner().invoke(app, ["experiment", "report", "--logs", str(tmp_path / "ab"), "--control", "Z",
                                    "--no-ope", "--out", str(out)])  # fmt: skip
    assert done.exit_code == 2 and "unknown arm 'Z'" in done.output and not out.exists()
    done = CliRunner().invoke(app, ["experiment", "report", "--logs", str(tmp_path / "ab"), "--out", str(out)])
    assert done.exit_code == 0, done.output
    assert set(json.loads(out.read_text())["ope"]) == {"A_from_B", "B_from_A"}


def test_the_driver_only_talks_to_loopback():
    assert check_loopback("http://127.0.0.1:8000")[:2] == ("127.0.0.1", 8000)
    for url in ("http://10.0.0.1:8000", "https://127.0.0.1:8000", "http://example.com", "127.0.0.1:80"):
        with pytest.raises(ConfigError):
            check_loopback(url)


# ---- driver and readout ------------------------------------------------------------------------------------------
def test_driver_requests_encode_to_the_worlds_observations(arms):
    sc = Scenario()
    layout = FeatureLayout.from_scenario(sc)
    users = population(sc, 64, seed=3)
    users.epoch[:] = np.arange(64) % sc.horizon  # states from across the day
    users.clicks[:] = np.arange(64) % 3
    users.slot_counts[:, 0] = np.arange(64) % 4
    users.creative_counts[:, 1] = users.slot_counts[:, 0]
    obs = layout.encode(users)
    reqs = RequestBuilder(layout).build(obs, [f"u{i}" for i in range(64)], ["e"] * 64, [0] * 64)
    policy = load_policy(arms["greedy"])
    assert np.array_equal(policy.encoder.encode_many([policy.parse(r) for r in reqs]), obs)


def test_readout_logs_arms_and_reads_out_a_known_difference(arms, tmp_path, monkeypatch):
    monkeypatch.setenv("ADRL_LOG_KEY", KEY)
    cfg = ServeConfig(policy=arms["greedy"], log_dir=tmp_path / "log", seed=0, experiment=two_arms(arms))
    with PolicyService.from_config(cfg) as s:
        result = drive(ServiceEndpoint(s), Scenario(), users=400, days=2, seed=2)
        s.drain()
    df = read_logs(tmp_path / "log")
    assert len(df) == result.decisions and not df["defaulted"].any()
    # exact per arm: arm A's rows carry ε-greedy propensities (never below ε/A), arm B is deterministic pacing
    assert df.loc[df["arm"] == "B", "propensity"].eq(1.0).all()
    assert df.loc[df["arm"] == "A", "propensity"].min() >= 0.1 / Scenario().n_actions
    # the readout's per-arm return is the driver's own tally of the world's rewards
    out = report(tmp_path / "log", ope=False)
    arm_of = np.array(result.arm)
    for a in ("A", "B"):
        m = arm_of == a
        truth = result.reward[m].sum() / result.user_days[m].sum()
        assert out["arms"][a]["return_per_user_day"]["value"] == pytest.approx(truth, rel=1e-9)
        assert out["users"][a] == int(m.sum())
    assert out["versions"] == 1 and not out["srm"]["flag"]


def test_statistics_helpers_match_their_definitions():
    rng = np.random.default_rng(0)
    y, x = rng.normal(2, 1, 5000), rng.integers(1, 4, 5000).astype(float)
    r = ratio(y, x)
    boot = [ratio(y[i], x[i]).value for i in rng.integers(0, 5000, (300, 5000))]
    assert r.value == pytest.approx(y.sum() / x.sum()) and r.se == pytest.approx(np.std(boot), rel=0.15)
    assert srm([5000, 5000], [50, 50])["p_value"] == pytest.approx(1.0)
    assert srm([5000, 4600], [50, 50])["flag"] and not srm([5000, 4950], [50, 50])["flag"]
    assert msprt(0.0, 1.0, 1.0) == pytest.approx(np.sqrt(0.5)) and msprt(10.0, 1.0, 1.0) > 1e6
    users = read_like_rows(rng)
    with pytest.raises(DataError, match="unknown arm"):
        readout(users, arms=["A", "B"], options=ReadoutOptions(control="C"))


def read_like_rows(rng: np.random.Generator):
    import pandas as pd

    n = 200
    return pd.DataFrame({
        "user_id": np.arange(n) % 50, "episode_id": np.arange(n) % 100, "reward": rng.normal(size=n),
        "shown": True, "click": rng.random(n) < 0.1, "conversion": False, "leave": False,
        "arm": np.where(np.arange(n) % 50 < 25, "A", "B"),
    })  # fmt: skip


def test_experiment_yaml_serves_through_the_cli_config(arms, tmp_path):
    y = tmp_path / "exp.yaml"
    y.write_text(json.dumps({"name": "ramp", "arms": [{"name": "control", "policy": str(arms["greedy"])},
                                                      {"name": "new", "policy": str(arms["pacing"])}],
                             "split": [90, 10]}))  # fmt: skip
    spec = read_experiment(y)
    with PolicyService.from_config(ServeConfig(policy=arms["greedy"], experiment=spec, seed=0)) as s:
        got = [s.decide({"user": {"id": f"u{i}", "segment": "office"}, "context": {"hour": 9}})["arm"]
               for i in range(400)]  # fmt: skip
        assert 0.8 < got.count("control") / 400 < 0.97
        out = s.swap(split=[50, 50])
        assert out["version"] == 2 and [h["version"] for h in out["history"]] == [1, 2]


def test_a_swap_on_a_single_policy_server_is_a_conflict_not_a_bad_body(arms):
    from fastapi.testclient import TestClient

    from adrl.serving import create_app

    key = "k" * 32
    service = PolicyService.from_config(ServeConfig(policy=arms["greedy"]))
    with TestClient(create_app(service, api_key=key)) as client:
        r = client.post("/v1/admin/experiment", json={"split": [100]}, headers={"X-API-Key": key})
    assert r.status_code == 409 and "--policy A --policy B" in r.json()["detail"]


# ---- CUPED ------------------------------------------------------------------------------------------------------
def test_cuped_shrinks_the_se_by_sqrt_one_minus_r2_and_stays_unbiased():
    """y = x·β + noise per user, a known effect in arm B: the adjusted difference is centred on the effect, its se
    is the plain one times sqrt(1 − R²) and matches the spread over repeats."""
    rng = np.random.default_rng(3)
    beta, effect, n = np.array([1.0, -0.5, 0.25]), 0.3, 400
    r2_true = float(beta @ beta) / (float(beta @ beta) + 1.0)  # x ~ N(0, I), noise ~ N(0, 1)
    diffs, ses, plain, r2s = [], [], [], []
    for _ in range(300):
        x = {a: rng.standard_normal((n, 3)) for a in "AB"}
        y = {a: x[a] @ beta + rng.standard_normal(n) + (effect if a == "B" else 0.0) for a in "AB"}
        fit = cuped_fit(y, x)
        (ma, sa), (mb, sb) = fit.arms["A"], fit.arms["B"]
        diffs.append(mb - ma)
        ses.append(np.hypot(sa, sb))
        plain.append(np.hypot(y["A"].std(ddof=1), y["B"].std(ddof=1)) / np.sqrt(n))
        r2s.append(fit.r2)
    diffs_a = np.array(diffs)
    assert abs(diffs_a.mean() - effect) < 3 * diffs_a.std() / np.sqrt(len(diffs))  # unbiased
    assert np.mean(ses) == pytest.approx(diffs_a.std(ddof=1), rel=0.1)  # the se is the spread it claims
    assert np.mean(r2s) == pytest.approx(r2_true, abs=0.02)
    assert np.median(np.array(ses) / np.array(plain)) == pytest.approx(np.sqrt(1 - r2_true), rel=0.03)


def test_a_within_arm_theta_ignores_a_constant_treatment_effect():
    rng = np.random.default_rng(4)
    x = {a: rng.standard_normal((300, 2)) for a in "AB"}
    y = {a: x[a] @ np.array([0.8, 0.4]) + rng.standard_normal(300) for a in "AB"}
    base = cuped_fit(y, x)
    shifted = cuped_fit({"A": y["A"], "B": y["B"] + 5.0}, x)
    np.testing.assert_allclose(shifted.theta, base.theta, rtol=1e-12, atol=1e-12)
    assert shifted.r2 == pytest.approx(base.r2, rel=1e-12)
    assert shifted.arms["A"] == pytest.approx(base.arms["A"], rel=1e-12)
    assert shifted.arms["B"][0] == pytest.approx(base.arms["B"][0] + 5.0, rel=1e-12)
    assert shifted.arms["B"][1] == pytest.approx(base.arms["B"][1], rel=1e-9)
    # a θ pooled over arms would take the effect up: the arms' gap in x̄ then tilts it
    xs, ys = np.concatenate([x["A"], x["B"] + 1.0]), np.concatenate([y["A"], y["B"] + 5.0])
    pooled, *_ = np.linalg.lstsq(xs - xs.mean(axis=0), ys - ys.mean(), rcond=None)
    assert np.abs(pooled - base.theta).max() > 0.5


def test_readout_cuped_uses_pre_period_metrics_and_first_decision_fields():
    rng = np.random.default_rng(5)
    n_users, days = 200, 4
    seg = rng.integers(0, 3, n_users)
    signal = rng.standard_normal(n_users)
    skill = 0.5 * seg + signal  # what each user brings, in both periods

    def log(n_days: int, arm: bool, first_day: int) -> pd.DataFrame:
        u = np.repeat(np.arange(n_users), n_days)
        rows = {
            "user_id": u, "episode_id": u * 1000 + first_day + np.tile(np.arange(n_days), n_users),
            "reward": skill[u] + rng.standard_normal(u.size), "shown": True, "click": rng.random(u.size) < 0.2,
            "conversion": rng.random(u.size) < 0.05, "leave": False,
            "x_segment": seg[u].astype(np.float32), "x_signal_a": signal[u].astype(np.float32),
        }  # fmt: skip
        if arm:
            rows["arm"] = np.where(u % 2 == 0, "A", "B")
        return pd.DataFrame(rows)

    df, pre = log(days, True, 100), log(days, False, 0)
    pre = pre[pre["user_id"] >= 20]  # 20 users new to the experiment: mean fill and pre_absent
    out = readout(df, arms=["A", "B"], pre=pre[list(USER_COLUMNS)])
    cuped = out["lift"]["B"]["cuped"]
    assert cuped["columns"] == ["pre_reward", "pre_clicks", "pre_conversions", "pre_absent", "signal_a",
                                "segment_1", "segment_2"]  # fmt: skip
    assert cuped["n_covariates"] == 7  # impressions and leaves are constant here: left out
    main = cuped["return_per_user_day"]
    assert main["r2"] > 0.5 and main["width_ratio"] < 0.75
    with pytest.raises(DataError, match=r"pre-period log .* no decisions with a user id"):
        readout(df, arms=["A", "B"], pre=pre.assign(user_id=-1)[list(USER_COLUMNS)])
