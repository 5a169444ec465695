"""Tabular Q-learning over a discretized state and the flat (delay, slot, creative) action, on a vector env.

State = (segment, preferred category by signal, hour-of-day bin, hours since the last ad, impressions in the last
6 h), all observable. Update, for a batch of transitions from every sub-env at once:

    Q[s, a] += α(s, a) · (r + γ · (1 − done) · max_a' Q[s', a'] − Q[s, a]),   α(s, a) = max(α_min, N(s, a)^−ω)

where N counts visits, so rarely seen pairs learn fast and frequent ones average out noise. Exploration is
ε-greedy with ε decaying linearly from ``epsilon_start`` to ``epsilon_end`` over ``epsilon_decay`` of the budget.
The learned policy is greedy in Q: ``action_probabilities`` is one-hot.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import numpy as np

from adrl.actions import unflatten
from adrl.agents.base import EpisodeTracker, Learner, check_obs, next_step_autoreset, one_hot
from adrl.agents.discretizer import PREFERRED_CATEGORY, StateDiscretizer
from adrl.agents.registry import agent_params, read_learner, register_kind, write_learner_manifest
from adrl.errors import ArtifactError
from adrl.io import load_npy
from adrl.scenario import HOURS_PER_DAY, Scenario


def state_bins(hour_bin: int, max_gap: int, max_recent: int) -> dict[str, tuple[float, ...] | None]:
    """The agent's state: segment × preferred category × hour bin × hours since the last ad × ads in the last 6 h."""
    if not (1 <= hour_bin <= HOURS_PER_DAY and HOURS_PER_DAY % hour_bin == 0):
        raise ValueError(f"hour_bin must divide 24, got {hour_bin}")
    if max_gap < 1 or max_recent < 1:
        raise ValueError(f"max_gap and max_recent must be >= 1, got {max_gap}, {max_recent}")
    return {
        "segment": None,
        PREFERRED_CATEGORY: None,
        # an edge above every value makes a single bin
        "hour": tuple(float(h) for h in range(hour_bin, HOURS_PER_DAY, hour_bin)) or (float(HOURS_PER_DAY),),
        "hours_since_last_ad": tuple(float(g) for g in range(2, max_gap + 1)) or (float(HOURS_PER_DAY + 1),),
        "impressions_6h": tuple(float(k) for k in range(1, max_recent + 1)),
    }


@dataclass(frozen=True)
class QLearningConfig:
    gamma: float = 0.98
    lr_exponent: float = 0.6
    lr_min: float = 0.01
    epsilon_start: float = 1.0
    epsilon_end: float = 0.02
    epsilon_decay: float = 0.6
    hour_bin: int = 2
    max_gap: int = 5
    max_recent: int = 3
    log_every: int = 200_000

    def __post_init__(self) -> None:
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"gamma must be in [0, 1], got {self.gamma}")
        if not 0.5 < self.lr_exponent <= 1.0:
            raise ValueError(f"lr_exponent must be in (0.5, 1], got {self.lr_exponent}")
        if not 0.0 <= self.epsilon_end <= self.epsilon_start <= 1.0:
            raise ValueError(
                f"need 0 <= epsilon_end <= epsilon_start <= 1, got {self.epsilon_end}, {self.epsilon_start}"
            )
        if not 0.0 < self.epsilon_decay <= 1.0:
            raise ValueError(f"epsilon_decay must be in (0, 1], got {self.epsilon_decay}")
        if self.log_every < 1:
            raise ValueError(f"log_every must be >= 1, got {self.log_every}")


