"""Experiments in the server: arms (policies), a split, and sticky keyed-hash assignment of users.

A user is assigned by ``bucket = blake2b(unit id, key=salt) mod 10,000``; arm ``k`` owns the buckets from the
cumulative split of the arms before it up to its own, so a user keeps their arm for as long as the split does, and a
ramp (a split change) moves only the users whose buckets change owner. The salt is per experiment (from the YAML, or
derived from the log's hashing key and the experiment name, so it survives restarts and cannot be guessed without
the key), so assignment is unpredictable and independent between experiments.

Experiment YAML (``adrl serve --experiment exp.yaml``)::

    name: ranker-vs-greedy
    salt: optional-secret          # default: derived from the log key and the name
    arms:
      - {name: control, policy: runs/A/policy, exploration: "epsilon:0.05"}
      - {name: treatment, policy: runs/B/policy}
    split: [50, 50]                # percent, one per arm, summing to 100 (two decimals at most)

Every arm must use the same feature layout (one request encoding); each arm keeps its own exploration and sampler,
so its propensities are exact and its traffic is an OPE dataset of its own.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from adrl.errors import ConfigError, FeatureMismatch
from adrl.io import read_yaml_mapping
from adrl.policy import Exploration, LoadedPolicy, load_policy

BUCKETS = 10_000
ARM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MAX_ARMS = 16


@dataclass(frozen=True)
class ArmSpec:
    """What an arm serves: a policy artifact and its exploration."""

    name: str
    policy: Path
    exploration: str = "none"


@dataclass(frozen=True)
class ArmTag:
    """What every decision of an arm logs: arm name, policy id and policy version."""

    arm: str
    policy_id: str
    policy_version: str


@dataclass
class Arm:
    spec: ArmSpec
    policy: LoadedPolicy
    tag: ArmTag
    decisions: int = 0


def check_arm_name(name: object, where: str) -> str:
    if not isinstance(name, str) or not ARM_NAME.match(name):
        raise ConfigError(
            f"{where}: arm name {name!r} is not valid; expected 1-64 letters, digits, '_', '.' or '-' "
            "(starting with a letter or digit)"
        )
    return name


def parse_split(raw: str | Sequence[Any], n_arms: int) -> tuple[float, ...]:
    """Percentages per arm (``"50,50"`` or a list) that sum to 100, each >= 0 with at most two decimals."""
    parts: Sequence[Any] = [p.strip() for p in raw.split(",")] if isinstance(raw, str) else raw
    if len(parts) != n_arms:
        raise ConfigError(f"split {_show(raw)} has {len(parts)} value(s) for {n_arms} arm(s); give one percent per arm")
    out = []
    for p in parts:
        try:
            v = float(p)
        except (TypeError, ValueError):
            raise ConfigError(f"split {_show(raw)}: {p!r} is not a number; expected percentages like 50,50") from None
        if isinstance(p, bool) or not (np.isfinite(v) and v >= 0):
            raise ConfigError(f"split {_show(raw)}: {p!r} must be a finite percentage >= 0")
        if abs(v * 100 - round(v * 100)) > 1e-6:
            raise ConfigError(f"split {_show(raw)}: {p!r} has more than two decimals (buckets are 0.01%)")
        out.append(v)
    if round(sum(out) * 100) != BUCKETS:
        raise ConfigError(f"split {_show(raw)} sums to {sum(out):g}; the percentages must sum to 100")
    return tuple(out)


def _show(raw: str | Sequence[Any]) -> str:
    return raw if isinstance(raw, str) else ",".join(str(p) for p in raw)


def bucket_of(salt: bytes, unit: str) -> int:
    """The user's bucket in 0..9999: keyed BLAKE2b of the unit id (uniform, independent across salts)."""
    digest = hashlib.blake2b(unit.encode(), key=salt[:64], digest_size=8).digest()
    return int.from_bytes(digest, "little") % BUCKETS


def bounds_of(split: Sequence[float]) -> np.ndarray:
    """Upper bucket bound of each arm (cumulative split in buckets)."""
    return np.cumsum([round(p * 100) for p in split]).astype(np.int64)


