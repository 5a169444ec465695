"""Social graphs and viral propagation: closed forms of the expected reach, α = β = 0 is the base env, both
check_envs, bad edge lists."""

from __future__ import annotations

import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

import adrl  # noqa: F401  (registers the ids)
from adrl.envs.registration import VIRAL_ID
from adrl.envs.vector import AdPlacementVectorEnv
from adrl.envs.viral import ViralResponse, ViralVectorEnv
from adrl.errors import ConfigError, DataError
from adrl.scenario import Dynamics, Scenario, Segment, Social, scenario_from_dict
from adrl.social import NOT_EXPOSED, Propagation, SocialGraph, build_graph, read_edge_list

ALPHA, BETA = 0.5, 0.3
ORGANIC_CLICK, SHARE = 0.4, -0.2  # logits; affinity weights 0 make q = σ(0.4) · σ(-0.2) the same for everyone
Q = 1 / (1 + np.exp(-ORGANIC_CLICK)) / (1 + np.exp(-SHARE))
REPLICAS = 20_000


def _market(**social: object) -> Scenario:
    params = dict(alpha=ALPHA, beta=BETA, organic_click_logit=ORGANIC_CLICK, share_logit=SHARE,
                  share_affinity_weight=0.0) | social  # fmt: skip
    return Scenario(
        segments=(Segment(name="all", share=1.0, interest_spread=0.0),),
        dynamics=Dynamics(affinity_weight=0.0),
        social=Social(**params),
    )


def _reach(
    edges: list[tuple[int, int, float]], n: int, seed_user: int, hops: int, interest: np.ndarray | None = None
) -> tuple[float, float]:
    """Mean and standard error of the users reached by one share of ``seed_user``, over REPLICAS disjoint copies
    of the graph (one cascade call)."""
    sc = _market(max_hops=hops)
    e = np.array([(i, j) for i, j, _ in edges])
    offsets = (np.arange(REPLICAS) * n)[:, None]
    i, j = (e[:, 0] + offsets).ravel(), (e[:, 1] + offsets).ravel()
    w = np.tile([s for _, _, s in edges], REPLICAS)
    graph = SocialGraph.from_edges(n * REPLICAS, i, j, w)
    theta = np.zeros((n, sc.n_categories)) if interest is None else interest
    prop = Propagation(graph, np.tile(theta, (REPLICAS, 1)), np.zeros(n * REPLICAS, dtype=np.int64), sc)
    exposed = np.full((n * REPLICAS, sc.n_creatives), NOT_EXPOSED, dtype=np.int64)
    roots = np.arange(REPLICAS) * n + seed_user
    zeros = np.zeros(REPLICAS, dtype=np.int64)
    cascade = prop.cascade(roots, zeros, zeros, exposed, np.random.default_rng(0))
    reached = cascade.reached[roots]
    return float(reached.mean()), float(reached.std() / np.sqrt(REPLICAS))


def _close(got: tuple[float, float], expected: float) -> None:
    mean, se = got
    assert abs(mean - expected) < 4 * se + 1e-9, f"reach {mean:.4f} ± {se:.4f}, closed form {expected:.4f}"


STAR = [(0, leaf, s) for leaf, s in zip(range(1, 6), (0.5, 1.0, 1.5, 2.0, 0.25), strict=True)]


def test_a_share_by_the_centre_of_a_star_reaches_each_leaf_with_alpha_plus_beta() -> None:
    # a leaf's only tie is the centre: S/D = 1 and C/N = 1; after two hops nobody new (the centre is exposed)
    _close(_reach(STAR, 6, 0, hops=1), 5 * (ALPHA + BETA))
    _close(_reach(STAR, 6, 0, hops=2), 5 * (ALPHA + BETA))


def test_a_share_by_a_leaf_reaches_the_other_leaves_through_the_centre() -> None:
    d_centre = sum(s for _, _, s in STAR)
    p_centre = ALPHA * 0.5 / d_centre + BETA / 5
    _close(_reach(STAR, 6, 1, hops=1), p_centre)
    _close(_reach(STAR, 6, 1, hops=2), p_centre + p_centre * Q * 4 * (ALPHA + BETA))


def test_reach_along_a_chain_multiplies_the_hops() -> None:
    chain = [(0, 1, 1.0), (1, 2, 2.0), (2, 3, 1.0), (3, 4, 1.0)]
    p01 = ALPHA * 1.0 / 3.0 + BETA / 2  # D(1) = 1 + 2, N(1) = 2
    p12 = ALPHA * 2.0 / 3.0 + BETA / 2  # D(2) = 2 + 1, N(2) = 2
    _close(_reach(chain, 5, 0, hops=1), p01)
    _close(_reach(chain, 5, 0, hops=2), p01 + p01 * Q * p12)


