"""`adrl quickstart --fast` runs end to end and leaves a loadable policy and a complete report."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

import adrl
from adrl.cli import app
from adrl.report import SECTIONS


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("qs") / "quickstart"
    result = CliRunner().invoke(app, ["quickstart", "--fast", "--out", str(out), "--seed", "1"])
    assert result.exit_code == 0, result.output
    return out, " ".join(result.output.split())


def test_quickstart_prints_the_table_and_next_commands(quickstart: tuple[Path, str]) -> None:
    _, text = quickstart
    for name in (
        "reinforce",
        "ppo_native",
        "greedy",
        "pacing",
        "tuned_pacing",
        "frequency_cap",
        "random",
    ):
        assert name in text
    assert "adrl serve --policy" in text and "adrl.load_policy(" in text and "report:" in text
    assert "offline selection" in text and "regret" in text  # the pick a user without ground truth would make


def test_offline_selection_estimates_the_return_per_user_day(quickstart: tuple[Path, str]) -> None:
    out, _ = quickstart
    summary = json.loads((out / "quickstart.json").read_text())
    assert summary["selected"] in summary["policies"] and summary["best"] in summary["policies"]
    sel = summary["selection"]  # the ship rule's pick when one qualifies, else the top estimate
    assert summary["selected"] == (sel["recommended"] or sel["ranking"][0]["policy"])
    if sel["recommended"]:
        lowers = {e["policy"]: e["lower"] for e in sel["ranking"]}
        assert lowers[summary["selected"]] == max(lowers[n] for n in sel["qualifying"]) > sel["logged_value"]
    for name, o in summary["ope"].items():
        est = o["estimated_return"]
        assert est["lower"] <= est["value"] <= est["upper"] and est["estimator"] == "model"
        assert o["true_return"] == summary["policies"][name]["mean_return"]
        assert {"pdis", "wis"} <= set(o["estimates"])  # the importance-weighted references, same estimand


def test_best_policy_loads_and_decides(quickstart: tuple[Path, str]) -> None:
    out, _ = quickstart
    policy = adrl.load_policy(out / "best_policy")
    decision = policy.decide(user={"segment": "commuter"}, context={"hour": 8})
    assert 0 < decision.propensity <= 1
    assert decision.action.slot in [s.name for s in adrl.Scenario().slots]
    summary = json.loads((out / "quickstart.json").read_text())
    assert summary["best"] in summary["policies"]
    exported = (out / "best_policy" / "manifest.json").read_bytes()  # the offline pick, as a user would ship it
    assert exported == (out / "agents" / summary["selected"] / "policy" / "manifest.json").read_bytes()
    best_return = summary["policies"][summary["best"]]["mean_return"]
    assert best_return == max(p["mean_return"] for p in summary["policies"].values())


def test_report_is_self_contained_and_has_every_section(quickstart: tuple[Path, str]) -> None:
    out, _ = quickstart
    page = (out / "report.html").read_text()
    for key, title in SECTIONS:
        assert f'id="{key}"' in page and title in page
    assert len(re.findall(r'src="data:image/png;base64,', page)) >= 4  # calibration, curves, policies, best
    assert "http://" not in page and "https://" not in page and "<script" not in page  # nothing fetched or run
    for name in ("reinforce", "ppo_native", "greedy", "pacing", "tuned_pacing", "random", "pdis", "wis"):
        assert f"<td>{name}</td>" in page


def test_quickstart_refuses_to_overwrite_without_force(quickstart: tuple[Path, str]) -> None:
    out, _ = quickstart
    before = (out / "report.html").stat().st_mtime_ns
    result = CliRunner().invoke(app, ["quickstart", "--fast", "--out", str(out)])
    assert result.exit_code == 2 and "--force" in result.output
    assert (out / "report.html").stat().st_mtime_ns == before


def test_the_logger_exploration_is_recorded_and_bad_rates_are_refused(quickstart: tuple[Path, str]) -> None:
    out, _ = quickstart
    summary = json.loads((out / "quickstart.json").read_text())
    assert summary["simulation"]["epsilon"] == [0.3, 0.3, 0.3]
    assert "ε = 0.3, 0.3, 0.3 per delay, slot, creative" in (out / "report.html").read_text()
    before = (out / "report.html").stat().st_mtime_ns
    for bad in ("1.5", "1,0.5", "fast"):  # out of [0, 1], two rates, not a number: refused before anything is replaced
        result = CliRunner().invoke(app, ["quickstart", "--fast", "--out", str(out), "--force", "--epsilon", bad])
        assert result.exit_code == 2 and "--epsilon" in result.output, result.output
        assert (out / "report.html").stat().st_mtime_ns == before


def test_force_never_deletes_a_directory_that_is_not_a_quickstart(tmp_path: Path) -> None:
    keep = tmp_path / "precious.txt"
    keep.write_text("data")
    result = CliRunner().invoke(app, ["quickstart", "--fast", "--out", str(tmp_path), "--force"])
    assert result.exit_code == 2 and "not a quickstart directory" in result.output
    assert keep.read_text() == "data"


def test_agents_and_rules_train_on_the_bagged_simulator(quickstart: tuple[Path, str]) -> None:
    """The simulator is the mean of the main model and the OPE's bootstrap members; agents and the bar use it."""
    import yaml

    from adrl.behavior import BehaviorModel
    from adrl.behavior.ensemble import EnsembleResponse

    out, _ = quickstart
    simulator = EnsembleResponse.load(out / "simulator")
    members = sorted(p.name for p in (out / "ope_members").iterdir())
    assert simulator.n_members == 1 + len(members) >= 2 and simulator.penalty == 0.0
    for name in ("ppo_native", "reinforce"):
        config = yaml.safe_load((out / "agents" / name / "config.yaml").read_text())
        assert Path(config["behavior"]) == out / "simulator"
    # it carries the logged support of the main job's logs (the count-based mode's), off by default
    assert simulator.support is not None and simulator.support_penalty == 0.0
    logged = json.loads((out / "quickstart.json").read_text())["simulation"]
    assert simulator.support.n_impressions == logged["n_impressions"]
    # the member the rules and greedy rank actions by is the main fit
    main = BehaviorModel.load(out / "behavior", layout=simulator.layout)
    for a, b in zip(main.net.state_dict().values(), simulator.model.net.state_dict().values(), strict=True):
        assert (a == b).all()


