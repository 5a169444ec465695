"""An oracle planner that sees the ground-truth world and every user's hidden state: the ceiling of every table.

In the ground-truth world the probabilities of a user's next impression depend on her interest, segment, the
hour, the slot, the creative and her fatigue; fatigue and the creative counts follow the actions alone (not the
clicks). So given the hidden state, the expected return of the rest of a day under any open-loop plan is exact:

    V(plan) = Σ_t S_t · (p_click,t · (click_value + conversion_weight · value_c · p_conv,t) − cost_t),
    S_t = Π_{u<t} (1 − p_leave,u)  (the chance she is still there).

:class:`OraclePlanner` is a rollout (one-step lookahead) planner (Bertsekas, *Rollout algorithms*): at each
decision it scores every first action (delay, slot, creative) followed by each of several base continuations
("every ``g`` hours, the best slot and creative by true immediate reward") with that exact formula, and takes the
first action of the best pair. Its expected return is at least that of every base continuation, so it is at least
as good as pacing with oracle targeting, and it replans each step. It is approximate (the continuations are not
every plan) and is a benchmark tool, not a deployable policy: it reads the hidden state.

Run ``python -m benchmarks.oracle --users 1000`` for its return on the default market (JSON).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from adrl.scenario import Scenario
from adrl.world import UserBatch, World

DEFAULT_GAPS = (1, 2, 3, 4, 6, 8, 12)


class OraclePlanner:
    """Rollout planner on the true expected dynamics; see the module docstring.

    Args:
        scenario: the market.
        gaps: hours between ads of the base continuations.
        chunk: users planned together (memory: chunk × n_actions × len(gaps) rollouts).
    """

    def __init__(self, scenario: Scenario, gaps: Sequence[int] = DEFAULT_GAPS, *, chunk: int = 64) -> None:
        if not gaps or any(int(g) < 1 for g in gaps):
            raise ValueError(f"gaps must be hours >= 1, got {list(gaps)}")
        self.scenario = scenario
        self.world = World(scenario)
        self.gaps = np.array(sorted(set(int(g) for g in gaps)), dtype=np.int64)
        self.chunk = int(chunk)
        self.nvec = scenario.action_nvec
        nd, ns, nc = self.nvec
        self.actions = np.stack(np.meshgrid(np.arange(nd), np.arange(ns), np.arange(nc), indexing="ij"), -1).reshape(
            -1, 3
        )
        self.targets = self.actions[self.actions[:, 0] == 0][:, 1:]  # every (slot, creative)
        self.delays = self.world.delays
        self.decay = self.world.decay_per_hour

    # ---- the exact expected dynamics --------------------------------------------------------------------------
    def _reward_and_leave(self, batch: UserBatch, action: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Expected immediate reward, p_leave and shown (impression inside the day) of ``action`` (n, 3)."""
        r = self.world.probabilities(batch, action)
        at = batch.epoch + self.delays[action[:, 0]]
        shown = at < self.scenario.horizon
        value = self.world.expected_reward(r, action)  # the market's reward, with its price of a lost user
        return np.where(shown, value, 0.0), np.where(shown, r.p_leave, 0.0), shown

    def _advance(self, batch: UserBatch, action: np.ndarray, shown: np.ndarray) -> None:
        """Move ``batch`` past ``action`` in place: fatigue, creative counts, last impression and epoch."""
        d, s, c = action[:, 0], action[:, 1], action[:, 2]
        rows = np.arange(len(batch))
        seen = batch.creative_counts[rows, c]
        inc = self.world.fatigue_increment(batch.segment, s, seen) * shown
        at = batch.epoch + self.delays[d]
        batch.fatigue = (batch.fatigue * self.decay ** self.delays[d] + inc) * self.decay
        batch.creative_counts[rows[shown], c[shown]] += 1
        batch.last_impression = np.where(shown, at, batch.last_impression)
        batch.epoch = np.minimum(at + 1, self.scenario.horizon)  # a finished day stays finished

    def _best_target(self, batch: UserBatch, delay: np.ndarray) -> np.ndarray:
        """(n, 2) slot and creative with the highest true immediate reward at ``delay`` (indices, (n,))."""
        n, k = len(batch), self.targets.shape[0]
        rep = batch.take(np.repeat(np.arange(n), k))
        act = np.concatenate([np.repeat(delay, k)[:, None], np.tile(self.targets, (n, 1))], axis=1)
        value, _, _ = self._reward_and_leave(rep, act)
        return self.targets[value.reshape(n, k).argmax(axis=1)]

    def _continuation_delay(self, batch: UserBatch, gap: np.ndarray) -> np.ndarray:
        """Shortest delay index covering ``gap`` hours since the last ad (the longest if none does)."""
        since = np.where(batch.last_impression < 0, gap, batch.epoch - batch.last_impression)
        wait = np.maximum(gap - since, 0)
        covers = self.delays[None, :] >= wait[:, None]
        return np.where(covers.any(axis=1), covers.argmax(axis=1), len(self.delays) - 1)

    def plan_values(self, batch: UserBatch) -> np.ndarray:
        """(n, n_actions, n_gaps): expected rest-of-day return of each first action and continuation."""
        n, a, g = len(batch), self.actions.shape[0], self.gaps.size
        idx = np.repeat(np.arange(n), a * g)
        batch = batch.take(slice(None))
        batch.epoch = np.minimum(batch.epoch, self.scenario.horizon)  # a finished day (its slot awaits a reset)
        sim = batch.take(idx)
        first = np.tile(np.repeat(self.actions, g, axis=0), (n, 1))
        gap = np.tile(self.gaps, n * a)
        total = np.zeros(idx.size)
        alive = np.ones(idx.size)
        action = first
        # the slot and creative of the continuation: the best now (fatigue moves every option alike)
        target: np.ndarray | None = None
        while True:
            live = sim.epoch < self.scenario.horizon
            if not live.any():
                break
            reward, p_leave, shown = self._reward_and_leave(sim, action)
            shown &= live
            total += alive * np.where(shown, reward, 0.0)
            alive *= 1.0 - np.where(shown, p_leave, 0.0)
            self._advance(sim, action, shown)
            d = self._continuation_delay(sim, gap)
            if target is None:
                target = self._best_target(batch, np.zeros(n, dtype=np.int64))[idx]
            action = np.concatenate([d[:, None], target], axis=1)
        return total.reshape(n, a, g)

    def act(self, batch: UserBatch) -> np.ndarray:
        """(n, 3) the first action of the best plan for each user of ``batch`` (hidden state included)."""
        out = np.empty((len(batch), 3), dtype=np.int64)
        for i in range(0, len(batch), self.chunk):
            part = batch.take(slice(i, i + self.chunk))
            v = self.plan_values(part).max(axis=2)
            out[i : i + self.chunk] = self.actions[v.argmax(axis=1)]
        return out


