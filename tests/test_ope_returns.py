"""Return-per-user-day estimators: known answers, interval coverage, the ship rule, and clear errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from adrl.agents.baselines import GreedyPolicy, RandomPolicy
from adrl.cli import app
from adrl.errors import ConfigError
from adrl.features import FeatureLayout
from adrl.ope import evaluate
from adrl.ope.data import read_adrl_logs
from adrl.ope.estimate import Estimate
from adrl.ope.model_based import (
    ModelBased,
    Simulators,
    logged_return,
    members_interval,
    rubin_dof,
    states_from_obs,
)
from adrl.ope.model_dr import MAGIC, FamilyData, ModelQV, ModelWDR
from adrl.ope.selection import select
from adrl.scenario import Scenario
from adrl.simulate import _chunks, simulate
from adrl.world import Response, UserBatch, World

runner = CliRunner()


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Scenario]:
    root = tmp_path_factory.mktemp("ope_returns")
    sc = Scenario()
    simulate(sc, n_users=400, out=root / "logs.parquet", logging_policy="random", seed=0, progress=False)
    return root / "logs.parquet", sc


class DeterministicResponse:
    """Outcomes that are certain and depend only on what the logs observe: a click when the user's signal for the
    creative's category is positive, no conversion, and leaving after an interstitial (slot 1) ad."""

    def __init__(self, world: World) -> None:
        self.world = world

    def probabilities(self, batch: UserBatch, action: np.ndarray) -> Response:
        cat = self.world.creative_category[action[:, 2]]
        p_click = (batch.signal[np.arange(len(batch)), cat] > 0).astype(np.float64)
        return Response(p_click=p_click, p_conversion=np.zeros(len(batch)), p_leave=(action[:, 1] == 1) * 1.0)


def fixed_policy(sc: Scenario) -> object:
    """Deterministic target: creative by hour, feed slot, interstitial every 7th hour (so some users leave)."""
    layout = FeatureLayout.from_scenario(sc)
    nvec = sc.action_nvec
    hour_col = layout.index("hour")

    def probs(obs: np.ndarray) -> np.ndarray:
        hour = np.rint(obs[:, hour_col]).astype(np.int64)
        flat = ((0 * nvec[1] + (hour % 7 == 6)) * nvec[2]) + hour % nvec[2]
        out = np.zeros((obs.shape[0], int(np.prod(nvec))))
        out[np.arange(obs.shape[0]), flat] = 1.0
        return out

    return probs


def test_model_based_is_exact_in_a_deterministic_world(logged: tuple[Path, Scenario]) -> None:
    logs, sc = logged
    world = World(sc)
    layout = FeatureLayout.from_scenario(sc)
    data = read_adrl_logs(logs, layout)
    probs = fixed_policy(sc)
    response = DeterministicResponse(world)
    # the truth: the logged users themselves (hidden state and all), re-drawn as simulate drew them
    (_, n, stream), = list(_chunks(400, 65_536, 0))  # fmt: skip
    batch = world.sample_users(n, np.random.default_rng(stream))
    total = np.zeros(n)
    active = np.arange(n)
    rng = np.random.default_rng(1)
    while active.size:
        p = probs(layout.encode(batch))  # type: ignore[operator]
        flat = p.argmax(axis=1)
        action = np.stack([flat // (sc.n_slots * sc.n_creatives), flat // sc.n_creatives % sc.n_slots,
                           flat % sc.n_creatives], axis=1)  # fmt: skip
        res = world.step(batch, action, rng, response=response)
        total[active] += res.reward
        going = ~(res.terminated | res.truncated)
        active, batch = active[going], batch.take(going)
    est = ModelBased().estimate(data, probs, Simulators(world, (response, response)), rng=np.random.default_rng(2))  # type: ignore[arg-type]
    assert est.value == pytest.approx(total.mean(), abs=1e-12)
    assert est.lower == pytest.approx(est.upper, abs=1e-9) or est.lower <= total.mean() <= est.upper


def test_logged_states_rebuild_the_logged_observations(logged: tuple[Path, Scenario]) -> None:
    logs, sc = logged
    layout = FeatureLayout.from_scenario(sc)
    data = read_adrl_logs(logs, layout)
    states = states_from_obs(data.obs, layout, World(sc))  # every row, days under way included
    np.testing.assert_allclose(layout.encode(states), data.obs, atol=1e-5)