def test_a_budget_replaces_the_presets_and_a_bad_one_is_refused(tmp_path: Path) -> None:
    from dataclasses import replace

    from adrl.errors import ConfigError
    from adrl.quickstart import FAST_BUDGET, run_quickstart

    with pytest.raises(ConfigError, match="either fast=True or a budget"):
        run_quickstart(tmp_path / "a", fast=True, budget=FAST_BUDGET)
    with pytest.raises(ConfigError, match="support_penalty must be a finite number >= 0"):
        run_quickstart(tmp_path / "b", budget=replace(FAST_BUDGET, support_penalty=-1.0))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()  # refused before anything is written


def test_the_closed_loop_deploys_a_first_ppo_and_retrains_on_both_logs(tmp_path: Path) -> None:
    from dataclasses import replace

    import numpy as np
    import pyarrow.parquet as pq

    from adrl.actions import flat_index
    from adrl.agents.baselines import EpsilonGreedyPolicy
    from adrl.agents.registry import load_policy_artifact
    from adrl.features import FeatureLayout
    from adrl.logs import feature_columns
    from adrl.quickstart import FAST_BUDGET, run_quickstart
    from adrl.scenario import Scenario

    tiny = replace(FAST_BUDGET, n_users=600, loop_users=300, fit_epochs=1, reinforce_steps=4096, reinforce_envs=64,
                   ppo_steps=4096, ppo_envs=64, rule_episodes=50, eval_episodes=100, n_boot=10, holdout_users=200,
                   ope_members=1, ope_starts=200, loop_warm_start=True, loop_anchor=0.5)  # fmt: skip
    out = tmp_path / "qs"
    lines: list[str] = []
    run_quickstart(out, seed=2, budget=tiny, log=lines.append, progress=False)
    summary = json.loads((out / "quickstart.json").read_text())
    loop = summary["simulation"]["closed_loop"]
    assert loop["users"] == 300 and loop["epsilon"] == 0.3 and loop["deployed"] == "ppo_native"
    assert loop["warm_start"] is True and loop["anchor"] == 0.5
    assert any("[2/7] closed loop" in line for line in lines)

    # the rollout was logged by the first PPO with ε-exploration, with that policy's exact propensities
    sc = Scenario()
    layout = FeatureLayout.from_scenario(sc)
    first = load_policy_artifact(out / "loop" / "round-0" / "agents" / "ppo_native" / "policy", expect_layout=layout)
    rollout = pq.read_table(out / loop["log"]).to_pandas()
    assert rollout["episode_id"].nunique() == 300
    obs = rollout[feature_columns(layout)].to_numpy(dtype=np.float32)
    action = rollout[["delay", "slot", "creative"]].to_numpy(dtype=np.int64)
    probs = EpsilonGreedyPolicy(first, 0.3).action_probabilities(obs)
    expected = probs[np.arange(len(rollout)), flat_index(action, sc.action_nvec)]
    np.testing.assert_allclose(rollout["propensity"].to_numpy(), expected, rtol=1e-5)

    # the final fit, agents and OPE read the union: the logger's users and the rollout's, never merged
    union = pq.read_table(out / "logs.parquet", columns=["episode_id"]).to_pandas()
    assert union["episode_id"].nunique() == 900
    assert "Closed loop" in (out / "report.html").read_text()
    # the retrained PPO began from the deployed one, anchored to it
    config = yaml.safe_load((out / "agents" / "ppo_native" / "config.yaml").read_text())
    assert Path(config["init_from"]) == out / "loop" / "round-0" / "agents" / "ppo_native" / "policy"
    assert config["params"]["anchor_coef"] == 0.5
    assert "started from the deployed one's weights, kept near it by 0.5" in (out / "report.html").read_text()
    # the deployed PPO stays a candidate, evaluated and estimated like the rest
    assert "ppo_deployed" in summary["ope"] and "ppo_deployed" in summary["policies"]


