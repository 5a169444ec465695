"""The learned simulator's pessimistic modes: reward − λ · disagreement of the behavior ensemble (MOPO) − κ · the
width of the logged support (count-based).

:class:`PessimisticVectorEnv` wraps an :class:`~adrl.envs.vector.AdPlacementVectorEnv` driven by an ensemble
response (anything with ``last_disagreement``, e.g. :class:`adrl.behavior.ensemble.EnsembleResponse`, which sets
it on every ``probabilities`` call). Each step it reports the members' disagreement of the step's impressions in
``info["disagreement"]`` (``(num_envs,)``, 0 where no impression was scored) and returns

    reward_t − λ · disagreement_t − κ · u_t

(Yu et al. 2020, MOPO: a policy trained on this penalised model maximises a lower bound of its true return when
the disagreement bounds the model's error). u_t is the count-based width of :mod:`adrl.behavior.support`,
sqrt(Var[r] / (n + 1)) with n the logged impressions of the step's (binned state, delay, slot) cell, reported in
``info["support_width"]`` and ``info["support_count"]`` when the ensemble carries its logs' support. Members
fitted on the same logs share their bias where the logs are thin, so they need not disagree there; the count
says so regardless. λ = κ = 0 leave rewards unchanged and only report.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv, VectorWrapper

from adrl.errors import ConfigError


def pessimism_weights(
    response: Any, penalty: float | None = None, support_penalty: float | None = None
) -> tuple[float, float]:
    """(λ, κ) of the pessimistic mode: each given weight, else the response's own (0 for a response without one).

    Raises:
        ConfigError: a weight is negative or not finite, or κ > 0 for a response without a logged support.
    """
    lam = float(getattr(response, "penalty", 0.0) if penalty is None else penalty)
    if not (lam >= 0 and np.isfinite(lam)):
        raise ConfigError(f"penalty must be a finite number >= 0, got {penalty!r}")
    kappa = float(getattr(response, "support_penalty", 0.0) if support_penalty is None else support_penalty)
    if not (kappa >= 0 and np.isfinite(kappa)):
        raise ConfigError(f"support_penalty must be a finite number >= 0, got {support_penalty!r}")
    if kappa > 0 and getattr(response, "support", None) is None:
        raise ConfigError(
            "support_penalty > 0 needs an ensemble that carries its logs' support (fit it with this adrl version)"
        )
    return lam, kappa


class PessimisticVectorEnv(VectorWrapper):
    """Penalise each step's reward by λ × the ensemble's disagreement and κ × the support width (module docstring).

    Args:
        env: a native vector env whose ``unwrapped.response`` has ``last_disagreement`` (n,) after each call.
        penalty: λ >= 0 (None: the response's own ``penalty``, the default recorded in its artifact).
        support_penalty: κ >= 0 (None: the response's own ``support_penalty``); κ > 0 needs a response with a
            logged support (``last_support_width``).
    """

    def __init__(self, env: VectorEnv, penalty: float | None = None, support_penalty: float | None = None) -> None:
        super().__init__(env)
        response = getattr(env.unwrapped, "response", None)
        if response is None or not hasattr(response, "last_disagreement"):
            raise ConfigError(
                "the pessimistic mode needs a learned env driven by a behavior ensemble (adrl.behavior.ensemble); "
                f"this env's response is {type(response).__name__}"
            )
        self.penalty, self.support_penalty = pessimism_weights(response, penalty, support_penalty)
        self._has_support = getattr(response, "support", None) is not None
        self._response = response
        mode = env.unwrapped.metadata.get("autoreset_mode")
        self._next_step = getattr(mode, "value", mode) == AutoresetMode.NEXT_STEP.value
        self._pending = np.zeros(self.num_envs, dtype=bool)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:  # type: ignore[override, unused-ignore]
        self._pending[:] = False
        return self.env.reset(seed=seed, options=options)

    def step(self, actions: Any) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:  # type: ignore[override, unused-ignore]
        r = self._response
        r.last_disagreement = np.zeros(0)
        r.last_support_width = np.zeros(0)
        obs, reward, terminated, truncated, info = self.env.step(actions)
        shown = np.asarray(info.get("shown", np.ones(self.num_envs, dtype=bool)), dtype=bool)
        valid = shown & ~self._pending if self._next_step else shown
        every = np.ones(self.num_envs, dtype=bool)
        d = self._per_slot(r.last_disagreement, valid)
        info = {**info, "disagreement": d, "_disagreement": every}
        penalised = np.asarray(reward, dtype=np.float64) - self.penalty * d
        if self._has_support:
            u = self._per_slot(r.last_support_width, valid)
            n = np.where(valid, self._per_slot(r.last_support_count, valid), 0).astype(np.int64)
            info.update(support_width=u, _support_width=every, support_count=n, _support_count=every)
            penalised -= self.support_penalty * u
        if self._next_step:
            self._pending = np.asarray(terminated | truncated, dtype=bool)
        return obs, penalised, terminated, truncated, info

    def _per_slot(self, values: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """The response's last per-impression values, 0 where no impression was scored (or no call this step)."""
        v = np.asarray(values, dtype=np.float64)
        if v.shape != (self.num_envs,):  # no call this step (every slot was resetting)
            return np.zeros(self.num_envs)
        return np.where(valid, v, 0.0)