def arm_of_bucket(bounds: np.ndarray, bucket: int) -> int:
    return int(np.searchsorted(bounds, bucket, side="right"))


def derive_salt(log_key: bytes | None, name: str) -> bytes:
    if log_key is None:
        return hashlib.blake2b(f"adrl-experiment:{name}:{time.time_ns()}".encode(), digest_size=32).digest()
    return hmac.digest(log_key, f"experiment-salt:{name}".encode(), "sha256")


@dataclass(frozen=True)
class ExperimentSpec:
    name: str
    arms: tuple[ArmSpec, ...]
    split: tuple[float, ...]
    salt: bytes | None = None


def spec_from_mapping(raw: Mapping[str, Any], where: str, *, base: Path | None = None) -> ExperimentSpec:
    """An experiment spec from a mapping (the YAML's or the admin endpoint's); ``ConfigError`` naming the field."""
    known = {"name", "salt", "arms", "split"}
    extra = sorted(set(raw) - known)
    if extra:
        raise ConfigError(f"{where}: unknown field(s) {extra}; expected {sorted(known)}")
    name = raw.get("name", "experiment")
    if not isinstance(name, str) or not ARM_NAME.match(name):
        raise ConfigError(f"{where}: name {name!r} must be 1-64 letters, digits, '_', '.' or '-'")
    arms_raw = raw.get("arms")
    if not isinstance(arms_raw, list) or not arms_raw:
        raise ConfigError(f"{where}: arms must be a non-empty list of {{name, policy, exploration}}")
    if len(arms_raw) > MAX_ARMS:
        raise ConfigError(f"{where}: {len(arms_raw)} arms; at most {MAX_ARMS}")
    arms = []
    for i, a in enumerate(arms_raw):
        if not isinstance(a, Mapping):
            raise ConfigError(f"{where}: arms[{i}] must be a mapping with name and policy")
        bad = sorted(set(a) - {"name", "policy", "exploration"})
        if bad:
            raise ConfigError(f"{where}: arms[{i}] has unknown field(s) {bad}; expected name, policy, exploration")
        if not isinstance(a.get("policy"), str) or not a["policy"]:
            raise ConfigError(f"{where}: arms[{i}].policy must be a policy artifact directory")
        policy = Path(a["policy"])
        if base is not None and not policy.is_absolute():
            policy = base / policy
        exploration = a.get("exploration", "none")
        if not isinstance(exploration, str):
            raise ConfigError(f"{where}: arms[{i}].exploration must be text like 'epsilon:0.05'")
        Exploration.parse(exploration)
        arms.append(ArmSpec(check_arm_name(a.get("name"), f"{where}: arms[{i}]"), policy, exploration))
    names = [a.name for a in arms]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"{where}: arm name(s) {dup} appear more than once; each arm needs its own name")
    split = parse_split(raw.get("split", [100 / len(arms)] * len(arms)) if len(arms) > 1 else [100], len(arms))
    salt = raw.get("salt")
    if salt is not None and (not isinstance(salt, str) or len(salt) < 8):
        raise ConfigError(f"{where}: salt must be text of at least 8 characters")
    return ExperimentSpec(name, tuple(arms), split, None if salt is None else salt.encode())


def read_experiment(path: Path | str) -> ExperimentSpec:
    """An experiment YAML (see the module docstring); relative policy paths are relative to the file."""
    path = Path(path)
    raw = read_yaml_mapping(path, what="experiment")
    return spec_from_mapping(raw, str(path), base=path.parent)


def load_arm(spec: ArmSpec, *, seed: int | None, index: int) -> Arm:
    # each arm its own sampler stream, so adding an arm never changes another arm's draws
    arm_seed = None if seed is None else int(np.random.SeedSequence([seed, index]).generate_state(1)[0])
    policy = load_policy(spec.policy, exploration=Exploration.parse(spec.exploration), seed=arm_seed)
    return Arm(spec, policy, ArmTag(spec.name, policy.policy_id, policy.policy_version))


