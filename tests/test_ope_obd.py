"""OBD adapter and the standard experiment (BTS from random logs): a generated fixture always, real data if present."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from adrl.errors import DataError
from adrl.ope.obd import bts_action_dist, context_free_probs, read_bts_prior, read_obd
from adrl.ope.run import evaluate

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "obd"
ESTIMATORS = ("dm", "ips", "snips", "dr", "sndr", "switch-dr")


def write_fixture(root: Path, *, n_items: int = 5, n: int = 3000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """OBD-format files for campaign 'men': random and BTS logs, click rate depending on item and position."""
    rng = np.random.default_rng(seed)
    alpha = rng.uniform(5, 50, n_items)
    beta = rng.uniform(500, 2000, n_items)
    (root).mkdir(parents=True, exist_ok=True)
    (root / "prior_bts.yaml").write_text(yaml.safe_dump({"men": {"alpha": alpha.tolist(), "beta": beta.tolist()}}))
    ctr = np.linspace(0.05, 0.3, n_items)
    pos_factor = np.array([1.0, 0.7, 0.5])
    dist = bts_action_dist(alpha, beta, rng=np.random.default_rng(1), n_sim=20_000)
    for policy in ("random", "bts"):
        position = rng.integers(1, 4, n)
        if policy == "random":
            item = rng.integers(0, n_items, n)
            pscore = np.full(n, 1 / n_items)
        else:
            item = np.array([rng.choice(n_items, p=dist[:, p - 1] / dist[:, p - 1].sum()) for p in position])
            pscore = dist[item, position - 1]
        click = (rng.random(n) < ctr[item] * pos_factor[position - 1]).astype(int)
        df = pd.DataFrame({"timestamp": "2019-11-24 00:00:00+00:00", "item_id": item, "position": position,
                           "click": click, "propensity_score": pscore})  # fmt: skip
        for i in range(4):
            df[f"user_feature_{i}"] = rng.choice(["a" * 32, "b" * 32, "c" * 32], n)
        for j in range(n_items):
            df[f"user-item_affinity_{j}"] = rng.random(n)
        folder = root / policy / "men"
        folder.mkdir(parents=True, exist_ok=True)
        df.to_csv(folder / "men.csv")
        items = pd.DataFrame({"item_id": range(n_items), "item_feature_0": rng.random(n_items)})
        for k in (1, 2, 3):
            items[f"item_feature_{k}"] = rng.choice(["x" * 32, "y" * 32], n_items)
        items.to_csv(folder / "item_context.csv")  # OBD ships item features beside each log
    return dist, ctr[:, None] * pos_factor[None, :]


def test_bts_action_distribution_is_a_distribution_per_position():
    alpha, beta = np.array([10.0, 1.0, 5.0, 8.0]), np.array([10.0, 20.0, 5.0, 80.0])
    dist = bts_action_dist(alpha, beta, rng=np.random.default_rng(0), n_sim=20_000)
    assert dist.shape == (4, 3)
    np.testing.assert_allclose(dist.sum(axis=0), 1.0)
    assert dist[:, 0].argmax() == 2  # highest mean 0.5 ranks first most often
    again = bts_action_dist(alpha, beta, rng=np.random.default_rng(0), n_sim=20_000)
    np.testing.assert_array_equal(dist, again)  # seeded


def test_standard_experiment_on_generated_fixture(tmp_path):
    dist, ctr = write_fixture(tmp_path)
    logs = read_obd(tmp_path, "random", "men")
    assert logs.data.n == 3000 and logs.n_items == 5
    truth = float(np.mean([(dist[:, p] * ctr[:, p]).sum() for p in range(3)]))  # positions are uniform
    res = evaluate(logs.data, context_free_probs(dist, logs.position_col), ESTIMATORS,
                   rng=np.random.default_rng(0), n_boot=300)  # fmt: skip
    for name in ("ips", "snips", "dr", "sndr"):
        est = res.estimates[name]
        assert abs(est.value - truth) / truth < 0.15, name
        assert est.covers(truth), name
    on_policy = read_obd(tmp_path, "bts", "men").on_policy_value
    assert abs(on_policy - truth) / truth < 0.2


def test_obd_reader_errors_name_the_problem(tmp_path):
    write_fixture(tmp_path, n=50)
    with pytest.raises(DataError, match=r"no OBD data at .*random/women/women.csv"):
        read_obd(tmp_path, "random", "women")
    with pytest.raises(DataError, match="campaign must be one of"):
        read_obd(tmp_path, "random", "kids")
    with pytest.raises(DataError, match="no alpha/beta lists for campaign 'all'"):
        read_bts_prior(tmp_path, "all")
    path = tmp_path / "random" / "men" / "men.csv"
    df = pd.read_csv(path, index_col=0)
    df.loc[3, "propensity_score"] = 0.0
    df.to_csv(path)
    with pytest.raises(DataError, match=r"propensity_score must be in \(0, 1\], got 0 at row 3"):
        read_obd(tmp_path, "random", "men")


@pytest.mark.skipif(not (REAL / "random").is_dir(), reason=f"Open Bandit Dataset sample not found at {REAL}")
def test_real_obd_bts_from_random_logs():
    logs = read_obd(REAL, "random", "men")
    a, b = read_bts_prior(REAL, "men")
    dist = bts_action_dist(a, b, rng=np.random.default_rng(0), n_sim=20_000)
    res = evaluate(logs.data, context_free_probs(dist, logs.position_col), ("ips", "snips", "dr"),
                   rng=np.random.default_rng(0), n_boot=200)  # fmt: skip
    truth = read_obd(REAL, "bts", "men").on_policy_value
    for name, est in res.estimates.items():
        assert est.covers(truth), name  # with ~46 clicks per file, the interval is what can be asked for
