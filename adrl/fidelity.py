"""How faithful is the learned simulator along a policy's own trajectories? (the sim-to-real diagnostic)

:func:`rollout_fidelity` runs a policy in the learned environment (``AdPlacementVectorEnv`` driven by a
:class:`~adrl.behavior.LearnedResponse`) and, before every step, asks both the learned model and the ground-truth
:class:`~adrl.world.World` for the outcome probabilities of the same users (hidden state included) and the same
actions. It reports the mean predicted and true pCTR, pCTCVR, pLeave and expected immediate reward, overall and by
buckets of the features a policy can steer (clicks and conversions today, impression windows, hours since the last
ad, times the creative was seen, slot, delay) and of the hidden fatigue. A policy that exploits the model shows up
as a bucket where the prediction is far from the truth and that the policy visits often. With
``rollouts="ground-truth"`` the same comparison runs on the policy's trajectories in the ground-truth world: the
calibration of the model on the states the policy really reaches, free of the learned rollouts' confounding of
history with interest (see :func:`rollout_fidelity`).

>>> report = rollout_fidelity(policy, LearnedResponse.load("runs/behavior"), n_envs=2048, n_steps=48)  # doctest: +SKIP
>>> print(report.table())  # doctest: +SKIP
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from gymnasium.vector import AutoresetMode

from adrl.behavior.ensemble import EnsembleResponse
from adrl.behavior.response import LearnedResponse
from adrl.envs.vector import AdPlacementVectorEnv
from adrl.scenario import RewardTable
from adrl.world import Response, World

# (feature, bucket upper edges; a value v falls in the first bucket with v <= edge, the last bucket is open)
DEFAULT_BUCKETS: tuple[tuple[str, tuple[float, ...]], ...] = (
    ("clicks_today", (0, 1, 2, 3, 5)),
    ("conversions_today", (0, 1, 2)),
    ("impressions_1h", (0,)),
    ("impressions_6h", (0, 1, 2, 3, 4, 5)),
    ("impressions_24h", (0, 2, 4, 6, 8, 12, 16)),
    ("hours_since_last_ad", (0, 1, 2, 4, 8, 23)),
    ("times_seen", (0, 1, 2, 3, 5)),
    ("fatigue", (0.5, 1, 2, 3, 4, 6)),  # hidden, just before the impression (after the delay's decay)
)
QUANTITIES = ("p_click", "p_ctcvr", "p_leave", "reward")
Rollouts = Literal["learned", "ground-truth"]
ROLLOUTS: tuple[Rollouts, ...] = ("learned", "ground-truth")


@dataclass
class _Sums:
    n: int = 0
    predicted: np.ndarray = field(default_factory=lambda: np.zeros(len(QUANTITIES)))
    true: np.ndarray = field(default_factory=lambda: np.zeros(len(QUANTITIES)))
    abs_error: np.ndarray = field(default_factory=lambda: np.zeros(len(QUANTITIES)))

    def add(self, pred: np.ndarray, true: np.ndarray) -> None:
        """Add rows of ``pred`` and ``true``, each (n, len(QUANTITIES))."""
        self.n += pred.shape[0]
        self.predicted += pred.sum(axis=0)
        self.true += true.sum(axis=0)
        self.abs_error += np.abs(pred - true).sum(axis=0)

    def as_dict(self, total: int) -> dict[str, Any]:
        n = max(self.n, 1)
        out: dict[str, Any] = {"n": self.n, "share": self.n / max(total, 1)}
        for i, q in enumerate(QUANTITIES):
            p, t = self.predicted[i] / n, self.true[i] / n
            out[q] = {
                "predicted": p,
                "true": t,
                "ratio": p / t if t > 0 else float("nan"),
                "mae": self.abs_error[i] / n,
            }
        return out


@dataclass
class FidelityReport:
    """Predicted vs true outcome probabilities on the impressions of a policy's rollout in the learned simulator.

    Attributes:
        n_impressions: impressions compared (decisions whose delay ran past the day show nothing and are skipped).
        mean_return_learned: mean return of the finished user-days in the world the rollouts ran in (``rollouts``;
            the name is kept for the learned simulator's case).
        rollouts: ``"learned"`` or ``"ground-truth"``.
        overall: ``{"n", "share", <quantity>: {"predicted", "true", "ratio", "mae"}}`` over every impression.
        by_feature: feature -> bucket label -> the same mapping as ``overall``.
    """

    n_impressions: int
    n_episodes: int
    mean_return_learned: float
    overall: dict[str, Any]
    by_feature: dict[str, dict[str, dict[str, Any]]]
    rollouts: Rollouts = "learned"

    def as_dict(self) -> dict[str, Any]:
        return {
            "rollouts": self.rollouts,
            "n_impressions": self.n_impressions,
            "n_episodes": self.n_episodes,
            "mean_return_learned": self.mean_return_learned,
            "overall": self.overall,
            "by_feature": self.by_feature,
        }

    def table(self, *, min_share: float = 0.0) -> str:
        """Plain-text table: one line per bucket, predicted/true of each quantity (buckets under ``min_share``
        of the impressions are left out)."""
        head = f"{'feature':<20}{'bucket':>9}{'share':>7}" + "".join(f"{q + ' pred/true':>22}" for q in QUANTITIES)
        lines = [head]

        def row(name: str, label: str, d: dict[str, Any]) -> str:
            cells = "".join(f"{d[q]['predicted']:>10.4f} /{d[q]['true']:>9.4f} " for q in QUANTITIES)
            return f"{name:<20}{label:>9}{d['share']:>7.3f}{cells}"

        lines.append(row("overall", "", self.overall))
        for name, buckets in self.by_feature.items():
            for label, d in buckets.items():
                if d["share"] >= min_share:
                    lines.append(row(name, label, d))
        return "\n".join(lines)


def _quantities(r: Response, rewards: RewardTable, slot: np.ndarray, creative: np.ndarray) -> np.ndarray:
    """(n, len(QUANTITIES)): pCTR, pCTCVR, pLeave and the expected immediate reward of each impression."""
    ctcvr = r.p_ctcvr
    reward = rewards.expected(r.p_click, ctcvr, slot, creative, r.p_leave)
    return np.stack([r.p_click, ctcvr, r.p_leave, reward], axis=1).astype(np.float64)


def _labels(edges: tuple[float, ...]) -> list[str]:
    inner = [f"({lo:g},{hi:g}]" for lo, hi in itertools.pairwise(edges)]
    return [f"<={edges[0]:g}", *inner, f">{edges[-1]:g}"]


def rollout_fidelity(
    policy: Any,
    response: LearnedResponse | EnsembleResponse,
    *,
    n_envs: int = 2048,
    n_steps: int = 48,
    seed: int = 0,
    deterministic: bool = True,
    buckets: tuple[tuple[str, tuple[float, ...]], ...] = DEFAULT_BUCKETS,
    rollouts: Rollouts = "learned",
) -> FidelityReport:
    """Roll ``policy`` out for ``n_steps`` decisions of ``n_envs`` users and compare the learned model's outcome
    probabilities with the ground truth's on every impression.

    ``rollouts="learned"`` steps the learned simulator: the states are those the agent meets in training. There a
    user's history (clicks and conversions today) comes from the model's draws, not from the user's hidden interest,
    so in history buckets the truth is that of an average user while the model predicts for a user with that
    history: the gap there is not all model error. ``rollouts="ground-truth"`` steps the ground-truth world, so
    history and hidden interest agree, and compares the model with the truth on the states the policy would really
    reach: the calibration that decides whether its return inside the simulator is believable.

    Args:
        policy: anything with ``predict(obs, deterministic=...)`` (the Policy protocol).
        response: the learned simulator backend (one model or an ensemble's mean); its scenario gives the ground
            truth.
        n_envs, n_steps: users stepped together and decisions per user slot (finished days restart).
        seed: seeds the environment (users and outcome draws).
        deterministic: passed to ``policy.predict``.
        buckets: features (observation names, ``times_seen``, ``fatigue``, ``slot``, ``delay``) and bucket edges.
        rollouts: ``"learned"`` or ``"ground-truth"``: which world the policy's users live in (see above).
    """
    if rollouts not in ROLLOUTS:
        raise ValueError(f"rollouts must be one of {list(ROLLOUTS)}, got {rollouts!r}")
    sc = response.scenario
    backend = response if rollouts == "learned" else None
    env = AdPlacementVectorEnv(n_envs, sc, behavior_model=backend, autoreset_mode=AutoresetMode.SAME_STEP)
    world = World(sc)
    layout = env.layout
    delays = np.asarray(sc.delays)
    decay = world.decay_per_hour**delays
    specs = [(name, np.asarray(edges, dtype=np.float64), _labels(edges)) for name, edges in buckets]
    specs += [("slot", np.arange(sc.n_slots - 1, dtype=np.float64), [s.name for s in sc.slots])]
    specs += [("delay", np.arange(sc.n_delays - 1, dtype=np.float64), [f"{d}h" for d in sc.delays])]
    overall = _Sums()
    sums = {name: [_Sums() for _ in labels] for name, _, labels in specs}
    returns = np.zeros(n_envs)
    finished: list[np.ndarray] = []
    obs, _ = env.reset(seed=seed)
    for _ in range(n_steps):
        action = np.asarray(policy.predict(obs, deterministic=deterministic), dtype=np.int64).reshape(n_envs, 3)
        batch = env.users
        pred = response.probabilities_from_obs(obs, action)
        true = world.probabilities(batch, action)
        d, s, c = action[:, 0], action[:, 1], action[:, 2]
        shown = batch.epoch + delays[d] < sc.horizon
        values = {
            "times_seen": batch.creative_counts[np.arange(n_envs), c].astype(np.float64),
            "fatigue": batch.fatigue * decay[d],
            "slot": s.astype(np.float64),
            "delay": d.astype(np.float64),
        }

        qp, qt = (_quantities(r, sc.reward_table, s, c)[shown] for r in (pred, true))
        overall.add(qp, qt)
        for name, edges, _ in specs:
            v = values[name] if name in values else obs[:, layout.index(name)].astype(np.float64)
            idx = np.searchsorted(edges, v[shown], side="left")
            for b in np.unique(idx):
                m = idx == b
                sums[name][b].add(qp[m], qt[m])
        obs, reward, terminated, truncated, _ = env.step(action)
        returns += reward
        done = terminated | truncated
        if done.any():
            finished.append(returns[done].copy())
            returns[done] = 0.0
    env.close()
    ret = np.concatenate(finished) if finished else np.zeros(0)
    total = overall.n
    return FidelityReport(
        n_impressions=total,
        n_episodes=int(ret.size),
        mean_return_learned=float(ret.mean()) if ret.size else float("nan"),
        overall=overall.as_dict(total),
        by_feature={
            name: {label: sums[name][i].as_dict(total) for i, label in enumerate(labels) if sums[name][i].n}
            for name, _, labels in specs
        },
        rollouts=rollouts,
    )