@dataclass(frozen=True)
class OracleResult:
    mean_return: float
    sem: float
    churn_rate: float
    n_users: int

    def as_dict(self) -> dict[str, object]:
        half = 1.96 * self.sem
        ci = [self.mean_return - half, self.mean_return + half]
        return {"mean_return": self.mean_return, "ci95": ci, "churn_rate": self.churn_rate, "n_users": self.n_users}


def evaluate_oracle(planner: OraclePlanner, *, n_users: int, seed: int) -> OracleResult:
    """Play one day for ``n_users`` ground-truth users (drawn from ``seed``) with the oracle's actions."""
    from adrl.envs.vector import AdPlacementVectorEnv

    env = AdPlacementVectorEnv(n_users, planner.scenario)
    env.reset(seed=seed)
    returns = np.zeros(n_users)
    left = np.zeros(n_users, dtype=bool)
    running = np.ones(n_users, dtype=bool)
    while running.any():
        action = planner.act(env.users)
        _, reward, terminated, truncated, _ = env.step(action)
        returns += np.where(running, reward, 0.0)
        left |= running & terminated
        running &= ~(terminated | truncated)
    return OracleResult(float(returns.mean()), float(returns.std(ddof=1) / np.sqrt(n_users)), float(left.mean()),
                        n_users)  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=100)
    args = ap.parse_args()
    t = time.perf_counter()
    result = evaluate_oracle(OraclePlanner(Scenario()), n_users=args.users, seed=args.seed)
    print(json.dumps({"benchmark": "oracle", **result.as_dict(), "seconds": round(time.perf_counter() - t, 1)}))


if __name__ == "__main__":
    main()