def test_a_bad_closed_loop_budget_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    from dataclasses import replace

    from adrl.errors import ConfigError
    from adrl.quickstart import FAST_BUDGET, run_quickstart

    bads: list[dict[str, Any]] = [
        {"loop_users": -1},
        {"loop_users": 2.5},
        {"loop_users": True},
        {"loop_users": 10**10},
        {"loop_epsilon": 1.5},
        {"loop_anchor": -1.0},
        {"loop_anchor": float("nan")},
        {"loop_anchor": "0.5"},
        {"loop_warm_start": "yes"},
    ]
    for k, bad in enumerate(bads):
        with pytest.raises(ConfigError, match=r"loop_users must be a whole number|loop_epsilon must be in|"
                                              r"loop_anchor must be a finite|loop_warm_start must be"):  # fmt: skip
            run_quickstart(tmp_path / str(k), budget=replace(FAST_BUDGET, **bad))
        assert not (tmp_path / str(k)).exists()
    result = CliRunner().invoke(app, ["quickstart", "--fast", "--loop-users", "-5", "--out", str(tmp_path / "c")])
    assert result.exit_code != 0 and "loop-users" in result.output
    result = CliRunner().invoke(app, ["quickstart", "--fast", "--loop-anchor", "0.5", "--out", str(tmp_path / "d")])
    assert result.exit_code == 2 and "--loop-anchor needs --loop-users" in result.output
    assert not (tmp_path / "d").exists()
