"""Logs of the population env: the share column, the share head, and ``adrl ope`` naming the interference."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from adrl.agents.baselines import GreedyPolicy
from adrl.behavior import FitConfig
from adrl.behavior.model import BehaviorModel
from adrl.behavior.share import ShareReport, compare_to_logistic_regression, fit_share_head
from adrl.cli import app
from adrl.errors import DataError
from adrl.scenario import Scenario, Social
from adrl.simulate import simulate, simulate_viral

runner = CliRunner()
SCENARIO = Scenario(social=Social(mean_degree=8, share_logit=0.5, shareability={"games_0": 2.0}))


@pytest.fixture(scope="module")
def viral_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("viral") / "logs.parquet"
    simulate_viral(SCENARIO, n_users=400, n_days=3, out=path, seed=0)
    return path


def test_the_population_log_carries_shares_after_clicks_for_every_users_day(viral_logs: Path) -> None:
    df = pq.read_table(viral_logs).to_pandas()
    assert df["share"].any() and not (df["share"] & ~df["click"]).any()
    assert df["episode_id"].nunique() == 3 * 400
    last = df.sort_values("step").groupby("episode_id").tail(1)
    epoch = np.rint(last["x_day_progress"].to_numpy() * SCENARIO.horizon)
    after = epoch + np.array(SCENARIO.delays)[last["delay"].to_numpy()] + 1
    assert (last["leave"].to_numpy() | (after >= SCENARIO.horizon)).all()  # every logged day is complete
    assert (df["x_friends_log"] > 0).mean() > 0.95  # friends are observed (a few users of the graph have none)


def test_adrl_ope_says_per_user_estimators_assume_no_interference(viral_logs: Path, tmp_path: Path) -> None:
    GreedyPolicy(SCENARIO).save(tmp_path / "greedy")
    args = ["ope", "--logs", str(viral_logs), "--policy", str(tmp_path / "greedy"), "--estimators", "ips,snips",
            "--estimand", "step", "--n-boot", "20"]  # fmt: skip
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    notes = json.loads(result.output)["notes"]
    assert any("carry shares" in n and "treats users as independent" in n for n in notes)
    plain = tmp_path / "plain.parquet"
    simulate(Scenario(), n_users=50, out=plain, seed=0, progress=False)
    GreedyPolicy(Scenario()).save(tmp_path / "greedy_plain")
    result = runner.invoke(app, ["ope", "--logs", str(plain), "--policy", str(tmp_path / "greedy_plain"),
                                 "--estimators", "ips", "--estimand", "step", "--n-boot", "20", "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert not any("carry shares" in n for n in json.loads(result.output)["notes"])


def test_the_share_head_learns_p_share_given_click_and_round_trips(viral_logs: Path, tmp_path: Path) -> None:
    report = fit_share_head(viral_logs, SCENARIO, FitConfig(epochs=2, seed=0))
    m = report.metrics["model"]
    assert report.n_train > 0 and report.n_validation > 0
    assert 0.5 < m.auc <= 1.0 and np.isfinite(report.metrics["logistic_regression"].log_loss)
    assert report.metrics["truth"].log_loss <= m.log_loss + 0.05  # the logged true P(share | click) is the ceiling
    cmp = compare_to_logistic_regression(report, n_boot=40, seed=1)
    assert cmp.auc == pytest.approx(m.auc - report.metrics["logistic_regression"].auc, abs=1e-12)
    assert cmp.log_loss == pytest.approx(m.log_loss - report.metrics["logistic_regression"].log_loss, abs=1e-6)
    assert cmp.auc_ci95[0] <= cmp.auc <= cmp.auc_ci95[1] and cmp.n_users == len(np.unique(report.validation_users))
    report.model.save(tmp_path / "share")
    loaded = BehaviorModel.load(tmp_path / "share")
    df = pq.read_table(viral_logs).to_pandas().head(50)
    obs = df[[c for c in df.columns if c.startswith("x_")]].to_numpy(np.float32)
    action = df[["delay", "slot", "creative"]].to_numpy()
    np.testing.assert_allclose(loaded.predict(obs, action)[0], report.model.predict(obs, action)[0], rtol=1e-6)


def test_the_share_head_needs_a_share_column(tmp_path: Path) -> None:
    plain = tmp_path / "plain.parquet"
    simulate(SCENARIO, n_users=50, out=plain, seed=0, progress=False)
    with pytest.raises(DataError, match="no 'share' column"):
        fit_share_head(plain, SCENARIO)


def _report(y: np.ndarray, p_model: np.ndarray, p_lr: np.ndarray, users: np.ndarray) -> ShareReport:
    return ShareReport(
        None, {}, 0, len(y), 0.0,  # type: ignore[arg-type]  # the comparison reads the validation arrays only
        validation_labels=y, validation_model=p_model, validation_lr=p_lr, validation_users=users,
    )  # fmt: skip


def test_the_head_comparison_finds_a_better_model_and_no_difference_between_equal_ones() -> None:
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(2000), 5)
    p_true = 1 / (1 + np.exp(-rng.normal(-1, 1.5, users.size)))
    y = (rng.random(users.size) < p_true).astype(np.float64)
    better = compare_to_logistic_regression(_report(y, p_true, np.full_like(p_true, y.mean()), users), n_boot=50)
    assert better.beats and better.auc > 0.2 and better.log_loss < 0
    same = compare_to_logistic_regression(_report(y, p_true, p_true.copy(), users), n_boot=50)
    assert same.auc == 0 and same.log_loss == 0 and not same.beats
    assert same.as_dict()["users"] == 2000
    with pytest.raises(ValueError, match="n_boot"):
        compare_to_logistic_regression(_report(y, p_true, p_true, users), n_boot=5)
    with pytest.raises(ValueError, match="no validation clicks"):
        compare_to_logistic_regression(_report(y[:0], y[:0], y[:0], users[:0]))
