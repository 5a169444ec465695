"""Query a policy artifact from code: ``adrl.load_policy(path).decide(user=..., context=..., history=...)``.

Requests (their schema and the one encoder into observations) are :mod:`adrl.requests`; this module loads a
policy artifact and decides: exploration, sampling and exact propensities.

Exploration (optional) wraps the policy's exact joint distribution π(a|x) over the flat action index
``(delay * n_slots + slot) * n_creatives + creative`` (``A`` actions):

* ``epsilon:ε`` — q(a|x) = (1 - ε) π(a|x) + ε / A (uniform over the whole joint action space);
* ``softmax:T`` — q(a|x) = exp(s(a|x) / T) / Σ_b exp(s(b|x) / T), where s are the policy's action scores
  (``action_scores(obs)``, e.g. Q-values or logits, when the policy has that method) and otherwise its action
  probabilities π(a|x) themselves (so a deterministic policy keeps its choice with probability
  e^{1/T} / (e^{1/T} + A - 1));
* ``none`` — q = π.

The action is sampled from q with the seeded generator of the loaded policy, and the returned propensity is
q(a|x) of that very action; the per-component propensities are the marginals of q (delay, slot, creative).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import ValidationError

from adrl.actions import sample_from
from adrl.agents.registry import MANIFEST, load_policy_artifact, read_policy_manifest
from adrl.errors import ArtifactError, ConfigError, FeatureMismatch
from adrl.features import FeatureLayout
from adrl.requests import REQUEST_ADAPTER, DecisionRequest, InvalidRequest, RequestEncoder, invalid_from, validate
from adrl.scenario import Scenario


@dataclass(frozen=True)
class Exploration:
    """How served actions are drawn from the policy's distribution; see the module docstring for the maths."""

    kind: Literal["none", "epsilon", "softmax"] = "none"
    value: float = 0.0

    def __post_init__(self) -> None:
        if self.kind == "epsilon" and not 0.0 <= self.value <= 1.0:
            raise ConfigError(f"exploration epsilon must be in [0, 1], got {self.value:g}")
        if self.kind == "softmax" and not (self.value > 0 and math.isfinite(self.value)):
            raise ConfigError(f"softmax temperature must be a finite number > 0, got {self.value:g}")

    @classmethod
    def parse(cls, spec: str | None) -> Exploration:
        """``none``, ``epsilon:0.05`` or ``softmax:0.5``."""
        if spec is None or spec.strip().lower() in ("", "none"):
            return cls()
        kind, sep, raw = spec.strip().partition(":")
        kind = kind.lower()
        if not sep or kind not in ("epsilon", "softmax"):
            raise ConfigError(
                f"exploration {spec!r} is not understood; expected 'none', 'epsilon:0.05' or 'softmax:0.5'"
            )
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"exploration {spec!r}: {raw!r} is not a number") from None
        return cls("epsilon" if kind == "epsilon" else "softmax", value)

    def __str__(self) -> str:
        return "none" if self.kind == "none" else f"{self.kind}:{self.value:g}"

    def apply(self, probs: np.ndarray, scores: np.ndarray | None = None) -> np.ndarray:
        """Serving distribution q (n, A) from the policy's π (n, A) and optional scores (n, A)."""
        if self.kind == "epsilon":
            return (1.0 - self.value) * probs + self.value / probs.shape[1]
        if self.kind == "softmax":
            s = (probs if scores is None else scores) / self.value
            s = s - s.max(axis=1, keepdims=True)
            e = np.exp(s)
            return e / e.sum(axis=1, keepdims=True)
        return probs


# ---- decisions ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Action:
    """A served (delay, slot, creative) with names."""

    delay_index: int
    delay_hours: int
    slot_index: int
    slot: str
    creative_index: int
    creative: str


@dataclass(frozen=True)
class Propensities:
    """The marginal probabilities the served action's components had (delay, slot, creative)."""

    delay: float
    slot: float
    creative: float


