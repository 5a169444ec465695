"""The learned simulator's pessimistic mode: reward − λ · disagreement of the behavior ensemble (MOPO).

:class:`PessimisticVectorEnv` wraps an :class:`~adrl.envs.vector.AdPlacementVectorEnv` driven by an ensemble
response (anything with ``last_disagreement``, e.g. :class:`adrl.behavior.ensemble.EnsembleResponse`, which sets
it on every ``probabilities`` call). Each step it reports the members' disagreement of the step's impressions in
``info["disagreement"]`` (``(num_envs,)``, 0 where no impression was scored) and returns

    reward_t − λ · disagreement_t

(Yu et al. 2020, MOPO: a policy trained on this penalised model maximises a lower bound of its true return when
the disagreement bounds the model's error). λ = 0 leaves rewards unchanged and only reports the disagreement.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv, VectorWrapper

from adrl.errors import ConfigError


class PessimisticVectorEnv(VectorWrapper):
    """Penalise each step's reward by ``penalty`` × the ensemble's disagreement; see the module docstring.

    Args:
        env: a native vector env whose ``unwrapped.response`` has ``last_disagreement`` (n,) after each call.
        penalty: λ >= 0 (None: the response's own ``penalty``, the default recorded in its artifact).
    """

    def __init__(self, env: VectorEnv, penalty: float | None = None) -> None:
        super().__init__(env)
        response = getattr(env.unwrapped, "response", None)
        if response is None or not hasattr(response, "last_disagreement"):
            raise ConfigError(
                "the pessimistic mode needs a learned env driven by a behavior ensemble (adrl.behavior.ensemble); "
                f"this env's response is {type(response).__name__}"
            )
        lam = float(getattr(response, "penalty", 0.0) if penalty is None else penalty)
        if not (lam >= 0 and np.isfinite(lam)):
            raise ConfigError(f"penalty must be a finite number >= 0, got {penalty!r}")
        self.penalty = lam
        self._response = response
        mode = env.unwrapped.metadata.get("autoreset_mode")
        self._next_step = getattr(mode, "value", mode) == AutoresetMode.NEXT_STEP.value
        self._pending = np.zeros(self.num_envs, dtype=bool)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:  # type: ignore[override, unused-ignore]
        self._pending[:] = False
        return self.env.reset(seed=seed, options=options)

    def step(self, actions: Any) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:  # type: ignore[override, unused-ignore]
        self._response.last_disagreement = np.zeros(0)
        obs, reward, terminated, truncated, info = self.env.step(actions)
        d = np.asarray(self._response.last_disagreement, dtype=np.float64)
        if d.shape != (self.num_envs,):  # no call this step (every slot was resetting)
            d = np.zeros(self.num_envs)
        shown = np.asarray(info.get("shown", np.ones(self.num_envs, dtype=bool)), dtype=bool)
        valid = shown & ~self._pending if self._next_step else shown
        d = np.where(valid, d, 0.0)
        info = {**info, "disagreement": d, "_disagreement": np.ones(self.num_envs, dtype=bool)}
        if self._next_step:
            self._pending = np.asarray(terminated | truncated, dtype=bool)
        return obs, np.asarray(reward, dtype=np.float64) - self.penalty * d, terminated, truncated, info