def test_target_equal_to_logger_gives_the_logged_mean_return(logged: tuple[Path, Scenario]) -> None:
    logs, sc = logged
    data = read_adrl_logs(logs, FeatureLayout.from_scenario(sc))
    target = RandomPolicy(sc)
    res = evaluate(data, target.action_probabilities, ["pdis", "wis"], rng=np.random.default_rng(0), n_boot=50)
    truth = logged_return(data).value
    assert res.estimates["pdis"].value == pytest.approx(truth)
    assert res.estimates["wis"].value == pytest.approx(truth)
    zero = ModelQV(q_logged=np.zeros(data.n), v_target=np.zeros(data.n))
    tp = np.full(data.n, 1.0 / (sc.n_delays * sc.n_slots * sc.n_creatives))
    wdr = ModelWDR().estimate(FamilyData(data, tp, zero), rng=np.random.default_rng(0), n_boot=100)
    assert wdr.value == pytest.approx(truth) and wdr.lower <= truth <= wdr.upper
    # an exact model (Q̂ = V̂ = the logged return still to come) makes every j-step return the same
    ep = pd.DataFrame({"e": data.episode_id, "s": data.step, "r": data.reward})
    to_go = ep.sort_values(["e", "s"], ascending=[True, False]).groupby("e")["r"].cumsum().sort_index().to_numpy()
    exact = ModelQV(q_logged=to_go, v_target=to_go)
    magic = MAGIC().estimate(FamilyData(data, data.propensity, exact), rng=np.random.default_rng(0), n_boot=100)
    assert magic.value == pytest.approx(truth, rel=1e-9)


def test_members_interval_covers_on_a_synthetic_problem() -> None:
    rng = np.random.default_rng(0)
    truth, hits = 1.0, 0
    for _ in range(300):
        member_bias = rng.normal(0.0, 0.05, size=(4, 1))  # the model's own uncertainty
        user_value = rng.normal(0.0, 1.0, size=(1, 500))  # the sampling of users
        returns = truth + member_bias + user_value + rng.normal(0.0, 0.3, size=(4, 500))  # rollout noise
        _, lower, upper, kind = members_interval(returns, 0.05)
        hits += lower <= truth <= upper
        assert kind == "t-users+models"
    assert hits / 300 >= 0.9


def test_members_interval_covers_with_three_members_whose_spread_dominates() -> None:
    # the quickstart's three bootstrap members, the model's uncertainty far above the users' sampling: the fit on
    # the whole log is off by as much as one member is off from it, and the between-member variance comes from
    # three values, so a normal interval would cover about 81%
    rng = np.random.default_rng(1)
    truth, hits, normal_hits = 1.0, 0, 0
    for _ in range(1000):
        fit_error, member_spread = rng.normal(0.0, 0.1), rng.normal(0.0, 0.1, size=(3, 1))
        returns = truth + fit_error + member_spread + rng.normal(0.0, 0.5, size=(3, 2000))
        value, lower, upper, kind = members_interval(returns, 0.05)
        hits += lower <= truth <= upper
        se = math.sqrt(returns.mean(axis=0).var(ddof=1) / 2000 + (4 / 3) * returns.mean(axis=1).var(ddof=1))
        normal_hits += abs(value - truth) <= 1.96 * se
        assert kind == "t-users+models" and upper - value > 0
    assert 0.93 <= hits / 1000 <= 0.985
    assert normal_hits / 1000 < 0.88


def test_rubin_dof_is_the_members_count_when_their_spread_dominates() -> None:
    assert rubin_dof(0.0, 1.0, 3, 10_000) == pytest.approx(2.0, rel=1e-3)
    assert rubin_dof(1.0, 0.0, 3, 10_000) == pytest.approx(9_999 * 10_000 / 10_002)
    assert rubin_dof(0.0, 0.0, 3, 10) == math.inf
    assert 2.0 < rubin_dof(1.0, 1.0, 3, 10_000) < 10.0


def test_ship_rule_needs_the_lower_bound_above_the_logged_value() -> None:
    cands = {"a": Estimate(0.5, 0.2, 0.8, 10), "b": Estimate(0.45, 0.35, 0.55, 10), "c": Estimate(0.1, 0.0, 0.2, 10)}
    sel = select(cands, 0.3, estimator="model")
    assert [n for n, _ in sel.ranking] == ["a", "b", "c"]
    assert sel.qualifying == ("b",) and sel.recommended == "b" and sel.pick == "b"  # the lower bound, not the top
    none = select(cands, 0.9, estimator="model")
    assert none.recommended is None and "keep the logging policy" in none.message
    assert none.pick == "a"  # nothing qualifies: the top estimate, flagged by the message


def test_return_estimators_without_a_model_say_what_is_missing(logged: tuple[Path, Scenario]) -> None:
    logs, sc = logged
    data = read_adrl_logs(logs, FeatureLayout.from_scenario(sc))
    with pytest.raises(ConfigError, match="--behavior"):
        evaluate(data, RandomPolicy(sc).action_probabilities, ["model"], rng=np.random.default_rng(0))