def test_two_cliques_share_across_their_bridge_by_tie_strength_and_interest_similarity() -> None:
    bridge = 0.5
    a, b = [0, 1, 2, 3], [4, 5, 6, 7]
    edges = [(i, j, 1.0) for group in (a, b) for i in group for j in group if i < j] + [(0, 4, bridge)]
    interest = np.zeros((8, 3))
    interest[4:] = [1.0, -0.5, 0.0]
    c = float(np.exp(-(1.0 + 0.25) / 3))  # C(0, 4) = exp(-|θ_A - θ_B|² / K)
    p = (ALPHA + BETA) / 3  # inside a clique: N = D = 3, C = 1
    pb = ALPHA * bridge / (3 + bridge) + BETA * c / 4
    _close(_reach(edges, 8, 0, hops=1, interest=interest), 3 * p + pb)
    # hop 2: a clique-mate missed at hop 1 is reached by either of the two others; B through node 4 only
    hop2 = 3 * (1 - p) * (1 - (1 - p * Q * p) ** 2) + 3 * pb * Q * p
    _close(_reach(edges, 8, 0, hops=2, interest=interest), 3 * p + pb + hop2)


def test_transmission_probability_is_the_formula_on_every_edge() -> None:
    sc = _market()
    graph = SocialGraph.from_edges(4, np.array([0, 0, 1]), np.array([1, 2, 3]), np.array([1.0, 3.0, 0.5]))
    interest = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 0.0]])
    prop = Propagation(graph, interest, np.zeros(4, dtype=np.int64), sc)
    strength = graph.strength.toarray()
    d, n = strength.sum(axis=1), (strength > 0).sum(axis=1)
    for i, j in [(0, 1), (1, 0), (0, 2), (2, 0), (1, 3), (3, 1)]:
        sim = np.exp(-np.sum((interest[i] - interest[j]) ** 2) / 3)
        row = slice(graph.strength.indptr[i], graph.strength.indptr[i + 1])
        k = row.start + list(graph.strength.indices[row]).index(j)
        assert prop.prob[k] == pytest.approx(ALPHA * strength[i, j] / d[j] + BETA * sim / n[j])


def test_a_friends_share_lifts_the_click_and_conversion_logits_of_that_creative_only() -> None:
    env = ViralVectorEnv(num_envs=4, scenario=_market(graph="small_world", mean_degree=2))
    env.reset(seed=0)
    action = np.array([[0, 0, 3]] * 4)
    before = env.world.probabilities(env.users, action)
    env.exposed[1, 3] = 0
    env.exposed[2, 5] = 0  # another creative: no lift
    after = ViralResponse(env.world, None, env.social, env.exposed).probabilities(env.users, action)
    logit = np.log(before.p_click / (1 - before.p_click))
    lifted = 1 / (1 + np.exp(-(logit + env.social.click_lift)))
    np.testing.assert_allclose(after.p_click, [before.p_click[0], lifted[1], before.p_click[2], before.p_click[3]])
    assert after.p_conversion[1] > before.p_conversion[1] and after.p_conversion[2] == before.p_conversion[2]


def test_alpha_beta_zero_gives_the_base_env_exactly() -> None:
    base_sc = Scenario()
    viral_sc = base_sc.model_copy(update={"social": Social(graph="small_world", alpha=0.0, beta=0.0)})
    viral, base = ViralVectorEnv(num_envs=64, scenario=viral_sc), AdPlacementVectorEnv(num_envs=64, scenario=base_sc)
    v_obs, _ = viral.reset(seed=5)
    b_obs, _ = base.reset(seed=5)
    dim = b_obs.shape[1]
    np.testing.assert_array_equal(v_obs[:, :dim], b_obs)
    rng = np.random.default_rng(1)
    shares = 0
    for _ in range(40):
        actions = rng.integers(0, [4, 3, 12], size=(64, 3))
        v_obs, v_r, v_te, v_tr, v_info = viral.step(actions)
        b_obs, b_r, b_te, b_tr, b_info = base.step(actions)
        np.testing.assert_array_equal(v_obs[:, :dim], b_obs)
        np.testing.assert_array_equal(v_r, b_r)
        np.testing.assert_array_equal(v_te, b_te)
        np.testing.assert_array_equal(v_tr, b_tr)
        np.testing.assert_array_equal(v_info["p_click"], b_info["p_click"])
        assert not v_info["reached"].any()
        shares += int(v_info["share"].sum())
        if (b_te | b_tr).any():  # from the next step the base env draws new users, the population keeps its own
            break
    assert shares > 0  # users did share: they just reached nobody


