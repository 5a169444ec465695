"""The rules a user would deploy, tuned on the simulator the agents train on: pacing and frequency caps.

:class:`RulePolicy` covers both families with one timing rule and one targeting rule:

- timing ``pacing``: never sooner than ``min_gap`` hours after the last ad (the shortest delay that covers the gap,
  the longest if none does; :class:`~adrl.agents.baselines.PacingPolicy`'s rule);
- timing ``frequency-cap``: show now unless the user already saw ``cap`` ads in the last ``window`` hours (1, 6 or
  24, the observation's impression windows), then wait the longest delay;
- targeting: the slot and creative with the highest predicted immediate value, among every slot (``slot=None``) or
  in one fixed slot.

:func:`tune_rules` grids both families (and every slot rule) on a simulator, e.g. the learned one, exactly as an
agent is trained there: the ground truth is never consulted unless it is the simulator given.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from adrl.agents.baselines import ValueModel, WorldValueModel, _Deterministic
from adrl.agents.registry import Score, check_params, read_policy_manifest, register_kind, write_policy_manifest
from adrl.errors import ArtifactError, ConfigError
from adrl.features import FeatureLayout
from adrl.scenario import Scenario

Timing = Literal["pacing", "frequency-cap"]
WINDOWS = (1, 6, 24)


class RulePolicy(_Deterministic):
    """A pacing or frequency-cap timing rule with a value-greedy slot and creative; see the module docstring.

    Args:
        scenario: the market.
        timing: ``"pacing"`` or ``"frequency-cap"``.
        min_gap: hours between ads (pacing), >= 1.
        cap: ads allowed in the window before waiting (frequency cap), >= 1.
        window: 1, 6 or 24 hours (frequency cap).
        slot: None for the best slot by value, or the index of the one slot used.
        value_model: what ranks actions (the ground truth if None).
    """

    kind = "rule"

    def __init__(
        self,
        scenario: Scenario,
        *,
        timing: Timing = "pacing",
        min_gap: int = 4,
        cap: int = 1,
        window: int = 6,
        slot: int | None = None,
        value_model: ValueModel | None = None,
    ) -> None:
        if timing not in ("pacing", "frequency-cap"):
            raise ValueError(f"timing must be 'pacing' or 'frequency-cap', got {timing!r}")
        if min_gap < 1 or cap < 1:
            raise ValueError(f"min_gap and cap must be >= 1, got min_gap={min_gap}, cap={cap}")
        if window not in WINDOWS:
            raise ValueError(f"window must be one of {WINDOWS} hours, got {window!r}")
        if slot is not None and not 0 <= slot < scenario.n_slots:
            raise ValueError(f"slot must be None or in 0..{scenario.n_slots - 1}, got {slot!r}")
        layout = FeatureLayout.from_scenario(scenario)
        self.scenario, self.nvec, self.obs_dim = scenario, scenario.action_nvec, layout.obs_dim
        self.timing: Timing = timing
        self.min_gap, self.cap, self.window, self.slot = int(min_gap), int(cap), int(window), slot
        self.value_model = value_model or WorldValueModel(scenario)
        self.delays = np.array(scenario.delays)
        self._since = layout.index("hours_since_last_ad")
        self._count = layout.index(f"impressions_{window}h")

    @property
    def name(self) -> str:
        timing = f"gap {self.min_gap}h" if self.timing == "pacing" else f"cap {self.cap}/{self.window}h"
        slot = "best slot" if self.slot is None else self.scenario.slots[self.slot].name
        return f"{self.timing} ({timing}, {slot})"

    def delay_index(self, obs: np.ndarray) -> np.ndarray:
        """(n,) delay index the timing rule takes."""
        longest = len(self.delays) - 1
        if self.timing == "frequency-cap":
            return np.where(obs[:, self._count] >= self.cap, longest, 0)
        wait = np.maximum(self.min_gap - obs[:, self._since], 0)
        covers = self.delays[None, :] >= wait[:, None]
        return np.where(covers.any(axis=1), covers.argmax(axis=1), longest)

    def choose(self, obs: np.ndarray) -> np.ndarray:
        d = self.delay_index(obs)
        slot = np.empty(obs.shape[0], dtype=np.int64)
        creative = np.empty(obs.shape[0], dtype=np.int64)
        for k in np.unique(d):  # score only the delay each row takes
            rows = np.flatnonzero(d == k)
            v = self.value_model.expected_reward(obs[rows], np.array([k]))[:, 0]  # (m, S, C)
            if self.slot is None:
                s, c = np.divmod(v.reshape(rows.size, -1).argmax(axis=1), self.nvec[2])
            else:
                s, c = np.full(rows.size, self.slot), v[:, self.slot].argmax(axis=1)
            slot[rows], creative[rows] = s, c
        return np.stack([d, slot, creative], axis=1)

    def save(self, path: Path) -> None:
        extra = {"timing": self.timing, "min_gap": self.min_gap, "cap": self.cap, "window": self.window,
                 "slot": self.slot, **self._save_value_model(path)}  # fmt: skip
        write_policy_manifest(path, kind=self.kind, version=self.version, scenario=self.scenario, extra=extra)

    @classmethod
    def load(cls, path: Path) -> RulePolicy:
        manifest, scenario = read_policy_manifest(path, kind=cls.kind, version=cls.version)
        try:
            return cls(
                scenario,
                timing=manifest["timing"],
                min_gap=int(manifest["min_gap"]),
                cap=int(manifest["cap"]),
                window=int(manifest["window"]),
                slot=None if manifest["slot"] is None else int(manifest["slot"]),
                value_model=cls._load_value_model(path, manifest, scenario),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ArtifactError(f"{path}/manifest.json: not a valid rule policy ({e!r})") from e


def rule_grid(
    scenario: Scenario,
    value_model: ValueModel | None,
    *,
    gaps: Sequence[int] = (1, 2, 3, 4, 5, 6),
    caps: Sequence[tuple[int, int]] = ((1, 1), (1, 6), (2, 6), (3, 6), (3, 24), (4, 24), (6, 24)),
) -> list[RulePolicy]:
    """Every pacing gap and frequency cap (``(cap, window)``), each with every slot rule (best slot, each slot)."""
    slots: list[int | None] = [None, *range(scenario.n_slots)]
    out = [
        RulePolicy(scenario, timing="pacing", min_gap=g, slot=s, value_model=value_model) for g in gaps for s in slots
    ]
    out += [
        RulePolicy(scenario, timing="frequency-cap", cap=c, window=w, slot=s, value_model=value_model)
        for c, w in caps
        for s in slots
    ]
    return out


def tune_rules(
    scenario: Scenario,
    value_model: ValueModel | None,
    score: Score,
    *,
    candidates: Sequence[RulePolicy] | None = None,
) -> tuple[RulePolicy, RulePolicy, dict[str, float]]:
    """Rate every rule of :func:`rule_grid` with ``score`` (mean return on the simulator a run is for, every
    candidate on the same users). Returns the best pacing rule, the best frequency-cap rule and every
    candidate's score by name."""
    pool = list(candidates) if candidates is not None else rule_grid(scenario, value_model)
    scores: dict[str, float] = {}
    best: dict[str, tuple[float, RulePolicy]] = {}
    for policy in pool:
        value = float(score(policy))
        scores[policy.name] = value
        if policy.timing not in best or value > best[policy.timing][0] + 1e-12:
            best[policy.timing] = (value, policy)
    if set(best) != {"pacing", "frequency-cap"}:
        raise ValueError("tune_rules needs at least one pacing and one frequency-cap candidate")
    return best["pacing"][1], best["frequency-cap"][1], scores


def build(
    name: str,
    scenario: Scenario,
    params: dict[str, Any],
    *,
    seed: int | None,
    value_model: ValueModel | None = None,
    score: Score | None = None,
) -> RulePolicy:
    """``tuned_pacing`` / ``frequency_cap``: the best rule of that timing, tuned by ``score`` on the run's simulator."""
    check_params(params, set(), name)
    if score is None:
        raise ConfigError(f"{name}: the rule is tuned on a simulator; build it with one to tune on (adrl train)")
    pacing, cap, _ = tune_rules(scenario, value_model, score)
    return pacing if name == "tuned_pacing" else cap


register_kind(RulePolicy.kind, RulePolicy.load)