@dataclass(frozen=True)
class Decision:
    """An action with the exact probability it had of being served, joint and per component.

    The one decision type: ``LoadedPolicy.decide`` returns it in process, and ``POST /v1/decisions`` answers
    ``to_dict()`` of it (``PolicyService.decide`` builds that dict directly, on the hot path), where the server also
    sets ``event_id``, ``episode_id`` and ``step`` (None in process: nothing was logged).
    """

    action: Action
    propensity: float
    propensities: Propensities
    policy_id: str
    policy_version: str
    exploration: str
    event_id: str | None = None
    episode_id: str | int | None = None
    step: int | None = None

    @property
    def propensity_delay(self) -> float:
        return self.propensities.delay

    @property
    def propensity_slot(self) -> float:
        return self.propensities.slot

    @property
    def propensity_creative(self) -> float:
        return self.propensities.creative

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape of the decision (what the server answers)."""
        return asdict(self)


@dataclass(frozen=True)
class DecisionArrays:
    """Vectorised decisions for n observations: actions (n, 3), joint propensity (n,), components (n, 3)."""

    action: np.ndarray
    propensity: np.ndarray
    components: np.ndarray


class LoadedPolicy:
    """A policy artifact ready to serve: request encoding, exploration, sampling and exact propensities."""

    def __init__(
        self,
        policy: Any,
        manifest: dict[str, Any],
        scenario: Scenario,
        *,
        path: Path,
        policy_version: str,
        exploration: Exploration | None = None,
        seed: int | None = None,
    ) -> None:
        self.policy = policy
        self.manifest = manifest
        self.scenario = scenario
        self.path = path
        self.layout = FeatureLayout.from_scenario(scenario)
        self.encoder = RequestEncoder(self.layout)
        self.kind = str(manifest["kind"])
        self.policy_id = str(manifest.get("policy_id") or self.kind)
        self.policy_version = policy_version
        self.exploration = exploration or Exploration()
        self.rng = np.random.default_rng(seed)
        self.nvec: tuple[int, int, int] = scenario.action_nvec
        self.n_actions = scenario.n_actions
        self._scores = getattr(policy, "action_scores", None) if self.exploration.kind == "softmax" else None
        self.delay_hours = tuple(int(d) for d in scenario.delays)
        self.slot_names = tuple(s.name for s in scenario.slots)
        self.creative_names = tuple(c.name for c in scenario.creatives)

    # -- distribution ---------------------------------------------------------------------------------------
    def distribution(self, obs: np.ndarray) -> np.ndarray:
        """Serving distribution q (n, A) for observations (n, obs_dim), exploration included."""
        probs = np.asarray(self.policy.action_probabilities(obs), dtype=np.float64)
        n = obs.shape[0]
        if probs.shape != (n, self.n_actions):
            raise ArtifactError(
                f"{self.path}: policy returned probabilities of shape {probs.shape}, expected ({n}, {self.n_actions})"
            )
        sums = probs.sum(axis=1)
        if not (np.isfinite(sums).all() and np.abs(sums - 1.0).max() < 1e-4 and probs.min() >= 0):
            raise ArtifactError(
                f"{self.path}: policy returned invalid action probabilities (row sums "
                f"{float(sums.min()):g}..{float(sums.max()):g}, min {float(probs.min()):g}); "
                "expected a distribution per row"
            )
        scores = None
        if self._scores is not None:
            scores = np.asarray(self._scores(obs), dtype=np.float64)
            if scores.shape != probs.shape or np.isnan(scores).any():
                raise ArtifactError(
                    f"{self.path}: action_scores returned shape {scores.shape} or NaN; "
                    f"expected finite ({n}, {self.n_actions})"
                )
        return self.exploration.apply(probs, scores)

    def decide_arrays(self, obs: np.ndarray) -> DecisionArrays:
        """Sample one action per observation (n, obs_dim) with its joint and per-component propensities."""
        q = self.distribution(obs)
        n = obs.shape[0]
        flat = sample_from(q, self.rng)
        rows = np.arange(n)
        propensity = q[rows, flat]
        d, rest = np.divmod(flat, self.nvec[1] * self.nvec[2])
        s, c = np.divmod(rest, self.nvec[2])
        cube = q.reshape(n, *self.nvec)
        comps = np.empty((n, 3))  # each component's marginal at the chosen value (gathered first: 4x less summing)
        comps[:, 0] = cube[rows, d].sum(axis=(1, 2))
        comps[:, 1] = cube[rows, :, s].sum(axis=(1, 2))
        comps[:, 2] = cube[rows, :, :, c].sum(axis=(1, 2))
        return DecisionArrays(np.stack([d, s, c], axis=1), propensity, comps)

    # -- requests -------------------------------------------------------------------------------------------
    def parse(self, request: Mapping[str, Any], loc: Sequence[str | int] = ()) -> DecisionRequest:
        """A request mapping validated against :class:`DecisionRequest` (raises :class:`InvalidRequest`)."""
        if not isinstance(request, Mapping):
            raise InvalidRequest.at(list(loc) or ["request"], "expected a mapping of request fields", request)
        try:
            return validate(REQUEST_ADAPTER, request if isinstance(request, dict) else dict(request))
        except ValidationError as e:
            raise invalid_from(e, loc) from None

    def encode(
        self,
        user: Mapping[str, Any] | None = None,
        context: Mapping[str, Any] | None = None,
        history: Mapping[str, Any] | None = None,
        *,
        obs: Sequence[float] | np.ndarray | None = None,
    ) -> np.ndarray:
        """The observation vector (obs_dim,) of a request."""
        if obs is not None:
            return self.encoder.check_obs(obs)
        req = self.parse({"user": user, "context": context, "history": history})
        return self.encoder.encode(req)

    def decide(
        self,
        user: Mapping[str, Any] | None = None,
        context: Mapping[str, Any] | None = None,
        history: Mapping[str, Any] | None = None,
        *,
        obs: Sequence[float] | np.ndarray | None = None,
    ) -> Decision:
        """Decide for one request given as ``user``/``context``/``history`` mappings, or a raw ``obs``.

        Example:
            ``policy.decide(user={"segment": "commuter", "signals": {"travel": 0.7}}, context={"hour": 8},
            history={"impressions_24h": 2, "hours_since_last_ad": 3})``

        Raises:
            InvalidRequest: a field is unknown, missing, mistyped, non-finite or out of range.
        """
        x = self.encode(user, context, history, obs=obs)
        return self._decisions(self.decide_arrays(x[None, :]))[0]

    def decide_batch(
        self, requests: Sequence[Mapping[str, Any]] | None = None, *, obs: np.ndarray | None = None
    ) -> list[Decision]:
        """Decide for many requests (each a mapping with ``user``, ``context``, ``history`` or ``obs``) at once,
        or for raw observations ``obs`` (n, obs_dim)."""
        if obs is not None:
            o = np.asarray(obs)
            if o.ndim != 2:
                raise InvalidRequest.at(["obs"], f"expected shape (n, {self.layout.obs_dim})", o.shape)
            x = np.stack([self.encoder.check_obs(row, ["obs", i]) for i, row in enumerate(o)])
        else:
            reqs = list(requests or [])
            if not reqs:
                return []
            x = self.encoder.encode_many([self.parse(r, [i]) for i, r in enumerate(reqs)])
        return self._decisions(self.decide_arrays(x))

    def _decisions(self, arrays: DecisionArrays) -> list[Decision]:
        out = []
        explore = str(self.exploration)
        for (d, s, c), p, (pd, ps, pc) in zip(
            arrays.action.tolist(), arrays.propensity.tolist(), arrays.components.tolist(), strict=True
        ):
            action = Action(d, self.delay_hours[d], s, self.slot_names[s], c, self.creative_names[c])
            out.append(Decision(action, p, Propensities(pd, ps, pc), self.policy_id, self.policy_version, explore))
        return out

    def describe(self) -> dict[str, Any]:
        """What is being served: ids, kind, action space with names, feature names, hashes, exploration."""
        m = self.manifest
        return {
            "policy_id": self.policy_id,
            "policy_version": self.policy_version,
            "kind": self.kind,
            "format_version": m.get("version"),
            "created": m.get("created"),
            "exploration": str(self.exploration),
            "nvec": list(self.nvec),
            "delays_hours": list(self.delay_hours),
            "slots": list(self.slot_names),
            "creatives": list(self.creative_names),
            "segments": list(self.layout.segments),
            "categories": list(self.layout.categories),
            "obs_names": list(self.layout.obs_names),
            "exposure_half_life_hours": self.layout.exposure_half_life,
            "layout_hash": self.layout.hash,
            "scenario_hash": self.scenario.content_hash,
            "scenario_name": self.scenario.name,
        }


def load_policy(
    path: Path | str,
    *,
    exploration: Exploration | str | None = None,
    seed: int | None = None,
    expect_layout: FeatureLayout | None = None,
) -> LoadedPolicy:
    """Load a policy artifact directory for serving, after checking its manifest.

    Args:
        path: directory with ``manifest.json`` (written by an agent's or baseline's ``save``).
        exploration: ``None``/``"none"``, ``"epsilon:0.05"``, ``"softmax:0.5"`` or an :class:`Exploration`.
        seed: seed of the generator that samples served actions (same seed, same actions).
        expect_layout: refuse the policy unless it was built for this feature layout.

    Raises:
        ArtifactError: missing or malformed manifest, unknown kind, or spaces that disagree with the scenario.
        FeatureMismatch: the policy's feature layout differs from its scenario's or from ``expect_layout``.
    """
    path = Path(path)
    manifest, scenario = read_policy_manifest(path)
    layout = FeatureLayout.from_scenario(scenario)
    if expect_layout is not None and layout.hash != expect_layout.hash:
        raise FeatureMismatch(
            f"{path}: policy feature layout {layout.hash} does not match the expected "
            f"{expect_layout.hash}; was it trained on another scenario?"
        )
    policy = load_policy_artifact(path, expect_layout=layout)  # the loader evaluate and train use too
    if not hasattr(policy, "action_probabilities"):
        raise ArtifactError(f"{path}: loaded {type(policy).__name__} has no 'action_probabilities'; not servable")
    digest = hashlib.sha256((path / MANIFEST).read_bytes()).hexdigest()[:8]
    version = f"{manifest.get('policy_id') or manifest['kind']}.{digest}"
    explore = exploration if isinstance(exploration, Exploration) else Exploration.parse(exploration)
    return LoadedPolicy(policy, manifest, scenario, path=path, policy_version=version, exploration=explore, seed=seed)
