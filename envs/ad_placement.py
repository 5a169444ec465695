"""``AdPlacementEnv``: one user's day as a Gymnasium episode, stepped by the shared ``World.step`` (a batch of one).

Each step the agent picks (delay, slot, creative): wait ``delays[delay]`` hours, then show ``creative`` in ``slot``.
With impression outcomes click ~ Bernoulli(p_click), conversion ~ Bernoulli(p_conversion) given a click and
leave ~ Bernoulli(p_leave),

    reward = click_value * click + conversion_weight * conversion_value[creative] * conversion - cost[slot]

(0 when the delay runs past the day and nothing is shown). ``terminated`` means the user left, ``truncated`` that
the day ended. The probabilities come from a response backend: the ground-truth world (default) or a learned
behavior model; the environment only does bookkeeping and sampling, so both backends share every other line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from adrl.envs.registration import LEARNED_ID
from adrl.errors import ConfigError, InvalidAction, ResetNeeded
from adrl.features import FeatureLayout
from adrl.protocols import ResponseModel
from adrl.scenario import Scenario, resolve_scenario
from adrl.world import StepResult, UserBatch, World

BehaviorModel = ResponseModel | Path | str


def resolve_response(behavior_model: BehaviorModel | None, scenario: Scenario) -> ResponseModel | None:
    """The response backend: None for the ground truth, a ``ResponseModel`` as is, or a path to a behavior model.

    A path is loaded with ``adrl.behavior.LearnedResponse.load(path, scenario=scenario)`` (imported lazily).

    Raises:
        ConfigError: ``behavior_model`` is neither a path nor an object with ``probabilities(batch, action)``, or
            the behavior package is unavailable.
    """
    if behavior_model is None:
        return None
    if isinstance(behavior_model, str | Path):
        try:
            from adrl.behavior import LearnedResponse
        except ImportError as e:
            raise ConfigError(
                f"cannot load behavior model {str(behavior_model)!r}: adrl.behavior.LearnedResponse is not "
                f"available ({e}); pass a ResponseModel object instead"
            ) from e
        model: ResponseModel = LearnedResponse.load(behavior_model, scenario=scenario)
        return model
    if isinstance(behavior_model, ResponseModel):
        return behavior_model
    raise ConfigError(
        f"behavior_model must be a path to a fitted behavior model or an object with "
        f"probabilities(batch, action) -> Response, got {type(behavior_model).__name__}"
    )


def require_behavior_model(behavior_model: BehaviorModel | None) -> BehaviorModel:
    """The learned ids need a model; say how to get one when it is missing."""
    if behavior_model is None:
        raise ConfigError(
            f"{LEARNED_ID} needs behavior_model=<path or ResponseModel>, e.g. "
            f'gym.make("{LEARNED_ID}", behavior_model="runs/behavior") after '
            "`adrl fit --logs runs/logs.parquet --out runs/behavior`"
        )
    return behavior_model


class AdPlacementEnv(gym.Env[np.ndarray, np.ndarray]):
    """One user's day; each step picks when, where and which ad is shown next (``MultiDiscrete``).

    Observation: the :class:`~adrl.features.FeatureLayout` vector, float32 of shape ``(obs_dim,)`` inside
    ``Box(obs_low, obs_high)``. Action: ``MultiDiscrete([n_delays, n_slots, n_creatives])``. ``info`` holds plain
    Python values: ``p_click``, ``p_conversion`` (given a click), ``p_leave`` (the probabilities used), ``hour`` (of
    the impression), ``shown``, ``click``, ``conversion``, ``leave`` and ``segment``; ``reset`` gives ``segment``
    and ``hour``.

    Seeding follows Gymnasium: ``reset(seed=s)`` re-seeds ``self.np_random``, from which every draw comes (a user
    from ``World.sample_users(1, rng)``, then ``rng.random((1, 3))`` per step). The same seed and actions give the
    same episode, and the same draws as :class:`~adrl.envs.vector.AdPlacementVectorEnv` with ``num_envs=1``.

    Args:
        scenario: a Scenario, a YAML path, or None for the default market.
        behavior_model: None for the ground-truth world, a ``ResponseModel`` object, or a path to a fitted
            behavior model (loaded with ``adrl.behavior.LearnedResponse.load``).
        render_mode: None or ``"ansi"`` (``render()`` returns the day's timeline as text).

    Example:
        >>> env = AdPlacementEnv()
        >>> obs, info = env.reset(seed=0)
        >>> obs.shape == env.observation_space.shape and env.observation_space.contains(obs)
        True
        >>> obs, reward, terminated, truncated, info = env.step(np.array([0, 1, 4]))
        >>> sorted(info)[:3]
        ['click', 'conversion', 'hour']
    """

    metadata: dict[str, Any] = {"render_modes": ["ansi"], "render_fps": 4}  # noqa: RUF012 (Gymnasium's name)

    def __init__(
        self,
        scenario: Scenario | Path | str | None = None,
        behavior_model: BehaviorModel | None = None,
        render_mode: str | None = None,
    ) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            modes = self.metadata["render_modes"]
            raise ConfigError(f"render_mode must be None or one of {modes}, got {render_mode!r}")
        self.scenario = resolve_scenario(scenario)
        self.world = World(self.scenario)
        self.layout = FeatureLayout.from_scenario(self.scenario)
        self.response = resolve_response(behavior_model, self.scenario)
        self.render_mode = render_mode
        self.action_space = spaces.MultiDiscrete(np.array(self.scenario.action_nvec, dtype=np.int64))
        self.observation_space = spaces.Box(self.layout.obs_low, self.layout.obs_high, dtype=np.float32)
        self._batch: UserBatch | None = None
        self._done = False
        self._left = False
        self._return = 0.0
        self._timeline: list[str] = []

    @property
    def backend(self) -> str:
        """``"ground-truth"`` or the class name of the learned response model."""
        return "ground-truth" if self.response is None else type(self.response).__name__

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start a new user's day; ``options`` is accepted for the Gymnasium API but takes no keys."""
        super().reset(seed=seed)
        if options:
            raise ConfigError(f"AdPlacementEnv.reset takes no options, got {sorted(options)}")
        self._batch = self.world.sample_users(1, self.np_random)
        self._done = False
        self._left = False
        self._return = 0.0
        info = {"segment": int(self._batch.segment[0]), "hour": self.scenario.hour_of_epoch(0)}
        if self.render_mode == "ansi":
            self._timeline = [self._header()]
        return self.layout.encode(self._batch)[0], info

    def step(self, action: np.ndarray) -> tuple[np.ndarray, SupportsFloat, bool, bool, dict[str, Any]]:
        """Take (delay, slot, creative); raises ``InvalidAction`` outside the action space.

        Raises:
            ResetNeeded: before ``reset`` or after the episode ended.
            InvalidAction: ``action`` is not three integers inside ``[n_delays, n_slots, n_creatives]``.
        """
        batch = self._batch
        if batch is None or self._done:
            when = "before reset()" if batch is None else "after the episode ended"
            raise ResetNeeded(f"step() called {when}; call env.reset(seed=...) first")
        a = np.asarray(action)
        if a.shape != (3,):
            raise InvalidAction(
                f"action {action!r} is not in {self.action_space}: expected (delay, slot, creative), shape (3,)"
            )
        res = self.world.step(batch, a.reshape(1, 3), self.np_random, self.response)
        terminated = res.terminated.item()
        truncated = res.truncated.item()
        self._done = terminated or truncated
        self._left = terminated
        reward = float(res.reward.item())
        self._return += reward
        resp = res.response
        info = {  # .item(): plain Python values
            "p_click": float(resp.p_click.item()),
            "p_conversion": float(resp.p_conversion.item()),
            "p_leave": float(resp.p_leave.item()),
            "hour": res.hour.item(),
            "shown": res.shown.item(),
            "click": res.click.item(),
            "conversion": res.conversion.item(),
            "leave": res.leave.item(),
            "segment": batch.segment.item(),
        }
        if self.render_mode == "ansi":
            self._timeline.append(self._line(a, res, reward))
        return self.layout.encode(batch)[0], reward, terminated, truncated, info

    # ---- rendering -----------------------------------------------------------------------------------------
    def render(self) -> str | None:  # type: ignore[override, unused-ignore]
        """The day so far as text (``render_mode="ansi"``): one line per decision, then the return."""
        if self.render_mode != "ansi":
            return None
        if self._batch is None:
            return "(no episode yet: call reset)\n"
        status = "the user left" if self._left else "the day is over" if self._done else "in progress"
        footer = f"return {self._return:+.3f} · {status}"
        return "\n".join([*self._timeline, footer]) + "\n"

    def _header(self) -> str:
        assert self._batch is not None
        sc = self.scenario
        seg = sc.segments[int(self._batch.segment[0])].name
        signal = " ".join(f"{c}={float(v):+.1f}" for c, v in zip(sc.categories, self._batch.signal[0], strict=True))
        head = f"user segment={seg} signal[{signal}] backend={self.backend}"
        cols = f"{'hour':>5}  {'wait':>4}  {'slot':<12} {'creative':<12} {'p_click':>7} {'p_leave':>7}  outcome"
        return f"{head}\n{cols}"

    def _line(self, action: np.ndarray, res: StepResult, reward: float) -> str:
        names = self.scenario.action_names(action)
        if not bool(res.shown[0]):
            return f"{'--:--':>6}  {names['delay_hours']:>3}h  (the day ended before the ad)"
        hour = int(res.hour[0])
        outcome = "click" if bool(res.click[0]) else "-"
        if bool(res.conversion[0]):
            outcome += " +conversion"
        outcome += f"  r={reward:+.3f}"
        if bool(res.leave[0]):
            outcome += "  LEFT"
        p = res.response
        return (
            f"{hour:>3}:00  {names['delay_hours']:>3}h  {names['slot']:<12} {names['creative']:<12} "
            f"{float(p.p_click[0]):>7.3f} {float(p.p_leave[0]):>7.3f}  {outcome}"
        )


def make_learned_env(
    scenario: Scenario | Path | str | None = None,
    behavior_model: BehaviorModel | None = None,
    render_mode: str | None = None,
) -> AdPlacementEnv:
    """Entry point of ``adrl/AdPlacement-Learned-v0``: an :class:`AdPlacementEnv` that requires ``behavior_model``."""
    return AdPlacementEnv(scenario, require_behavior_model(behavior_model), render_mode)
