"""Scenario: the typed, validated description of an ad market (users, ads, slots, time, rewards, dynamics).

Every field has a default, so ``Scenario()`` is the default market; ``load_scenario(path)`` reads YAML and turns
validation errors into one message that names the file, each bad field path, its value and what is allowed.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from functools import cached_property
from pathlib import Path
from typing import Any, Literal, Self

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from adrl.actions import ActionSpace
from adrl.errors import ConfigError
from adrl.io import read_yaml_mapping

HOURS_PER_DAY = 24
MAX_HORIZON = 64  # the world keeps each user's impression epochs in one uint64 bit mask


def _profile(peaks: dict[int, float], floor: float) -> tuple[float, ...]:
    """An activity-by-hour profile: ``floor`` everywhere plus Gaussian bumps (hour -> height), capped at 1."""
    hours = np.arange(HOURS_PER_DAY)
    act = np.full(HOURS_PER_DAY, floor)
    for hour, height in peaks.items():
        dist = np.minimum(np.abs(hours - hour), HOURS_PER_DAY - np.abs(hours - hour))
        act += height * np.exp(-0.5 * (dist / 1.8) ** 2)
    return tuple(round(float(a), 3) for a in np.clip(act, 0.01, 1.0))


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Segment(_Model):
    """A group of users that share interests, daily rhythm and tolerance for ads."""

    name: str = Field(min_length=1)
    share: float = Field(gt=0, le=1, description="fraction of users in this segment (shares are normalised)")
    interest: dict[str, float] = Field(
        default_factory=dict, description="mean latent interest per category (missing categories: 0)"
    )
    interest_spread: float = Field(0.5, ge=0, le=5, description="std of each user's interest around the mean")
    activity: tuple[float, ...] = Field(
        default_factory=lambda: _profile({9: 0.5, 20: 0.6}, 0.1),
        description="probability the user is active in the app, by hour of day (24 values in (0, 1])",
    )
    fatigue_sensitivity: float = Field(1.0, ge=0, le=10, description="multiplies fatigue added per impression")
    churn_sensitivity: float = Field(1.0, ge=0, le=10, description="multiplies the effect of fatigue on leaving")
    conversion_propensity: float = Field(0.0, ge=-10, le=10, description="added to the conversion logit")

    @field_validator("activity")
    @classmethod
    def _hourly_probabilities(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if len(v) != HOURS_PER_DAY:
            raise ValueError(f"must have {HOURS_PER_DAY} values (one per hour), got {len(v)}")
        bad = [a for a in v if not (0.0 < a <= 1.0)]
        if bad:
            raise ValueError(f"every value must be in (0, 1], got {bad[0]:g}")
        return v


class Creative(_Model):
    """One ad creative: its category, latent vector (given or generated), quality and conversion value."""

    name: str = Field(min_length=1)
    category: str = Field(min_length=1)
    latent: tuple[float, ...] | None = Field(
        None, description="latent vector, one value per category; generated from the scenario seed when omitted"
    )
    quality: float = Field(0.0, ge=-5, le=5, description="added to the click logit")
    conversion_value: float = Field(1.0, ge=0, le=1000, description="revenue of one conversion")


class Slot(_Model):
    """A place in the app where an ad can appear."""

    name: str = Field(min_length=1)
    attention: float = Field(1.0, gt=0, le=10, description="multiplies the click odds")
    annoyance: float = Field(1.0, ge=0, le=10, description="fatigue added by one impression here")
    cost: float = Field(0.0, ge=0, le=1000, description="cost of one impression in this slot")


class Rewards(_Model):
    """Reward = click_value * click + conversion_weight * creative.conversion_value * conversion - slot.cost
    - churn_cost * leave."""

    click_value: float = Field(0.1, ge=0, le=1000)
    conversion_weight: float = Field(1.0, ge=0, le=1000)
    churn_cost: float = Field(
        0.0,
        ge=0,
        le=1000,
        description="price of a user who leaves (the value of the days they would have come back), charged on the "
        "impression after which they leave; 0 lets a policy burn users out for free",
    )


class RewardTable:
    """The reward of a market, realised and expected: the one place its formula is written.

    r = click_value · click + conversion_reward[creative] · conversion − slot_cost[slot] − churn_cost · leave for a
    shown ad (0 for none), with conversion_reward = conversion_weight · creative.conversion_value. Its expectation is
    linear in P(click), P(click and conversion) = pCTCVR and P(leave). Index arguments broadcast like numpy fancy
    indexing. The server's feedback carries no leave, so the reward it logs is the one without the churn cost.
    """

    __slots__ = ("churn_cost", "click_value", "conversion_reward", "slot_cost")

    def __init__(self, rewards: Rewards, creatives: tuple[Creative, ...], slots: tuple[Slot, ...]) -> None:
        self.click_value = rewards.click_value
        self.conversion_reward = rewards.conversion_weight * np.array([c.conversion_value for c in creatives])
        self.slot_cost = np.array([s.cost for s in slots], dtype=np.float64)
        self.churn_cost = float(rewards.churn_cost)

    def revenue(self, click: np.ndarray, conversion: np.ndarray, creative: np.ndarray) -> np.ndarray:
        """click_value · click + conversion_reward[creative] · conversion (the reward before the slot's cost)."""
        return self.click_value * click + self.conversion_reward[creative] * conversion

    def realised(
        self,
        click: np.ndarray,
        conversion: np.ndarray,
        slot: np.ndarray,
        creative: np.ndarray,
        shown: np.ndarray | None = None,
        leave: np.ndarray | None = None,
    ) -> np.ndarray:
        """The reward of outcomes; 0 where ``shown`` is False (a delay that ran past the day shows nothing).
        ``leave`` (the user left after this impression) is charged ``churn_cost`` when the market prices it."""
        reward = self.revenue(click, conversion, creative) - self.slot_cost[slot]
        if self.churn_cost and leave is not None:
            reward = reward - self.churn_cost * leave
        return reward if shown is None else np.where(shown, reward, 0.0)

    def expected(
        self,
        p_click: np.ndarray,
        p_ctcvr: np.ndarray,
        slot: np.ndarray,
        creative: np.ndarray,
        p_leave: np.ndarray | None = None,
    ) -> np.ndarray:
        """E[r] of showing ``creative`` in ``slot`` = click_value · pCTR + conversion_reward · pCTCVR − cost
        − churn_cost · pLeave (``p_leave`` is needed when the market prices churn)."""
        value = self.click_value * p_click + self.conversion_reward[creative] * p_ctcvr - self.slot_cost[slot]
        if self.churn_cost:
            if p_leave is None:
                raise ValueError("this market prices churn (rewards.churn_cost > 0): expected() needs p_leave")
            value = value - self.churn_cost * p_leave
        return value


class Dynamics(_Model):
    """Parameters of the ground-truth user response process (see ``adrl.world``)."""

    base_click_logit: float = Field(-2.2, ge=-20, le=20)
    affinity_weight: float = Field(1.0, ge=0, le=20, description="click logit per unit of interest·latent")
    quality_weight: float = Field(1.0, ge=0, le=20)
    fatigue_weight: float = Field(0.6, ge=0, le=20, description="click logit lost per unit of fatigue")
    fatigue_half_life: float = Field(3.0, gt=0, le=1000, description="hours for fatigue to halve")
    wearout: float = Field(0.5, ge=0, le=20, description="extra fatigue per earlier impression of the creative")
    base_conversion_logit: float = Field(-2.0, ge=-20, le=20)
    conversion_affinity_weight: float = Field(0.5, ge=0, le=20)
    base_leave_logit: float = Field(-5.0, ge=-20, le=20)
    leave_fatigue_weight: float = Field(0.35, ge=0, le=20, description="leave logit per unit of fatigue")
    signal_noise: float = Field(0.5, ge=0, le=10, description="noise of the observed interest signal")
    latent_noise: float = Field(0.25, ge=0, le=10, description="spread of generated creative latents")


class Social(_Model):
    """A social graph over the users and how shares spread on it (``adrl/AdPlacement-Viral-v0``; see ``adrl.social``).

    A click is shared with P(share | click) = σ(share_logit + share_affinity_weight · affinity + shareability[c]);
    a share by i reaches friend j with P(i→j) = α·S(i,j)/D(j) + β·C(i,j)/N(j) (S: tie strength, D(j): j's total
    tie strength, C: interest similarity, N(j): j's friend count). A reached friend clicks organically with
    σ(organic_click_logit + affinity_weight · affinity), then converts and shares as after an ad click, and keeps
    a lift on the click and conversion logits of that creative for the rest of the day.
    """

    graph: Literal["sbm", "small_world", "scale_free", "edges"] = Field(
        "sbm", description="sbm: stochastic block model by segment; small_world: Watts-Strogatz; scale_free: "
        "Barabasi-Albert; edges: the edge list file `edges`"
    )  # fmt: skip
    n_users: int = Field(1000, ge=2, le=10_000_000, description="graph size when the env is not given num_envs")
    mean_degree: float = Field(10.0, gt=0, le=1000, description="expected friends per user (generated graphs)")
    within_segment: float = Field(0.8, ge=0, le=1, description="sbm: share of a user's friends in their segment")
    rewiring: float = Field(0.1, ge=0, le=1, description="small_world: probability of rewiring each edge")
    edges: str | None = Field(None, description="graph=edges: text file of 'i j [tie_strength]' lines, ids 0..n-1")
    tie_strength: tuple[float, float] = Field((0.2, 1.0), description="generated S(i, j) ~ Uniform(low, high)")
    alpha: float = Field(0.5, ge=0, le=1, description="weight of tie strength in P(i→j)")
    beta: float = Field(0.3, ge=0, le=1, description="weight of interest similarity in P(i→j)")
    share_logit: float = Field(-1.0, ge=-20, le=20, description="share logit given a click, before affinity")
    share_affinity_weight: float = Field(1.0, ge=0, le=20, description="share logit per unit of interest·latent")
    shareability: dict[str, float] = Field(
        default_factory=dict, description="creative name -> added to its share logit (missing: 0)"
    )
    organic_click_logit: float = Field(-1.0, ge=-20, le=20, description="click logit of a shared ad, before affinity")
    click_lift: float = Field(1.0, ge=0, le=10, description="click logit added for a creative a friend shared")
    conversion_lift: float = Field(0.5, ge=0, le=10, description="conversion logit added for a shared creative")
    max_hops: int = Field(3, ge=1, le=16, description="cascade depth; also the attribution window (one hour a hop)")
    seed: int = Field(0, ge=0, description="seed of the generated graph and tie strengths")

    @field_validator("tie_strength")
    @classmethod
    def _positive_range(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not (0.0 < v[0] <= v[1] <= 1000.0):
            raise ValueError(f"must be (low, high) with 0 < low <= high <= 1000, got {list(v)}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.alpha + self.beta > 1.0:
            raise ValueError(f"alpha + beta must be <= 1 so that P(i→j) <= 1, got {self.alpha:g} + {self.beta:g}")
        if (self.graph == "edges") != (self.edges is not None):
            raise ValueError("social.edges (a file) is required with graph: edges, and only then")
        return self


def _default_segments() -> tuple[Segment, ...]:
    return (
        Segment(
            name="commuter",
            share=0.3,
            interest={"fashion": 0.8, "travel": 0.4},
            activity=_profile({8: 0.7, 18: 0.7}, 0.06),
            fatigue_sensitivity=1.0,
            churn_sensitivity=1.0,
        ),
        Segment(
            name="office",
            share=0.3,
            interest={"travel": 0.9, "games": -0.2},
            activity=_profile({11: 0.5, 14: 0.5}, 0.08),
            fatigue_sensitivity=0.8,
            churn_sensitivity=0.8,
            conversion_propensity=0.3,
        ),
        Segment(
            name="night_owl",
            share=0.2,
            interest={"games": 1.0},
            activity=_profile({22: 0.7, 1: 0.6}, 0.05),
            fatigue_sensitivity=1.3,
            churn_sensitivity=1.4,
        ),
        Segment(
            name="casual",
            share=0.2,
            interest={"fashion": 0.3, "games": 0.3, "travel": 0.3},
            activity=_profile({13: 0.3, 20: 0.7}, 0.1),
            fatigue_sensitivity=1.2,
            churn_sensitivity=1.2,
            conversion_propensity=-0.3,
        ),
    )


def _default_creatives() -> tuple[Creative, ...]:
    out = []
    for category, values in (("fashion", (1.5, 2.0, 3.0, 4.0)), ("games", (1.0, 1.5, 2.0, 2.5)),
                              ("travel", (3.0, 4.0, 6.0, 8.0))):  # fmt: skip
        for i, value in enumerate(values):
            out.append(
                Creative(name=f"{category}_{i}", category=category, quality=0.3 - 0.2 * i, conversion_value=value)
            )
    return tuple(out)


def _default_slots() -> tuple[Slot, ...]:
    return (
        Slot(name="feed", attention=1.0, annoyance=1.0, cost=0.01),
        Slot(name="banner", attention=0.5, annoyance=0.4, cost=0.004),
        Slot(name="interstitial", attention=2.0, annoyance=2.5, cost=0.03),
    )


class Scenario(_Model):
    """A whole market. ``Scenario()`` is the default one; ``Scenario.from_yaml(path)`` reads a file."""

    name: str = "default"
    seed: int = Field(0, ge=0, description="seed for generated creative latents")
    horizon: int = Field(24, ge=2, le=MAX_HORIZON, description="decision epochs (hours) in one day")
    start_hour: int = Field(0, ge=0, lt=HOURS_PER_DAY, description="hour of day of the first epoch")
    delays: tuple[int, ...] = Field((0, 1, 2, 4), min_length=1, description="hours to wait before the ad")
    categories: tuple[str, ...] = Field(("fashion", "games", "travel"), min_length=1)
    segments: tuple[Segment, ...] = Field(default_factory=_default_segments, min_length=1)
    creatives: tuple[Creative, ...] = Field(default_factory=_default_creatives, min_length=1)
    slots: tuple[Slot, ...] = Field(default_factory=_default_slots, min_length=1)
    rewards: Rewards = Field(default_factory=Rewards)
    dynamics: Dynamics = Field(default_factory=Dynamics)
    social: Social | None = Field(None, description="a social graph and sharing (None: users live alone)")

    @field_validator("delays")
    @classmethod
    def _start_at_zero_and_increase(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if v[0] != 0 or any(b <= a for a, b in itertools.pairwise(v)):
            raise ValueError(f"must start at 0 and strictly increase, e.g. (0, 1, 4); got {v}")
        return v

    @field_validator("categories")
    @classmethod
    def _unique_categories(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        _check_unique(v, "category")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        _check_unique([s.name for s in self.segments], "segment name")
        _check_unique([c.name for c in self.creatives], "creative name")
        _check_unique([s.name for s in self.slots], "slot name")
        cats = set(self.categories)
        for i, c in enumerate(self.creatives):
            if c.category not in cats:
                raise ValueError(
                    f"creatives.{i}.category = {c.category!r} is not one of categories {list(self.categories)}"
                )
            if c.latent is not None and len(c.latent) != len(self.categories):
                raise ValueError(
                    f"creatives.{i}.latent has {len(c.latent)} values, expected one per category "
                    f"({len(self.categories)})"
                )
        for i, s in enumerate(self.segments):
            unknown = sorted(set(s.interest) - cats)
            if unknown:
                raise ValueError(
                    f"segments.{i}.interest has unknown category {unknown[0]!r}; "
                    f"expected keys from {list(self.categories)}"
                )
        if self.social is not None:
            names = {c.name for c in self.creatives}
            unknown = sorted(set(self.social.shareability) - names)
            if unknown:
                raise ValueError(f"social.shareability names unknown creative {unknown[0]!r}")
        if self.delays[-1] >= self.horizon:
            raise ValueError(f"delays: largest delay {self.delays[-1]} must be shorter than horizon {self.horizon}")
        return self

    # ---- derived values --------------------------------------------------------------------------------
    @property
    def n_delays(self) -> int:
        return len(self.delays)

    @property
    def n_slots(self) -> int:
        return len(self.slots)

    @property
    def n_creatives(self) -> int:
        return len(self.creatives)

    @property
    def n_segments(self) -> int:
        return len(self.segments)

    @property
    def n_categories(self) -> int:
        return len(self.categories)

    @property
    def n_actions(self) -> int:
        return self.n_delays * self.n_slots * self.n_creatives

    @property
    def action_nvec(self) -> tuple[int, int, int]:
        return (self.n_delays, self.n_slots, self.n_creatives)

    @cached_property
    def reward_table(self) -> RewardTable:
        """The market's reward, realised and expected (:class:`RewardTable`)."""
        return RewardTable(self.rewards, self.creatives, self.slots)

    @cached_property
    def actions(self) -> ActionSpace:
        """The factored action space (delay, slot, creative) with its algebra."""
        return ActionSpace(self.action_nvec)

    @cached_property
    def content_hash(self) -> str:
        """Stable sha256 of the canonical JSON of every field (same market, same hash, across runs)."""
        # a market without a social graph or a price of churn hashes as it did before those fields existed
        exclude: dict[str, Any] = {}
        if self.social is None:
            exclude["social"] = True
        if not self.rewards.churn_cost:
            exclude["rewards"] = {"churn_cost"}
        dump = self.model_dump(mode="json", exclude=exclude or None)
        blob = json.dumps(dump, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def creative_latents(self) -> np.ndarray:
        """Latent vectors, shape (n_creatives, n_categories): given ones, else category axis + seeded noise."""
        out = np.zeros((self.n_creatives, self.n_categories))
        for i, c in enumerate(self.creatives):
            if c.latent is not None:
                out[i] = c.latent
            else:
                rng = np.random.default_rng([self.seed, i])
                out[i] = rng.normal(0.0, self.dynamics.latent_noise, self.n_categories)
                out[i, self.categories.index(c.category)] += 1.0
        return out

    def hour_of_epoch(self, epoch: int) -> int:
        return (self.start_hour + epoch) % HOURS_PER_DAY

    def action_names(self, action: tuple[int, int, int] | np.ndarray) -> dict[str, Any]:
        d, s, c = (int(a) for a in action)
        return {"delay_hours": self.delays[d], "slot": self.slots[s].name, "creative": self.creatives[c].name}

    @classmethod
    def from_yaml(cls, path: Path | str) -> Scenario:
        return load_scenario(path)

    def to_yaml(self, path: Path | str) -> None:
        from adrl.io import atomic_open

        with atomic_open(path, "w") as f:
            yaml.safe_dump(self.model_dump(mode="json"), f, sort_keys=False, default_flow_style=None, width=120)


def _check_unique(values: Any, what: str) -> None:
    seen: set[str] = set()
    for v in values:
        if v in seen:
            raise ValueError(f"duplicate {what} {v!r}; names must be unique")
        seen.add(v)


def format_validation_error(e: ValidationError, source: str) -> str:
    """One message: ``source: N invalid field(s)`` then ``path = value: reason`` per error."""
    errors = e.errors()
    locs = [tuple(err["loc"]) for err in errors]
    # a container fails too when one of its items fails: report only the innermost field
    errors = [
        err for err, loc in zip(errors, locs, strict=True) if not any(o != loc and o[: len(loc)] == loc for o in locs)
    ]
    lines = [f"{source}: {len(errors)} invalid field(s)"]
    for err in errors:
        path = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        value = err.get("input")
        if err["type"] == "missing":
            lines.append(f"  {path}: field required")
        elif isinstance(value, dict) and path == "(top level)":
            lines.append(f"  {msg}")
        else:
            lines.append(f"  {path} = {_short(value)}: {msg}")
    return "\n".join(lines)


def _short(value: Any) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def scenario_from_dict(data: Any, *, source: str = "scenario") -> Scenario:
    """Validate a mapping (e.g. parsed YAML); raises ``ConfigError`` naming each bad field.

    ``{}`` is the default market; ``None`` is refused, so a missing scenario never silently becomes the default.
    """
    if data is None:
        raise ConfigError(f"{source}: no scenario (null); expected a mapping of scenario fields ({{}} for the default)")
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of scenario fields, got {type(data).__name__}")
    try:
        return Scenario.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source)) from None


def load_scenario(path: Path | str) -> Scenario:
    """Read a scenario YAML file; a missing file, bad YAML or invalid field raises ``ConfigError``."""
    return scenario_from_dict(read_yaml_mapping(path, what="scenario"), source=str(path))


def resolve_scenario(scenario: Scenario | Path | str | None) -> Scenario:
    """Accept a Scenario, a YAML path, or None (the default market)."""
    if scenario is None:
        return Scenario()
    if isinstance(scenario, Scenario):
        return scenario
    return load_scenario(scenario)