def check_layouts(arms: Sequence[Arm]) -> None:
    first = arms[0].policy
    for a in arms[1:]:
        if a.policy.layout.hash != first.layout.hash:
            raise FeatureMismatch(
                f"arm {a.spec.name!r} ({a.spec.policy}) uses feature layout {a.policy.layout.hash}, arm "
                f"{arms[0].spec.name!r} uses {first.layout.hash}; every arm of an experiment must read the same "
                "features (train them on the same scenario)"
            )


@dataclass
class Experiment:
    """The arms being served, their split and salt, and the history of versions (what served when)."""

    name: str
    arms: list[Arm]
    split: tuple[float, ...]
    salt: bytes
    version: int = 1
    history: list[dict[str, Any]] = field(default_factory=list)
    unassigned: int = 0

    def __post_init__(self) -> None:
        if len(self.split) != len(self.arms):
            raise ConfigError(f"{len(self.arms)} arm(s) need {len(self.arms)} split value(s), got {len(self.split)}")
        check_layouts(self.arms)
        self.bounds = bounds_of(self.split)
        self._lock = threading.Lock()
        self._cache: dict[str, int] = {}
        self.history.append(self.snapshot())

    @classmethod
    def load(cls, spec: ExperimentSpec, *, seed: int | None, log_key: bytes | None) -> Experiment:
        arms = [load_arm(a, seed=seed, index=i) for i, a in enumerate(spec.arms)]
        salt = spec.salt if spec.salt is not None else derive_salt(log_key, spec.name)
        return cls(spec.name, arms, spec.split, salt)

    def snapshot(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "since": time.time(),
            "arms": [
                {"name": a.spec.name, "policy_id": a.tag.policy_id, "policy_version": a.tag.policy_version,
                 "exploration": str(a.policy.exploration), "split": p, "policy": str(Path(a.spec.policy).resolve())}
                for a, p in zip(self.arms, self.split, strict=True)
            ],
        }  # fmt: skip

    def assign(self, units: Sequence[str]) -> np.ndarray:
        """Arm index of each unit id (cached: the same users come back)."""
        cache, salt = self._cache, self.salt
        out = np.empty(len(units), dtype=np.int64)
        for i, u in enumerate(units):
            b = cache.get(u)
            if b is None:
                if len(cache) >= 500_000:
                    cache.clear()
                b = cache[u] = bucket_of(salt, u)
            out[i] = b
        return np.searchsorted(self.bounds, out, side="right")

    def arm_index(self, name: str) -> int:
        for i, a in enumerate(self.arms):
            if a.spec.name == name:
                return i
        raise ConfigError(f"unknown arm {name!r}; the experiment has {[a.spec.name for a in self.arms]}")

    def updated(self, *, arms: Sequence[Arm] | None = None, split: Sequence[float] | None = None) -> Experiment:
        """A new version with ``arms`` (replacing same-named arms, appending new ones) and/or a new split."""
        new_arms = list(self.arms)
        for a in arms or ():
            names = [x.spec.name for x in new_arms]
            if a.spec.name in names:
                old = new_arms[names.index(a.spec.name)]
                a.decisions = old.decisions
                new_arms[names.index(a.spec.name)] = a
            else:
                new_arms.append(a)
        if len(new_arms) > MAX_ARMS:
            raise ConfigError(f"the experiment would have {len(new_arms)} arms; at most {MAX_ARMS}")
        if split is None:
            if len(new_arms) != len(self.arms):
                raise ConfigError(
                    f"adding an arm needs a split for all {len(new_arms)} arms "
                    f"({', '.join(a.spec.name for a in new_arms)})"
                )
            split = self.split
        split = parse_split(list(split), len(new_arms))
        nxt = Experiment(self.name, new_arms, tuple(split), self.salt, self.version + 1, list(self.history),
                         self.unassigned)  # fmt: skip
        return nxt

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "buckets": BUCKETS,
            "assignment": "blake2b(unit id, key=per-experiment salt) mod 10000; unit: user.id, else episode_id",
            "arms": [
                {"name": a.spec.name, "policy_id": a.tag.policy_id, "policy_version": a.tag.policy_version,
                 "exploration": str(a.policy.exploration), "split": p, "decisions": a.decisions}
                for a, p in zip(self.arms, self.split, strict=True)
            ],
            "split": list(self.split),
            "history": self.history,
        }  # fmt: skip
