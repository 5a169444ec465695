"""The ground-truth world behaves as documented: each effect holds on sampled users."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adrl.errors import InvalidAction
from adrl.features import FeatureLayout
from adrl.scenario import Scenario
from adrl.world import UserBatch, World

N = 4000


@pytest.fixture(scope="module")
def world() -> World:
    return World(Scenario())


@pytest.fixture()
def users(world: World) -> UserBatch:
    return world.sample_users(N, np.random.default_rng(0))


def actions(n: int, delay: int = 0, slot: int = 0, creative: int = 0) -> np.ndarray:
    return np.tile(np.array([[delay, slot, creative]]), (n, 1))


def test_fatigue_lowers_click_and_raises_leave(world: World, users: UserBatch) -> None:
    fresh = world.probabilities(users, actions(N))
    users.fatigue[:] = 3.0
    tired = world.probabilities(users, actions(N))
    assert np.all(tired.p_click < fresh.p_click)
    assert np.all(tired.p_leave > fresh.p_leave)


def test_better_matched_creative_raises_click(world: World, users: UserBatch) -> None:
    # fashion_0 and games_0 have equal quality; users who prefer fashion click fashion more and vice versa
    fashion, games = 0, 4
    p_f = world.probabilities(users, actions(N, creative=fashion)).p_click
    p_g = world.probabilities(users, actions(N, creative=games)).p_click
    aff_f = world.affinity(users.interest, np.full(N, fashion))
    aff_g = world.affinity(users.interest, np.full(N, games))
    assert np.array_equal(p_f > p_g, aff_f > aff_g)
    assert 0.1 < np.mean(aff_f > aff_g) < 0.9  # both kinds of users exist


def test_activity_by_hour_matters(world: World, users: UserBatch) -> None:
    commuters = users.take(users.segment == 0)
    n = len(commuters)
    commuters.epoch[:] = 8  # morning peak
    peak = world.probabilities(commuters, actions(n)).p_click
    commuters.epoch[:] = 3  # night
    trough = world.probabilities(commuters, actions(n)).p_click
    assert np.all(peak > 2 * trough)


def test_fatigue_grows_more_in_annoying_slots_and_decays_with_time(world: World) -> None:
    rng = np.random.default_rng(1)
    a = world.sample_users(500, rng)
    b = a.take(slice(None))
    world.step(a, actions(500, slot=1), rng)  # banner: annoyance 0.4
    world.step(b, actions(500, slot=2), rng)  # interstitial: annoyance 2.5
    assert np.all(b.fatigue > a.fatigue) and np.all(a.fatigue > 0)
    # waiting lets fatigue decay before the next ad; flat activity isolates that from the hour effect
    flat = Scenario.model_validate(
        {"segments": [{"name": "flat", "share": 1.0, "activity": [0.5] * 24}], "start_hour": 0}
    )
    fw = World(flat)
    f_users = fw.sample_users(200, rng)
    fw.step(f_users, actions(200, slot=2), rng)
    soon = fw.probabilities(f_users, actions(200, delay=0)).p_click
    late = fw.probabilities(f_users, actions(200, delay=3)).p_click
    assert np.all(late > soon)


def test_wear_out_a_creative_already_seen_tires_more(world: World) -> None:
    rng = np.random.default_rng(2)
    a = world.sample_users(300, rng)
    a.segment[:] = 0
    b = a.take(slice(None))
    world.step(a, actions(300, creative=0), rng)
    world.step(b, actions(300, creative=0), rng)
    world.step(a, actions(300, creative=0), rng)  # same creative again: wear-out
    world.step(b, actions(300, creative=5), rng)  # a different creative
    assert np.all(a.fatigue > b.fatigue)


def test_churn_rises_with_fatigue_in_sampled_days(world: World) -> None:
    rng = np.random.default_rng(3)
    users = world.sample_users(N, rng)
    low = world.probabilities(users, actions(N, slot=1)).p_leave
    users.fatigue[:] = np.linspace(0, 6, N)
    p = world.probabilities(users, actions(N, slot=1)).p_leave
    order = np.argsort(users.fatigue)
    assert np.all(np.diff(p[order][users.segment[order] == 0]) >= 0)
    assert p.mean() > low.mean()


def test_conversion_only_after_click_and_outcomes_follow_probabilities(world: World) -> None:
    rng = np.random.default_rng(4)
    users = world.sample_users(200_000, rng)
    act = actions(200_000, slot=2, creative=8)
    res = world.step(users, act, rng)
    assert not np.any(res.conversion & ~res.click)
    assert res.click.mean() == pytest.approx(res.response.p_click.mean(), abs=0.003)
    assert res.leave.mean() == pytest.approx(res.response.p_leave.mean(), abs=0.003)
    conv_given_click = res.conversion[res.click].mean()
    assert conv_given_click == pytest.approx(res.response.p_conversion[res.click].mean(), abs=0.02)


def test_same_seed_same_outcomes(world: World) -> None:
    def day(seed: int) -> list[np.ndarray]:
        rng = np.random.default_rng(seed)
        users = world.sample_users(100, rng)
        out = []
        for _ in range(5):
            act = np.stack([rng.integers(0, k, 100) for k in world.scenario.action_nvec], axis=1)
            out.append(world.step(users, act, rng).reward)
        return out

    assert all(np.array_equal(x, y) for x, y in zip(day(7), day(7), strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(day(7), day(8), strict=True))


def test_delay_past_the_day_shows_nothing_and_ends_it(world: World) -> None:
    rng = np.random.default_rng(5)
    users = world.sample_users(10, rng)
    users.epoch[:] = 22
    res = world.step(users, actions(10, delay=3), rng)  # delay index 3 = 4 hours: 22 + 4 > 24
    assert not res.shown.any() and np.all(res.reward == 0) and np.all(res.truncated)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (np.array([[4, 0, 0]]), "delay index 4, expected 0..3"),
        (np.array([[0, -1, 0]]), "slot index -1"),
        (np.array([[0, 0, 12]]), "creative index 12, expected 0..11"),
        (np.array([0, 0, 0]), "shape"),
        (np.array([[0.5, 0, 0]]), "integers"),
    ],
)
def test_invalid_action_is_a_clear_error(world: World, bad: np.ndarray, message: str) -> None:
    users = world.sample_users(1, np.random.default_rng(0))
    with pytest.raises(InvalidAction, match=message):
        world.step(users, bad, np.random.default_rng(0))


@settings(max_examples=25, deadline=None)
@given(n=st.sampled_from([1, 5, 40, 300]), seed=st.integers(0, 2**32 - 1))
def test_exposure_features_rebuild_the_hidden_fatigue_exactly(n: int, seed: int) -> None:
    """The logged per-slot exposures determine fatigue: a model of the observation can learn it in full."""
    sc = Scenario()
    world, layout = World(sc), FeatureLayout.from_scenario(sc)
    exposure = [layout.index(f"exposure_{s.name}") for s in sc.slots]
    repeat = [layout.index(f"repeat_exposure_{s.name}") for s in sc.slots]
    rng = np.random.default_rng(seed)
    batch = world.sample_users(n, rng)
    while True:
        live = np.flatnonzero(batch.epoch < sc.horizon)
        if live.size == 0:
            break
        sub = batch.take(live)
        obs = layout.encode(sub).astype(np.float64)
        rebuilt = world.fatigue_sens[sub.segment] * (
            (obs[:, exposure] + sc.dynamics.wearout * obs[:, repeat]) @ world.annoyance
        )
        np.testing.assert_allclose(rebuilt, sub.fatigue, rtol=1e-5, atol=1e-6)
        act = np.stack([rng.integers(0, k, live.size) for k in sc.action_nvec], axis=1)
        world.step(sub, act, rng)
        batch.assign(live, sub)
