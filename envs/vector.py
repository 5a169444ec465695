"""``AdPlacementVectorEnv``: ``num_envs`` users' days stepped together by one ``World.step`` call per step.

The state of every slot lives in one :class:`~adrl.world.UserBatch` that ``World.step`` advances in place; the
response backend (ground truth or learned) is called once per step for the whole batch. Finished slots are
refilled with ``World.sample_users(k, rng)`` + ``UserBatch.assign``, so no per-step copy of the batch is made.

Autoreset follows ``gymnasium.vector.AutoresetMode``:

- ``NEXT_STEP`` (default, Gymnasium's default): the step after ``terminated | truncated`` returns the new user's
  first observation with reward 0 and ``terminated = truncated = False``; the action given for that slot is
  ignored. Mask those steps when training (see STYLE.md).
- ``SAME_STEP``: a finished slot is refilled in the same step; its last observation is in
  ``info["final_obs"]`` (object array, ``None`` elsewhere, mask ``info["_final_obs"]``) and its step info in
  ``info["final_info"]``. This is what the SB3 adapter (:mod:`adrl.envs.sb3`) uses.

Random streams: one ``Generator`` (``self.np_random``, seeded by ``reset(seed=...)``) drives the whole batch.
With ``num_envs=1`` the draws are exactly those of :class:`~adrl.envs.ad_placement.AdPlacementEnv` reset with the
same seed and stepped with the same actions (reset users are drawn at the point the single env's ``reset()`` would
draw them), so trajectories are identical in both modes. With ``num_envs > 1`` the users share one stream, so
trajectories differ from N independent single envs by design; the distribution of every episode is the same
(tests check mean returns agree within their confidence interval).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from adrl.envs.ad_placement import BehaviorModel, require_behavior_model, resolve_response
from adrl.errors import ConfigError, InvalidAction, ResetNeeded
from adrl.features import FeatureLayout
from adrl.scenario import Scenario, resolve_scenario
from adrl.world import StepResult, UserBatch, World

STEP_INFO_KEYS = ("p_click", "p_conversion", "p_leave", "hour", "shown", "click", "conversion", "leave", "segment")


class AdPlacementVectorEnv(VectorEnv[np.ndarray, np.ndarray, np.ndarray]):
    """``num_envs`` users stepped together: the native fast path (see the module docstring for autoreset).

    Observations are float32 ``(num_envs, obs_dim)``; actions int ``(num_envs, 3)`` = (delay, slot, creative);
    rewards float64, ``terminated`` / ``truncated`` bool, each ``(num_envs,)``. ``info`` holds arrays for the keys
    of the single env's info (``p_click`` ... ``segment``), each with its ``_key`` mask (Gymnasium's vector-info
    convention).

    Args:
        num_envs: users stepped together (>= 1).
        scenario: a Scenario, a YAML path, or None for the default market.
        behavior_model: None for the ground-truth world, a ``ResponseModel`` object, or a path to a fitted model.
        autoreset_mode: ``AutoresetMode.NEXT_STEP`` (default) or ``AutoresetMode.SAME_STEP`` (or their values).
        render_mode: must be None (render one user with the single env).

    Example:
        >>> envs = AdPlacementVectorEnv(num_envs=4)
        >>> obs, info = envs.reset(seed=0)
        >>> obs.shape == (4, envs.single_observation_space.shape[0])
        True
        >>> obs, reward, terminated, truncated, info = envs.step(envs.action_space.sample())
        >>> reward.shape, info["p_click"].shape
        ((4,), (4,))
    """

    metadata: dict[str, Any] = {"render_modes": [], "autoreset_mode": AutoresetMode.NEXT_STEP}  # noqa: RUF012

    def __init__(
        self,
        num_envs: int = 1,
        scenario: Scenario | Path | str | None = None,
        behavior_model: BehaviorModel | None = None,
        autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP,
        render_mode: str | None = None,
    ) -> None:
        if not isinstance(num_envs, int | np.integer) or num_envs < 1:
            raise ConfigError(f"num_envs must be an integer >= 1, got {num_envs!r}")
        try:
            mode = AutoresetMode(autoreset_mode)
        except ValueError:
            mode = None
        if mode not in (AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP):
            raise ConfigError(f"autoreset_mode must be 'NextStep' or 'SameStep', got {autoreset_mode!r}")
        if render_mode is not None:
            raise ConfigError(f"AdPlacementVectorEnv does not render (render_mode={render_mode!r}); use AdPlacementEnv")
        self.num_envs = int(num_envs)
        self.scenario = resolve_scenario(scenario)
        self.world = World(self.scenario)
        self.layout = FeatureLayout.from_scenario(self.scenario)
        self.response = resolve_response(behavior_model, self.scenario)
        self.autoreset_mode = mode
        self.metadata = {**type(self).metadata, "autoreset_mode": mode}
        self.render_mode = None
        self.single_observation_space = spaces.Box(self.layout.obs_low, self.layout.obs_high, dtype=np.float32)
        self.single_action_space = spaces.MultiDiscrete(np.array(self.scenario.action_nvec, dtype=np.int64))
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self._batch: UserBatch | None = None
        self._autoreset = np.zeros(self.num_envs, dtype=bool)  # NEXT_STEP: these slots reset at the next step

    @property
    def backend(self) -> str:
        """``"ground-truth"`` or the class name of the learned response model."""
        return "ground-truth" if self.response is None else type(self.response).__name__

    @property
    def users(self) -> UserBatch:
        """The live batch of users (hidden state included), e.g. for diagnostics; do not resize it."""
        if self._batch is None:
            raise ResetNeeded("no users yet; call envs.reset(seed=...) first")
        return self._batch

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start ``num_envs`` new days; ``seed`` (an int) seeds the one generator of the whole batch."""
        if seed is not None and not isinstance(seed, int | np.integer):
            raise ConfigError(f"seed must be an int (one generator drives the whole batch), got {type(seed).__name__}")
        super().reset(seed=seed)
        if options:
            raise ConfigError(f"AdPlacementVectorEnv.reset takes no options, got {sorted(options)}")
        self._batch = self._first_days(self.np_random)
        self._autoreset[:] = False
        obs = self._observe(self._batch)
        hour = np.full(self.num_envs, self.scenario.hour_of_epoch(0), dtype=np.int64)
        every = np.ones(self.num_envs, dtype=bool)
        info = {"segment": self._batch.segment.copy(), "_segment": every, "hour": hour, "_hour": every}
        return obs, info

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Step every slot with ``actions`` (num_envs, 3); see the module docstring for autoreset.

        Raises:
            ResetNeeded: before ``reset``.
            InvalidAction: ``actions`` is not (num_envs, 3) integers inside the action space.
        """
        batch = self._batch
        if batch is None:
            raise ResetNeeded("step() called before reset(); call envs.reset(seed=...) first")
        a = np.asarray(actions)
        if a.shape != (self.num_envs, 3):
            raise InvalidAction(
                f"actions must have shape (num_envs, 3) = ({self.num_envs}, 3) of (delay, slot, creative), "
                f"got {a.shape}"
            )
        if self.autoreset_mode is AutoresetMode.NEXT_STEP:
            return self._step_next(batch, a)
        return self._step_same(batch, a)

    def _step_next(
        self, batch: UserBatch, actions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        rng = self.np_random
        pending = self._autoreset
        if not pending.any():
            res = self._world_step(batch, actions, rng)
            info = self._step_info(res, batch, np.ones(self.num_envs, dtype=bool))
            reward, terminated, truncated = res.reward, res.terminated, res.truncated
        else:
            self.world.check_actions(actions)  # also for the slots that ignore theirs
            fresh = self._new_days(pending, rng)  # where N single envs would call reset()
            batch.assign(pending, fresh)
            if pending.all():
                n = self.num_envs
                reward, terminated, truncated = np.zeros(n), np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
                info = {}
            else:
                # step everyone (one vectorised call), then put the fresh users back: their step never happened
                res = self._world_step(batch, actions, rng)
                batch.assign(pending, fresh)
                info = self._step_info(res, batch, ~pending)
                for key in STEP_INFO_KEYS[:-1]:  # no phantom clicks: the discarded step leaves no trace
                    info[key][pending] = 0
                reward, terminated, truncated = res.reward, res.terminated, res.truncated
                reward[pending] = 0.0
                terminated[pending] = False
                truncated[pending] = False
            every = np.ones(self.num_envs, dtype=bool)
            info["segment"], info["_segment"] = batch.segment.copy(), every
            hour = info.get("hour", np.zeros(self.num_envs, dtype=np.int64))
            hour[pending] = self.scenario.hour_of_epoch(0)
            info["hour"], info["_hour"] = hour, every
        self._autoreset = terminated | truncated
        return self._observe(batch), reward, terminated, truncated, info

    def _step_same(
        self, batch: UserBatch, actions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        rng = self.np_random
        res = self._world_step(batch, actions, rng)
        info = self._step_info(res, batch, np.ones(self.num_envs, dtype=bool))
        obs = self._observe(batch)
        done = res.terminated | res.truncated
        if done.any():
            rows = np.flatnonzero(done)
            final_obs = np.full(self.num_envs, None, dtype=object)
            final_obs[rows] = list(obs[rows])
            info["final_obs"], info["_final_obs"] = final_obs, done
            info["final_info"] = {
                **{k: info[k].copy() if k in ("segment", "hour") else info[k] for k in STEP_INFO_KEYS},
                **{f"_{k}": done for k in STEP_INFO_KEYS},
            }
            fresh = self._new_days(done, rng)  # where a single env's reset() would draw
            batch.assign(rows, fresh)
            obs[rows] = self._observe(fresh, rows)
            info["segment"][rows] = fresh.segment
            info["hour"][rows] = self.scenario.hour_of_epoch(0)
        return obs, res.reward, res.terminated, res.truncated, info

    # ---- hooks of the population env (adrl.envs.viral); here they are the independent users' dynamics ------------
    def _first_days(self, rng: np.random.Generator) -> UserBatch:
        """The users at ``reset``."""
        return self.world.sample_users(self.num_envs, rng)

    def _new_days(self, rows: np.ndarray, rng: np.random.Generator) -> UserBatch:
        """Users starting a day in the slots of the bool mask ``rows`` (autoreset)."""
        return self.world.sample_users(int(np.count_nonzero(rows)), rng)

    def _world_step(self, batch: UserBatch, actions: np.ndarray, rng: np.random.Generator) -> StepResult:
        """One decision for every slot."""
        return self.world.step(batch, actions, rng, self.response)

    def _observe(self, batch: UserBatch, rows: np.ndarray | None = None) -> np.ndarray:
        """Observations of ``batch``: every slot, or the slots ``rows`` (indices) when ``batch`` holds just those."""
        return self.layout.encode(batch)

    def _step_info(self, res: StepResult, batch: UserBatch, valid: np.ndarray) -> dict[str, Any]:
        """Vector info of one step: arrays for STEP_INFO_KEYS, each with its ``_key`` mask ``valid``."""
        resp = res.response
        values = (
            resp.p_click,
            resp.p_conversion,
            resp.p_leave,
            res.hour,
            res.shown,
            res.click,
            res.conversion,
            res.leave,
            batch.segment.copy(),
        )
        info: dict[str, Any] = {}
        for key, value in zip(STEP_INFO_KEYS, values, strict=True):
            info[key], info[f"_{key}"] = value, valid
        return info

    def close_extras(self, **kwargs: Any) -> None:
        """Nothing to release: the batch lives in this process."""
        self._batch = None


def make_learned_vector_env(
    num_envs: int = 1,
    scenario: Scenario | Path | str | None = None,
    behavior_model: BehaviorModel | None = None,
    autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP,
    render_mode: str | None = None,
) -> AdPlacementVectorEnv:
    """Vector entry point of ``adrl/AdPlacement-Learned-v0``: requires ``behavior_model``."""
    return AdPlacementVectorEnv(num_envs, scenario, require_behavior_model(behavior_model), autoreset_mode, render_mode)
