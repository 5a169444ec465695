"""``adrl/AdPlacement-Viral-v0``: the users of one social graph live the same day together, and shares spread.

The population env :class:`ViralVectorEnv` is a :class:`~adrl.envs.vector.AdPlacementVectorEnv` whose slot k is
always user k of the scenario's graph (``Scenario.social``; the default graph when the scenario has none), so one
``step`` decides for every user of the graph at once and a share by one user changes what their friends do in
their own episodes. Per step, after the base dynamics (``World.step``, the same draws as the base env):

1. every user who clicked shares the ad with P(share | click) = σ(share_logit + w·affinity + shareability[c]);
2. shares spread on the graph (:class:`~adrl.social.Propagation`): friend j of sharer i is reached with
   P(i→j) = α·S(i,j)/D(j) + β·C(i,j)/N(j), clicks organically, may convert and share again (up to ``max_hops``);
3. a reached user keeps, for the rest of their day, ``click_lift`` and ``conversion_lift`` on the logits of that
   creative when an ad shows it to them.

Attribution rule (the reward): last ad touch. A conversion on an ad is the reward of that ad's decision, as in
the base env. An organic conversion of a reached friend is credited to the decision whose ad was clicked and
shared at the root of its cascade, if it happens within the attribution window of ``max_hops`` hops (one hour a
hop, counted from that impression); it is added to that decision's reward in the same step. Nothing is credited
twice: later ad conversions lifted by a share stay with their own decisions.

A user's next day (autoreset) is the same person: segment, interests and observed signal are kept, the day's
history and exposures start empty, and no random number is drawn. Share and cascade draws come from a stream of
their own, spawned from the reset seed; so with α = β = 0 (nobody is reached) every observation, reward and
flag equals the base vector env's with the same seed and actions over the users' first day (``num_envs`` users,
on a graph that does not fix segments); later days differ only because the base env draws new users.

Observation: the base env's (``FeatureLayout`` of a social market), whose last two features are ``friends_log``
= log1p(number of friends) and ``shared_with_me`` = creatives friends have shared with the user today.
``info`` adds ``share`` (bool), ``p_share`` (the true P(share | click) of the ad shown), ``reached`` (organic
exposures the decision caused) and ``organic_conversions`` (credited to it), each with its ``_key`` mask.

The single-user id (``gym.make``) is :class:`ViralAdPlacementEnv`: one user of the population per episode,
while every other user of the graph acts uniformly at random.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode

from adrl.envs.ad_placement import BehaviorModel
from adrl.envs.vector import AdPlacementVectorEnv
from adrl.errors import ConfigError, InvalidAction, ResetNeeded
from adrl.protocols import ResponseModel
from adrl.scenario import Scenario, Social, resolve_scenario
from adrl.social import NOT_EXPOSED, Cascade, Propagation, SocialGraph, build_graph, edge_list_size
from adrl.world import Response, StepResult, UserBatch, World

VIRAL_INFO_KEYS = ("share", "p_share", "reached", "organic_conversions")


def social_scenario(scenario: Scenario | Path | str | None) -> Scenario:
    """The scenario, with the default social graph when it has none."""
    sc = resolve_scenario(scenario)
    return sc if sc.social is not None else sc.model_copy(update={"social": Social()})


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-12, 1 - 1e-12)
    return np.log(p) - np.log1p(-p)


class ViralResponse:
    """The base response (ground truth or learned) with the share lifts: users exposed to a creative by a friend
    before the impression get ``click_lift`` and ``conversion_lift`` added to its logits."""

    def __init__(self, world: World, base: ResponseModel | None, social: Social, exposed: np.ndarray) -> None:
        self.world, self.base, self.social, self.exposed = world, base, social, exposed

    def probabilities(self, batch: UserBatch, action: np.ndarray) -> Response:
        resp = (self.world if self.base is None else self.base).probabilities(batch, action)
        at = batch.epoch + self.world.delays[action[:, 0]]
        lifted = np.flatnonzero(self.exposed[np.arange(len(batch)), action[:, 2]] <= at)
        if lifted.size == 0:
            return resp
        p_click, p_conv = resp.p_click.copy(), resp.p_conversion.copy()
        p_click[lifted] = 1.0 / (1.0 + np.exp(-(_logit(p_click[lifted]) + self.social.click_lift)))
        p_conv[lifted] = 1.0 / (1.0 + np.exp(-(_logit(p_conv[lifted]) + self.social.conversion_lift)))
        return Response(p_click=p_click, p_conversion=p_conv, p_leave=resp.p_leave)


class ViralVectorEnv(AdPlacementVectorEnv):
    """Every user of one social graph, stepped together (see the module docstring for the maths and attribution).

    Args:
        num_envs: users of the graph (generated graphs are built for this size; an edge list must fit it). None:
            ``social.n_users`` (or the edge list's size).
        scenario: a Scenario (its ``social`` section; the default graph when absent), a YAML path, or None.
        behavior_model: None for the ground truth, or a learned response (the share lifts apply on top).
        autoreset_mode: as :class:`~adrl.envs.vector.AdPlacementVectorEnv`.
        render_mode: must be None.

    Example:
        >>> envs = ViralVectorEnv(num_envs=50)
        >>> obs, info = envs.reset(seed=0)
        >>> obs, reward, terminated, truncated, info = envs.step(envs.action_space.sample())
        >>> reward.shape, info["share"].dtype
        ((50,), dtype('bool'))
    """

    def __init__(
        self,
        num_envs: int | None = None,
        scenario: Scenario | Path | str | None = None,
        behavior_model: BehaviorModel | None = None,
        autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP,
        render_mode: str | None = None,
    ) -> None:
        sc = social_scenario(scenario)
        soc = sc.social
        assert soc is not None
        if num_envs is None:
            num_envs = edge_list_size(str(soc.edges)) if soc.graph == "edges" else soc.n_users
        if not isinstance(num_envs, int | np.integer) or num_envs < 2:
            raise ConfigError(f"num_envs (the users of the graph) must be an integer >= 2, got {num_envs!r}")
        super().__init__(int(num_envs), sc, behavior_model, autoreset_mode, render_mode)
        self.social = soc
        self.graph: SocialGraph = build_graph(sc, self.num_envs)
        self.friends_log = np.minimum(np.log1p(self.graph.degree), self.layout.obs_high[self.layout.social_cols[0]])
        self.exposed = np.full((self.num_envs, sc.n_creatives), NOT_EXPOSED, dtype=np.int64)
        self.viral_response = ViralResponse(self.world, self.response, soc, self.exposed)
        self.propagation: Propagation | None = None
        self._persons: UserBatch | None = None
        self._social_rng = np.random.default_rng(0)
        self._share = np.zeros(self.num_envs, dtype=bool)
        self._p_share = np.zeros(self.num_envs)
        self._cascade: Cascade | None = None

    @property
    def degree(self) -> np.ndarray:
        """Friends of each user (slot), shape (num_envs,)."""
        return self.graph.degree

    # ---- hooks -------------------------------------------------------------------------------------------
    def _first_days(self, rng: np.random.Generator) -> UserBatch:
        persons = self.world.sample_users(self.num_envs, rng, segment=self.graph.segment)
        self._persons = persons.take(slice(None))
        self.propagation = Propagation(self.graph, persons.interest, persons.segment, self.scenario)
        # shares draw from their own stream: the base stream stays the base env's
        self._social_rng = np.random.default_rng(rng.bit_generator.seed_seq.spawn(1)[0])  # type: ignore[attr-defined]
        self.exposed[:] = NOT_EXPOSED
        return persons

    def _new_days(self, rows: np.ndarray, rng: np.random.Generator) -> UserBatch:
        assert self._persons is not None
        idx = np.flatnonzero(rows)
        self.exposed[idx] = NOT_EXPOSED
        return self._persons.take(idx)  # the same people, a fresh day; no draw

    def _world_step(self, batch: UserBatch, actions: np.ndarray, rng: np.random.Generator) -> StepResult:
        assert self.propagation is not None
        res = self.world.step(batch, actions, rng, self.viral_response)
        clicked = res.click
        if self.autoreset_mode is AutoresetMode.NEXT_STEP and self._autoreset.any():
            clicked = clicked & ~self._autoreset  # these slots' step is discarded: it shares nothing
        rows = np.flatnonzero(clicked)
        shown_creative = actions[:, 2].astype(np.int64)  # World.step checked the actions
        share = np.zeros(self.num_envs, dtype=bool)
        p_share = self.propagation.p_share[np.arange(self.num_envs), shown_creative]  # given a click
        share[rows] = self._social_rng.random(rows.size) < p_share[rows]
        sharers = np.flatnonzero(share)
        c = shown_creative[sharers]
        at = batch.epoch[sharers] - 1  # the impression's epoch (the step moved the user past it)
        cascade = self.propagation.cascade(sharers, c, at, self.exposed, self._social_rng)
        self._share, self._p_share, self._cascade = share, p_share, cascade
        return res._replace(reward=res.reward + cascade.credit)

    def _observe(self, batch: UserBatch, rows: np.ndarray | None = None) -> np.ndarray:
        obs = self.layout.encode(batch)
        cols = self.layout.social_cols
        idx = slice(None) if rows is None else rows
        obs[:, cols[0]] = self.friends_log[idx]
        obs[:, cols[1]] = np.count_nonzero(self.exposed[idx] <= batch.epoch[:, None], axis=1)
        return obs

    def _step_info(self, res: StepResult, batch: UserBatch, valid: np.ndarray) -> dict[str, Any]:
        info = super()._step_info(res, batch, valid)
        cascade = self._cascade
        assert cascade is not None
        for key, value in zip(
            VIRAL_INFO_KEYS, (self._share, self._p_share, cascade.reached, cascade.organic_conversions), strict=True
        ):
            info[key], info[f"_{key}"] = value, valid
        return info


def make_viral_vector_env(
    num_envs: int | None = None,
    scenario: Scenario | Path | str | None = None,
    behavior_model: BehaviorModel | None = None,
    autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP,
    render_mode: str | None = None,
) -> ViralVectorEnv:
    """Vector entry point of ``adrl/AdPlacement-Viral-v0``: ``num_envs`` is the size of the graph."""
    return ViralVectorEnv(num_envs, scenario, behavior_model, autoreset_mode, render_mode)


class ViralAdPlacementEnv(gym.Env[np.ndarray, np.ndarray]):
    """One user's day inside the population of ``adrl/AdPlacement-Viral-v0`` (``gym.make``).

    Each episode follows one user of the graph (drawn from ``self.np_random`` at ``reset``) while every other
    user acts uniformly at random; the reward is that user's, shares' credit included. Spaces are the base env's.

    Args:
        scenario: as :class:`ViralVectorEnv`; the population is ``social.n_users`` users.
        behavior_model: as :class:`ViralVectorEnv`.
        render_mode: must be None.
    """

    metadata: dict[str, Any] = {"render_modes": []}  # noqa: RUF012 (Gymnasium's name)

    def __init__(
        self,
        scenario: Scenario | Path | str | None = None,
        behavior_model: BehaviorModel | None = None,
        render_mode: str | None = None,
    ) -> None:
        if render_mode is not None:
            raise ConfigError(f"ViralAdPlacementEnv does not render (render_mode={render_mode!r})")
        self.population = ViralVectorEnv(None, scenario, behavior_model)
        self.scenario = self.population.scenario
        self.action_space = self.population.single_action_space
        self.observation_space: spaces.Box = self.population.single_observation_space  # type: ignore[assignment]
        self.render_mode = None
        self._user = -1
        self._done = True

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """A new day for the whole population, following one user drawn at random."""
        super().reset(seed=seed)
        if options:
            raise ConfigError(f"ViralAdPlacementEnv.reset takes no options, got {sorted(options)}")
        obs, info = self.population.reset(seed=int(self.np_random.integers(2**63 - 1)))
        self._user = int(self.np_random.integers(self.population.num_envs))
        self._done = False
        return obs[self._user], {"segment": int(info["segment"][self._user]), "hour": int(info["hour"][self._user]),
                                 "user": self._user}  # fmt: skip

    def step(self, action: np.ndarray) -> tuple[np.ndarray, SupportsFloat, bool, bool, dict[str, Any]]:
        """The followed user takes ``action``; everyone else a uniform random one."""
        if self._done:
            raise ResetNeeded("step() called before reset() or after the episode ended; call env.reset(seed=...)")
        a = np.asarray(action)
        if a.shape != (3,) or not self.action_space.contains(a.astype(np.int64)):
            raise InvalidAction(f"action {action!r} is not in {self.action_space}: expected (delay, slot, creative)")
        pop = self.population
        actions = self.np_random.integers(0, np.array(self.scenario.action_nvec), size=(pop.num_envs, 3))
        actions[self._user] = a
        obs, reward, terminated, truncated, info = pop.step(actions)
        u = self._user
        self._done = bool(terminated[u] or truncated[u])
        step_info = {k: v[u].item() for k, v in info.items() if not k.startswith("_")}  # plain Python values
        return obs[u], float(reward[u]), bool(terminated[u]), bool(truncated[u]), step_info