class TabularQAgent(Learner):
    """Tabular Q-learning; see the module docstring for the update and exploration."""

    kind = "tabular-q"
    version = 1

    def __init__(self, scenario: Scenario, config: QLearningConfig | None = None, *, seed: int | None = None) -> None:
        self._start(scenario, config or QLearningConfig(), seed)
        c = self.config
        self.discretizer = StateDiscretizer(self.layout, state_bins(c.hour_bin, c.max_gap, c.max_recent))
        self.n_actions = scenario.n_actions
        self.q = np.zeros((self.discretizer.n_states, self.n_actions))
        self.visits = np.zeros((self.discretizer.n_states, self.n_actions), dtype=np.int64)

    # ---- policy ------------------------------------------------------------------------------------------------
    def greedy_actions(self, states: np.ndarray) -> np.ndarray:
        return self.q[states].argmax(axis=1)

    def predict(self, obs: np.ndarray, *, deterministic: bool = True) -> np.ndarray:
        x = check_obs(obs, self.obs_dim)
        return unflatten(self.greedy_actions(self.discretizer.discretize(x)), self.nvec)

    def action_probabilities(self, obs: np.ndarray) -> np.ndarray:
        x = check_obs(obs, self.obs_dim)
        return one_hot(self.greedy_actions(self.discretizer.discretize(x)), self.n_actions)

    def epsilon_at(self, step: int, total_steps: int) -> float:
        c = self.config
        frac = min(1.0, step / max(1.0, c.epsilon_decay * total_steps))
        return c.epsilon_start + frac * (c.epsilon_end - c.epsilon_start)

    # ---- learning ----------------------------------------------------------------------------------------------
    def learn(self, env: Any, total_steps: int, *, callback: Any = None, seed: int | None = None) -> Self:
        """Train on a Gymnasium vector env until ``total_steps`` user-decisions (counting earlier ones on resume).

        ``callback(agent, steps_done, stats) -> bool`` is called every ``log_every`` steps; False stops training.
        """
        c = self.config
        n = int(env.num_envs)
        next_step = next_step_autoreset(env)
        obs, _ = env.reset(seed=seed if seed is not None else int(self.rng.integers(2**31)))
        state = self.discretizer.discretize(obs)
        valid = np.ones(n, dtype=bool)
        tracker = EpisodeTracker(n)
        next_log = self.steps_done + c.log_every
        td_sum, td_n = 0.0, 0
        while self.steps_done < total_steps:
            eps = self.epsilon_at(self.steps_done, total_steps)
            action = self.greedy_actions(state)
            explore = self.rng.random((n,)) < eps
            action[explore] = self.rng.integers(0, self.n_actions, size=int(explore.sum()))
            next_obs, reward, terminated, truncated, _ = env.step(unflatten(action, self.nvec))
            next_state = self.discretizer.discretize(next_obs)
            done = terminated | truncated
            s, a = state[valid], action[valid]
            if s.size:
                r, d, s2 = reward[valid], done[valid], next_state[valid]
                target = r + c.gamma * np.where(d, 0.0, self.q[s2].max(axis=1))
                np.add.at(self.visits, (s, a), 1)
                lr = np.maximum(c.lr_min, self.visits[s, a].astype(np.float64) ** -c.lr_exponent)
                td = target - self.q[s, a]
                np.add.at(self.q, (s, a), lr * td)
                td_sum += float(np.square(td).sum())
                td_n += int(td.size)
            tracker.update(reward, done, valid)
            self.steps_done += int(valid.sum())
            valid = ~done if next_step else np.ones(n, dtype=bool)
            state = next_state
            if self.steps_done >= next_log or self.steps_done >= total_steps:
                next_log = self.steps_done + c.log_every
                stats = {
                    "mean_return": tracker.pop_mean(),
                    "episodes": float(tracker.n_episodes),
                    "epsilon": eps,
                    "loss": td_sum / max(td_n, 1),
                }
                td_sum, td_n = 0.0, 0
                if callback is not None and callback(self, self.steps_done, stats) is False:
                    break
        return self

    # ---- persistence -------------------------------------------------------------------------------------------
    def save(self, path: Path | str) -> None:
        arrays = {"q.npy": self.q, "visits.npy": self.visits}
        write_learner_manifest(path, self, {"n_states": self.discretizer.n_states}, arrays=arrays)

    @classmethod
    def load(cls, path: Path | str) -> TabularQAgent:
        path = Path(path)
        agent, manifest = read_learner(cls, QLearningConfig, path)
        shape = (agent.discretizer.n_states, agent.n_actions)
        if manifest.get("n_states") != shape[0]:
            raise ArtifactError(f"{path}/manifest.json: n_states {manifest.get('n_states')} != {shape[0]}")
        agent.q = load_npy(path / "q.npy", shape=shape).astype(np.float64)
        agent.visits = load_npy(path / "visits.npy", shape=shape).astype(np.int64)
        if not np.all(np.isfinite(agent.q)):
            raise ArtifactError(f"{path}/q.npy holds NaN or infinite values")
        return agent


def build(name: str, scenario: Scenario, params: dict[str, Any], *, seed: int | None, **_: Any) -> TabularQAgent:
    return TabularQAgent(scenario, agent_params(QLearningConfig, params, name), seed=seed)


register_kind(TabularQAgent.kind, TabularQAgent.load)