@pytest.fixture(scope="module")
def fitted(logged: tuple[Path, Scenario], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    from adrl.ope.members import fit_bootstrap_members

    logs, sc = logged
    root = tmp_path_factory.mktemp("members")
    fit_bootstrap_members(logs, sc, root / "members", n_members=2, seed=0, epochs=1)
    GreedyPolicy(sc).save(root / "greedy")
    RandomPolicy(sc).save(root / "random")
    return root / "members", root / "greedy", root / "random"


def test_cli_ranks_candidates_and_applies_the_ship_rule(logged, fitted, tmp_path) -> None:
    logs, _ = logged
    members, greedy, random_ = fitted
    out = tmp_path / "ope.json"
    args = ["ope", "--logs", str(logs), "--behavior", str(members), "--policy", str(greedy), "--policy", str(random_),
            "--estimators", "model,magic,pdis", "--n-boot", "50", "--out", str(out)]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert set(data["policies"]) == {str(greedy), str(random_)}
    sel = data["selection"]
    assert sel["estimator"] == "model" and len(sel["ranking"]) == 2
    assert data["logged_value"]["value"] == pytest.approx(sel["logged_value"])
    assert "ranking by model" in result.output
    assert ("ship " in sel["message"]) == (sel["recommended"] is not None)
    for r in data["policies"].values():
        e = r["estimates"]["model"]
        assert e["lower"] <= e["value"] <= e["upper"] and e["interval"] == "t-users+models"


def test_cli_step_estimand_is_labelled_one_step_value(logged, fitted) -> None:
    logs, _ = logged
    _, greedy, _ = fitted
    result = runner.invoke(app, ["ope", "--logs", str(logs), "--policy", str(greedy), "--estimand", "step",
                                 "--n-boot", "50", "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["estimand"] == "step" and "ips" in data["estimates"] and "model" not in data["estimates"]


def _write(df: pd.DataFrame, path: Path, like: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    meta = pq.read_schema(like).metadata
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False).replace_schema_metadata(meta), path)
    return path


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda df: df.drop(columns=["episode_id"]), "episode_id"),
        (lambda df: df.assign(step=np.where(df["step"] == 1, 0, df["step"])), "occurs more than once"),
    ],
)
def test_cli_bad_logs_get_clear_errors(logged, fitted, tmp_path, edit, message) -> None:
    logs, _ = logged
    _, greedy, _ = fitted
    bad = _write(edit(pd.read_parquet(logs)), tmp_path / "bad.parquet", logs)
    result = runner.invoke(app, ["ope", "--logs", str(bad), "--policy", str(greedy), "--estimators", "pdis"])
    assert result.exit_code == 2
    assert message in result.output


def test_cli_refuses_a_policy_of_another_layout(logged, fitted, tmp_path) -> None:
    logs, _ = logged
    _, greedy, _ = fitted
    other = Scenario(horizon=12)
    RandomPolicy(other).save(tmp_path / "other")
    result = runner.invoke(app, ["ope", "--logs", str(logs), "--policy", str(greedy), "--policy",
                                 str(tmp_path / "other"), "--estimators", "pdis"])  # fmt: skip
    assert result.exit_code == 2
    assert "layout" in result.output


def test_calibrated_members_match_the_logged_rates(logged, fitted) -> None:
    from adrl.logs import feature_columns
    from adrl.ope.members import calibrate_members, load_members

    logs, sc = logged
    members, _, _ = fitted
    layout = FeatureLayout.from_scenario(sc)
    df = pd.read_parquet(logs)
    shown = df[df["shown"]]
    (member,) = calibrate_members(load_members([members], sc)[:1], logs, layout)
    r = member.probabilities_from_obs(
        shown[feature_columns(layout)].to_numpy(np.float32), shown[["delay", "slot", "creative"]].to_numpy()
    )
    assert float(np.mean(r.p_click)) == pytest.approx(shown["click"].mean(), rel=1e-6)
    assert float(np.mean(r.p_leave)) == pytest.approx(shown["leave"].mean(), rel=1e-6)


def test_calibration_is_the_same_however_the_log_is_split_into_files(logged, fitted, tmp_path) -> None:
    """The thinned sample is keyed by (episode, step): sharding and reordering the log leave the offsets as they are."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from adrl.ope.members import calibrate_members, load_members

    logs, sc = logged
    members, _, _ = fitted
    layout = FeatureLayout.from_scenario(sc)
    table = pq.read_table(logs)
    shards = tmp_path / "shards"
    shards.mkdir()
    eid = table["episode_id"].to_numpy()
    for j in range(3):  # other files, and the episodes of each file in reverse order
        part = table.filter(pa.array(eid % 3 == j))
        order = np.lexsort((part["step"].to_numpy(), -part["episode_id"].to_numpy()))
        pq.write_table(part.take(pa.array(order)), shards / f"part-{j}.parquet")
    n_shown = int(pd.read_parquet(logs, columns=["shown"])["shown"].sum())
    model = load_members([members], sc)[:1]
    for max_rows in (n_shown // 5, 10 * n_shown):  # thinned, and every impression
        (a,) = calibrate_members(model, logs, layout, max_rows=max_rows, seed=3)
        (b,) = calibrate_members(model, shards, layout, max_rows=max_rows, seed=3)
        np.testing.assert_allclose(a.offsets, b.offsets, rtol=0, atol=1e-9)
    (thin3,) = calibrate_members(model, logs, layout, max_rows=n_shown // 5, seed=3)
    (thin4,) = calibrate_members(model, logs, layout, max_rows=n_shown // 5, seed=4)
    assert not np.allclose(thin3.offsets, thin4.offsets, rtol=0, atol=1e-9)  # the seed re-draws the sample
