"""Off-policy estimators: closed-form cases, validation errors, intervals, reward models, sequential estimators."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from adrl.errors import DataError
from adrl.ope import (
    DM,
    DR,
    FQE,
    IPS,
    PDIS,
    SNDR,
    SNIPS,
    WDR,
    WIS,
    LoggedData,
    RidgeRewardModel,
    SwitchDR,
    bootstrap_mean,
    estimate_all,
    evaluate,
    parse_estimators,
    q_terms,
    resampled_sums,
)


@given(
    propensity=arrays(np.float64, st.integers(1, 50), elements=st.floats(0.01, 1.0)),
    seed=st.integers(0, 2**32 - 1),
)
@settings(max_examples=40, deadline=None)
def test_ips_is_the_on_policy_mean_when_target_equals_logging_policy(propensity, seed):
    rng = np.random.default_rng(seed)
    reward = rng.random(propensity.shape[0])
    for est in (IPS().estimate(reward, propensity, propensity, rng=rng, n_boot=200),
                SNIPS().estimate(reward, propensity, propensity, rng=rng, n_boot=200)):  # fmt: skip
        assert est.value == pytest.approx(reward.mean())
        assert est.lower <= est.value + 1e-12 and est.value <= est.upper + 1e-12
        assert est.ess == pytest.approx(propensity.shape[0])


@given(
    n=st.integers(1, 40),
    seed=st.integers(0, 2**32 - 1),
    q_scale=st.floats(-5, 5),
)
@settings(max_examples=40, deadline=None)
def test_dr_with_target_equal_logging_is_mean_reward_plus_model_residual_mean_zero(n, seed, q_scale):
    rng = np.random.default_rng(seed)
    p = rng.uniform(0.05, 1.0, n)
    r = rng.normal(size=n)
    q = q_scale * rng.random(n)
    # target = logging and q_target = q_logged: DR = mean(q + (r - q)) = mean(r)
    est = DR().estimate(r, p, p, q, q, rng=rng, n_boot=50)
    assert est.value == pytest.approx(r.mean())


def test_uniform_logger_and_deterministic_target_in_closed_form():
    # 4 actions, uniform logging (p = 1/4); the target always plays action 2
    rng = np.random.default_rng(0)
    n, k = 4000, 4
    action = rng.integers(0, k, n)
    mean_reward = np.array([0.1, 0.2, 0.8, 0.3])
    reward = mean_reward[action] + rng.normal(0, 0.01, n)
    propensity = np.full(n, 1 / k)
    target_prob = (action == 2).astype(float)
    ips = IPS().estimate(reward, propensity, target_prob, rng=rng, n_boot=300)
    expected = 4 * np.sum(reward[action == 2]) / n  # w = 4 on matching rows, 0 elsewhere
    assert ips.value == pytest.approx(expected)
    assert ips.max_weight == 4.0
    assert ips.ess == pytest.approx((action == 2).sum())
    snips = SNIPS().estimate(reward, propensity, target_prob, rng=rng, n_boot=300)
    assert snips.value == pytest.approx(reward[action == 2].mean())
    assert snips.covers(0.8) and ips.covers(0.8)
    # a perfect reward model: DM and DR recover 0.8 almost exactly
    q_logged, q_target = mean_reward[action], np.full(n, 0.8)
    assert DM().estimate(reward, propensity, target_prob, q_logged, q_target, rng=rng).value == pytest.approx(0.8)
    dr = DR().estimate(reward, propensity, target_prob, q_logged, q_target, rng=rng, n_boot=300)
    assert dr.value == pytest.approx(0.8, abs=0.002)
    assert dr.upper - dr.lower < ips.upper - ips.lower  # the model removes the reward-level variance


def test_switch_dr_interpolates_between_dm_and_dr():
    rng = np.random.default_rng(1)
    n = 500
    p = rng.uniform(0.05, 1, n)
    t = rng.uniform(0, 1, n)
    r, ql, qt = rng.random(n), rng.random(n), rng.random(n)
    dr = DR().estimate(r, p, t, ql, qt, rng=rng, n_boot=0).value
    dm = DM().estimate(r, p, t, ql, qt, rng=rng, n_boot=0).value
    assert SwitchDR().estimate(r, p, t, ql, qt, rng=rng, n_boot=0).value == pytest.approx(dr)
    assert SwitchDR(tau=1e-9).estimate(r, p, t, ql, qt, rng=rng, n_boot=0).value == pytest.approx(dm)
    sndr = SNDR().estimate(r, p, t, ql, qt, rng=rng, n_boot=0).value
    w = t / p
    assert sndr == pytest.approx(qt.mean() + np.sum(w * (r - ql)) / np.sum(w))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"propensity": [0.5, 0.0, 0.5]}, "propensity must be in (0, 1], got 0 at row 1"),
        ({"propensity": [0.5, 1.5, 0.5]}, "got 1.5 at row 1"),
        ({"propensity": [0.5, math.nan, 0.5]}, "propensity must be in (0, 1], got nan at row 1"),
        ({"reward": [1.0, math.nan, 0.0]}, "reward must be finite, got nan at row 1"),
        ({"target_prob": [0.5, 0.5]}, "target_prob has 2 rows, expected 3"),
        ({"target_prob": [0.5, -0.1, 0.5]}, "target_prob must be in [0, 1], got -0.1 at row 1"),
        ({"reward": []}, "no logged decisions"),
    ],
)
def test_invalid_inputs_raise_data_errors_naming_row_and_value(kwargs, message):
    args = {"reward": [1.0, 0.0, 1.0], "propensity": [0.5, 0.5, 0.5], "target_prob": [1.0, 0.0, 1.0], **kwargs}
    with pytest.raises(DataError) as e:
        IPS().estimate(
            *(np.asarray(args[k]) for k in ("reward", "propensity", "target_prob")), rng=np.random.default_rng(0)
        )
    assert message in str(e.value)


def test_model_based_estimators_need_the_model_and_hyperparameters_are_checked():
    with pytest.raises(ValueError, match="needs reward-model predictions"):
        DR().estimate(np.ones(1), np.full(1, 0.5), np.ones(1), rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="clip must be > 0"):
        IPS(clip=0)
    with pytest.raises(ValueError, match="tau must be > 0"):
        SwitchDR(tau=math.nan)
    with pytest.raises(DataError, match="q_logged must be finite, got inf at row 0"):
        DR().estimate(
            np.ones(1), np.full(1, 0.5), np.ones(1), np.full(1, math.inf), np.zeros(1), rng=np.random.default_rng(0)
        )
    with pytest.raises(ValueError, match="unknown estimator"):
        parse_estimators("dm,ipss")


def test_same_seed_same_interval_and_chunking_does_not_change_the_draws():
    rng_vals = np.random.default_rng(0).random(3000)
    a = bootstrap_mean(rng_vals, rng=np.random.default_rng(5), n_boot=300)
    b = bootstrap_mean(rng_vals, rng=np.random.default_rng(5), n_boot=300)
    assert a == b
    sums = resampled_sums(np.ones((7, 2)), rng=np.random.default_rng(0), n_boot=5)
    assert np.all(sums == 7.0)  # every resample has n rows


def test_bootstrap_interval_covers_a_known_mean_most_of_the_time():
    rng = np.random.default_rng(0)
    hits = 0
    for _ in range(100):
        x = rng.exponential(1.0, 400)
        _, lo, hi = bootstrap_mean(x, rng=rng, n_boot=200)
        hits += lo <= 1.0 <= hi
    assert hits >= 88


def test_normal_interval_agrees_with_bootstrap_for_large_n():
    rng = np.random.default_rng(0)
    n = 20000
    p = np.full(n, 0.25)
    t = (rng.random(n) < 0.25).astype(float)
    r = rng.random(n)
    boot = SNIPS().estimate(r, p, t, rng=rng, n_boot=400)
    normal = SNIPS().estimate(r, p, t, rng=rng, n_boot=0)
    assert normal.interval == "normal" and boot.interval == "bca"
    assert normal.value == boot.value
    assert (normal.upper - normal.lower) == pytest.approx(boot.upper - boot.lower, rel=0.15)


def test_estimate_all_matches_single_estimators_values():
    rng = np.random.default_rng(0)
    n = 300
    p, t, r, ql, qt = rng.uniform(0.1, 1, n), rng.random(n), rng.random(n), rng.random(n), rng.random(n)
    ests = [DM(), IPS(), SNIPS(), DR(), SNDR(), SwitchDR()]
    both = estimate_all(ests, r, p, t, ql, qt, rng=rng, n_boot=100)
    for e in ests:
        assert both[e.name].value == pytest.approx(e.estimate(r, p, t, ql, qt, rng=rng, n_boot=0).value)
        assert both[e.name].value == pytest.approx(e.per_decision(r, p, t, ql, qt).mean())


def test_ridge_reward_model_recovers_per_action_linear_rewards_and_plugs_into_q_terms():
    rng = np.random.default_rng(0)
    n, k = 6000, 3
    x = rng.normal(size=(n, 2)).astype(np.float32)
    a = rng.integers(0, k, n)
    coef = np.array([[1.0, 0.5], [-1.0, 0.0], [0.0, 2.0]])
    y = np.einsum("nd,nd->n", x, coef[a]) + np.array([0.0, 1.0, 2.0])[a] + rng.normal(0, 0.1, n)
    model = RidgeRewardModel(n_actions=k, alpha=1.0).fit(x, a, y)
    xt = rng.normal(size=(50, 2)).astype(np.float32)
    truth = xt @ coef.T + np.array([0.0, 1.0, 2.0])
    assert np.abs(model(xt) - truth).max() < 0.1
    probs = np.full((50, k), 1 / k)
    act = rng.integers(0, k, 50)
    fast = q_terms(model, xt, act, probs)
    dense = q_terms(lambda o: model(o), xt, act, probs)  # a plain callable plugs in
    np.testing.assert_allclose(fast[0], dense[0])
    np.testing.assert_allclose(fast[1], dense[1])


def _chain_data(n_episodes: int, rng: np.random.Generator, logging_p1: float = 0.5):
    """Two actions, 3 steps; reward = action (1 or 0); logging picks action 1 with ``logging_p1``."""
    h = 3
    ep = np.repeat(np.arange(n_episodes), h)
    step = np.tile(np.arange(h), n_episodes)
    action = (rng.random(ep.size) < logging_p1).astype(np.int64)
    prop = np.where(action == 1, logging_p1, 1 - logging_p1)
    reward = action.astype(float)
    obs = np.column_stack([step, np.ones(ep.size)]).astype(np.float32)  # column 0: the step, categorical
    return ep, step, action, prop, reward, obs


def test_sequential_estimators_on_a_chain_with_known_value():
    rng = np.random.default_rng(0)
    ep, step, action, prop, reward, obs = _chain_data(3000, rng)
    # target plays action 1 with prob 0.8 at every step: true return 3 * 0.8 = 2.4
    target_prob = np.where(action == 1, 0.8, 0.2)
    for est in (PDIS(), WIS()):
        e = est.estimate(ep, step, reward, prop, target_prob, rng=rng, n_boot=200)
        assert e.value == pytest.approx(2.4, abs=0.15) and e.covers(2.4), est.name
        assert e.n == 3000
    probs = np.tile([0.2, 0.8], (ep.size, 1))
    fqe = FQE(RidgeRewardModel(n_actions=2, alpha=1.0, categorical=((0, 3),)))  # every iterate representable
    fit = fqe.fit(ep, step, obs, action, reward, probs)
    e = fqe.estimate(ep, step, obs, action, reward, probs, rng=rng, n_boot=100, fitted=fit)
    assert e.value == pytest.approx(2.4, abs=0.1)
    wdr = WDR().estimate(ep, step, reward, prop, target_prob, fit.q_logged, fit.v_target, rng=rng, n_boot=200)
    assert wdr.value == pytest.approx(2.4, abs=0.05) and wdr.covers(2.4)
    # target = logging: PDIS and WIS are the mean return exactly
    same = PDIS().estimate(ep, step, reward, prop, prop, rng=rng, n_boot=0)
    assert same.value == pytest.approx(reward.sum() / 3000)


def test_sequential_validation_rejects_duplicate_steps():
    with pytest.raises(DataError, match=r"\(episode_id, step\) = \(0, 1\) occurs more than once"):
        PDIS().estimate(
            np.zeros(3, int),
            np.array([0, 1, 1]),
            np.ones(3),
            np.full(3, 0.5),
            np.full(3, 0.5),
            rng=np.random.default_rng(0),
        )


def test_evaluate_runs_every_estimator_on_logged_data():
    rng = np.random.default_rng(0)
    ep, step, action, prop, reward, obs = _chain_data(800, rng)
    data = LoggedData(obs=obs, action=action, propensity=prop, reward=reward, episode_id=ep, step=step, n_actions=2,
                      categorical=((0, 3),))  # fmt: skip
    res = evaluate(data, lambda o: np.tile([0.2, 0.8], (o.shape[0], 1)), rng=rng, n_boot=100)
    assert list(res.estimates) == ["dm", "ips", "snips", "dr", "sndr", "switch-dr", "pdis", "wis", "wdr", "fqe"]
    assert res.estimates["dr"].value == pytest.approx(0.8, abs=0.05)
    assert res.estimates["wdr"].value == pytest.approx(2.4, abs=0.2)
    assert "estimates" in res.as_dict()
    assert res.warnings() == [] and res.as_dict()["warnings"] == []  # 800 episodes of a 2-action chain: ample support
    # a threshold above every effective sample size flags each group of weighted estimators once, never DM or FQE
    flagged = res.warnings(min_ess=1e9)
    assert [w.split(":")[0] for w in flagged] == ["ips, snips, dr, sndr, switch-dr", "pdis, wis, wdr"]
    ess = res.estimates["ips"].ess
    assert f"effective sample size {ess:,.1f} of {res.estimates['ips'].n:,} decisions" in flagged[0]


def test_bootstrap_resamples_whole_episodes_when_given_groups():
    from adrl.ope.bandit import IPS as _IPS
    from adrl.ope.bandit import estimate_all

    rng = np.random.default_rng(0)
    reward = np.repeat(rng.random(400), 10)  # ten identical decisions per episode: 400 independent units
    prop = np.full(reward.size, 0.5)
    groups = np.repeat(np.arange(400), 10)
    by_row = estimate_all([_IPS()], reward, prop, prop, rng=np.random.default_rng(1), n_boot=400)["ips"]
    by_episode = estimate_all([_IPS()], reward, prop, prop, rng=np.random.default_rng(1), n_boot=400,
                              groups=groups)["ips"]  # fmt: skip
    assert by_episode.value == pytest.approx(reward.mean())
    width_row, width_episode = by_row.upper - by_row.lower, by_episode.upper - by_episode.lower
    assert width_episode > 2.5 * width_row  # ~sqrt(10): rows of one episode are not independent draws
    se = reward[::10].std(ddof=1) / np.sqrt(400)
    assert width_episode == pytest.approx(2 * 1.96 * se, rel=0.2)


def test_bca_intervals_keep_their_coverage_where_percentile_intervals_fall_short():
    """Rare large rewards under heavy weights make IPS right-skewed: the percentile interval sits too low."""
    from adrl.ope.bandit import IPS as _IPS
    from adrl.ope.bandit import SNIPS as _SNIPS
    from adrl.ope.bandit import estimate_all

    rng = np.random.default_rng(0)
    n_actions, n, reps, truth = 20, 1500, 300, 0.5
    covered = {"bca": 0, "percentile": 0}
    for _ in range(reps):
        action = rng.integers(0, n_actions, n)
        prop = np.full(n, 1 / n_actions)
        target = (action == 0).astype(float)  # deterministic target: weight 20 on 5 % of rows
        reward = (rng.random(n) < 0.05) * 10.0  # E[r] = 0.5 whatever the action
        seed = int(rng.integers(1 << 31))
        for how in ("bca", "percentile"):
            est = estimate_all([_IPS(), _SNIPS()], reward, prop, target, rng=np.random.default_rng(seed), n_boot=200,
                               interval=how)  # fmt: skip
            covered[how] += est["ips"].covers(truth)
            assert est["ips"].interval == ("bca" if how == "bca" else "bootstrap")
    bca, percentile = covered["bca"] / reps, covered["percentile"] / reps
    assert bca >= 0.93
    assert percentile <= bca - 0.03
    with pytest.raises(ValueError, match="interval must be 'bca' or 'percentile'"):
        estimate_all([_IPS()], reward, prop, target, rng=rng, n_boot=10, interval="studentized")  # type: ignore[arg-type]