def test_sharing_on_credits_organic_conversions_and_same_seed_gives_same_days() -> None:
    sc = _market(graph="sbm", alpha=0.7, beta=0.3, organic_click_logit=2.0, share_logit=2.0)
    runs = []
    for _ in range(2):
        env = ViralVectorEnv(num_envs=300, scenario=sc)
        env.reset(seed=3)
        rng = np.random.default_rng(4)
        total, reached, organic = 0.0, 0, 0
        for _ in range(30):
            _, reward, _, _, info = env.step(rng.integers(0, [4, 3, 12], size=(300, 3)))
            total += float(reward.sum())
            reached += int(info["reached"].sum())
            organic += int(info["organic_conversions"].sum())
        runs.append((total, reached, organic))
    assert runs[0] == runs[1]
    assert runs[0][1] > 0 and runs[0][2] > 0


def test_check_env_passes_for_the_viral_id() -> None:
    from gymnasium.utils.env_checker import check_env as gym_check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    sc = Scenario(social=Social(n_users=40, mean_degree=4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gym_check_env(gym.make(VIRAL_ID, scenario=sc).unwrapped, skip_render_check=True)
        sb3_check_env(gym.make(VIRAL_ID, scenario=sc).unwrapped, warn=True)
    envs = gym.make_vec(VIRAL_ID, num_envs=30, scenario=sc, vectorization_mode="vector_entry_point")
    obs, _ = envs.reset(seed=0)
    assert obs.shape == (30, envs.single_observation_space.shape[0])  # type: ignore[index]


def test_block_model_puts_most_friends_in_the_same_segment() -> None:
    graph = build_graph(Scenario(social=Social(graph="sbm", mean_degree=8, within_segment=0.8)), 4000)
    assert graph.segment is not None
    coo = graph.strength.tocoo()
    within = float(np.mean(graph.segment[coo.row] == graph.segment[coo.col]))
    assert graph.degree.mean() == pytest.approx(8, rel=0.05) and within == pytest.approx(0.8, abs=0.03)
    assert (graph.strength != graph.strength.T).nnz == 0 and graph.strength.diagonal().sum() == 0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0 1\n1 x\n", "line 2: user ids must be integers"),
        ("0 1\n2 2\n", "line 2: self-loop"),
        ("0 1\n1 0\n", "line 2: duplicate edge 1-0 (first on line 1)"),
        ("0 9\n", "line 1: user id out of range 0..3"),
        ("0 1 -1\n", "line 1: tie strength must be a positive finite number"),
        ("0 1 2 3\n", "line 1: expected 'i j' or 'i j tie_strength'"),
        ("# only a comment\n", "lists no edges"),
    ],
)
def test_a_bad_edge_list_names_the_file_and_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "friends.txt"
    path.write_text(text)
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_edge_list(path, 4, Social(graph="edges", edges=str(path)))


def test_an_edge_list_file_is_the_graph(tmp_path: Path) -> None:
    path = tmp_path / "friends.csv"
    path.write_text("# i, j, strength\n0, 1, 2.0\n1, 2\n2 3 0.5\n")
    env = ViralVectorEnv(scenario=Scenario(social=Social(graph="edges", edges=str(path))))
    assert env.num_envs == 4 and env.degree.tolist() == [1, 2, 2, 1]
    assert env.graph.strength[1, 2] == pytest.approx(0.6)  # no strength: the middle of tie_strength
    with pytest.raises(DataError, match="does not exist"):
        ViralVectorEnv(scenario=Scenario(social=Social(graph="edges", edges=str(tmp_path / "none.txt"))))


def test_bad_social_settings_name_the_field() -> None:
    with pytest.raises(ConfigError, match="alpha \\+ beta must be <= 1"):
        scenario_from_dict({"social": {"alpha": 0.8, "beta": 0.5}})
    with pytest.raises(ConfigError, match="unknown creative 'nope'"):
        scenario_from_dict({"social": {"shareability": {"nope": 1.0}}})
    with pytest.raises(ConfigError, match=r"social\.graph"):
        scenario_from_dict({"social": {"graph": "ring"}})


def test_training_resolves_the_viral_id_to_a_population_of_n_envs_users() -> None:
    from adrl.training import make_vector_env, resolve_env

    spec = resolve_env(VIRAL_ID, None, None)
    envs = make_vector_env(spec, 64)
    assert spec.scenario.social is not None and isinstance(envs, ViralVectorEnv) and envs.num_envs == 64
    with pytest.raises(ConfigError, match="--behavior is for"):
        resolve_env(VIRAL_ID, None, "runs/behavior")
