"""``PolicyService``: decisions and feedback in process, with logging and metrics; the HTTP app wraps it."""

from __future__ import annotations

import os
import secrets
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from adrl.actions import flat_index
from adrl.errors import ConfigError, FeatureMismatch
from adrl.policy import Exploration, LoadedPolicy, load_policy
from adrl.requests import (
    REQUEST_ADAPTER,
    REQUESTS_ADAPTER,
    DecisionRequest,
    InvalidRequest,
    invalid_from,
    summarize_errors,
    validate,
    validation_errors,
)
from adrl.serving.decision_log import MIN_KEY_BYTES, DecisionLog
from adrl.serving.experiment import ArmSpec, Experiment, ExperimentSpec, load_arm
from adrl.serving.metrics import Metrics

MAX_BATCH = 10_000
R = TypeVar("R")


def _same(responses: list[dict[str, Any]]) -> Any:
    return responses


class FeedbackRequest(BaseModel):
    """What happened after a decision; several events for one decision are merged (any click counts)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    decision_id: str = Field(min_length=1, max_length=128, description="event_id returned by POST /v1/decisions")
    click: bool = False
    conversion: bool = Field(False, description="a conversion implies a click")
    leave: bool = Field(False, description="the user quit or opted out")
    shown: bool = Field(True, description="false if the ad was never displayed (e.g. the session ended first)")


_DECISION = REQUEST_ADAPTER
_DECISIONS = REQUESTS_ADAPTER
_FEEDBACK = TypeAdapter(FeedbackRequest)


def _parse_json(adapter: TypeAdapter[Any], body: bytes) -> Any:
    try:
        return validate(adapter, body)
    except ValidationError as e:
        raise invalid_from(e) from None


def parse_decision_body(body: bytes, *, max_batch: int = MAX_BATCH) -> DecisionRequest | list[DecisionRequest]:
    """One request object or a JSON list of them; raises :class:`InvalidRequest` (``errors`` name each field)."""
    head = body.lstrip()[:1]
    if head == b"[":
        reqs = _parse_json(_DECISIONS, body)
        if len(reqs) > max_batch:
            raise InvalidRequest.at([], f"a batch holds at most {max_batch} requests; split it", f"{len(reqs)} items")
        return reqs
    if head != b"{":
        raise InvalidRequest(
            "request body must be a JSON object (one decision) or a list of objects",
            [
                {
                    "loc": [],
                    "msg": "expected a JSON object or list",
                    "type": "json_invalid",
                    "input": body[:40].decode(errors="replace"),
                }
            ],
        )
    return _parse_json(_DECISION, body)


_FEEDBACKS = TypeAdapter(list[FeedbackRequest])


def parse_feedback_body(body: bytes, *, max_batch: int = MAX_BATCH) -> FeedbackRequest | list[FeedbackRequest]:
    """One feedback object, or a JSON list of them (a traffic driver reports a whole step at once)."""
    if body.lstrip()[:1] == b"[":
        items = _parse_json(_FEEDBACKS, body)
        if len(items) > max_batch:
            raise InvalidRequest.at([], f"a batch holds at most {max_batch} feedback events; split it", len(items))
        return items
    return _parse_json(_FEEDBACK, body)


class Prepared(NamedTuple):
    """A validated, encoded decision request."""

    obs: np.ndarray
    episode_id: str | int | None
    step: int | None
    user_id: str | None


@dataclass(frozen=True)
class ServeConfig:
    """Everything ``adrl serve`` configures; see ``adrl serve --help`` for each option."""

    policy: Path
    log_dir: Path | None = None
    exploration: str = "none"
    seed: int | None = None
    feedback_window: float = 60.0
    default_reward: float = 0.0
    log_key_env: str = "ADRL_LOG_KEY"
    ephemeral_log_key: bool = False
    rotate_mb: float = 64.0
    fsync_interval: float = 1.0
    flush_interval: float = 5.0
    experiment: ExperimentSpec | None = None  # several arms; ``policy`` is then the first arm's


def log_key_from_env(env_var: str, *, logging: bool, ephemeral: bool) -> bytes | None:
    """The user-id hashing key from ``env_var``; refuses to log without one unless ``ephemeral`` (random key)."""
    raw = os.environ.get(env_var)
    if raw:
        key = raw.encode()
        if len(key) < MIN_KEY_BYTES:
            raise ConfigError(
                f"${env_var} holds a {len(key)}-byte key; the user-id hashing key needs at least "
                f"{MIN_KEY_BYTES} bytes (e.g. `openssl rand -hex 32`)"
            )
        return key
    if not logging:
        return None
    if ephemeral:
        return secrets.token_bytes(32)
    raise ConfigError(
        f"logging is enabled but ${env_var} is not set; user ids are stored only as a keyed hash, "
        f"so set {env_var} to a secret of at least {MIN_KEY_BYTES} bytes, or pass "
        "--ephemeral-log-key to use a random key for this run (hashes then differ across restarts)"
    )


class PolicyService:
    """A loaded policy plus its decision log and metrics: ``decide``, ``decide_batch``, ``feedback``, ``describe``.

    Use as a context manager (or call ``start``/``close``) so the log recovers, joins and flushes.
    """

    def __init__(
        self, policy: LoadedPolicy, log: DecisionLog | None = None, experiment: Experiment | None = None
    ) -> None:
        self.policy = policy
        self.experiment = experiment
        self.log = log or DecisionLog(
            policy.scenario, log_dir=None, key=None, policy_version=policy.policy_version,
            experiment=experiment is not None,
        )  # fmt: skip
        self._seed: int | None = None
        self._swap_lock = threading.Lock()
        labels = []
        for d in policy.delay_hours:
            for s in policy.slot_names:
                for c in policy.creative_names:
                    labels.append((str(d), s, c))
        self.metrics = Metrics(labels)
        stats = self.log.stats
        self.metrics.gauge(
            "adrl_log_pending_decisions", "Decisions whose feedback window is open.", lambda: self.log.n_pending
        )
        self.metrics.gauge(
            "adrl_log_rows_written", "Joined rows written to parquet since start.", lambda: stats.rows_written
        )
        self.metrics.gauge(
            "adrl_log_rows_defaulted",
            "Joined rows written with the default reward since start.",
            lambda: stats.rows_defaulted,
        )
        self.metrics.gauge(
            "adrl_log_write_errors",
            "Failed parquet writes since start (the journal keeps the data).",
            lambda: stats.write_errors,
        )
        self.metrics.gauge(
            "adrl_log_recovered_torn_records", "Torn journal lines skipped at start.", lambda: stats.recovered_torn
        )
        self.metrics.gauge(
            "adrl_log_recovered_corrupt_records",
            "Journal lines skipped at start because their checksum or JSON was bad.",
            lambda: stats.recovered_corrupt,
        )
        self._action_dicts = [
            {
                "delay_index": d,
                "delay_hours": policy.delay_hours[d],
                "slot_index": s,
                "slot": policy.slot_names[s],
                "creative_index": c,
                "creative": policy.creative_names[c],
            }
            for d in range(policy.nvec[0])
            for s in range(policy.nvec[1])
            for c in range(policy.nvec[2])
        ]  # by flat action index
        self._explore = str(policy.exploration)

    @classmethod
    def from_config(cls, cfg: ServeConfig) -> PolicyService:
        """Load the policy (or the experiment's arms) and set up the log from a :class:`ServeConfig` (reads the key's
        environment variable)."""
        key = log_key_from_env(cfg.log_key_env, logging=cfg.log_dir is not None, ephemeral=cfg.ephemeral_log_key)
        experiment = None
        if cfg.experiment is not None:
            experiment = Experiment.load(cfg.experiment, seed=cfg.seed, log_key=key)
            policy = experiment.arms[0].policy
        else:
            policy = load_policy(cfg.policy, exploration=Exploration.parse(cfg.exploration), seed=cfg.seed)
        if cfg.rotate_mb <= 0:
            raise ConfigError(f"rotate size must be > 0 MB, got {cfg.rotate_mb:g}")
        log = DecisionLog(
            policy.scenario,
            log_dir=cfg.log_dir,
            key=key,
            policy_version=policy.policy_version,
            feedback_window=cfg.feedback_window,
            default_reward=cfg.default_reward,
            rotate_bytes=max(1024, int(cfg.rotate_mb * (1 << 20))),
            fsync_interval=cfg.fsync_interval,
            flush_interval=cfg.flush_interval,
            experiment=experiment is not None,
        )
        service = cls(policy, log, experiment)
        service._seed = cfg.seed
        return service

    def start(self) -> PolicyService:
        started = self.log.started
        self.log.start()
        self.metrics.start()
        if self.experiment is not None and not started:
            self.log.record_experiment(self.experiment.history[-1])
        return self

    def close(self) -> None:
        self.log.close()
        self.metrics.stop()

    def drain(self) -> int:
        """Join and write every pending decision now, windows open or not (the traffic is over); rows written."""
        return self.log.join_closed(force_write=True, everything=True)

    def __enter__(self) -> PolicyService:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- decisions ---------------------------------------------------------------------------------------
    def prepare(
        self, request: Mapping[str, Any], loc: Sequence[str | int] = (), *, validated: bool = False
    ) -> Prepared:
        """Validate (unless ``validated``: it came from :func:`parse_decision_body`) and encode one request
        (raises :class:`InvalidRequest`)."""
        req: DecisionRequest = request if validated else self.policy.parse(request, loc)  # type: ignore[assignment]
        obs = self.policy.encoder.encode(req, loc)
        user = req.get("user")
        uid = user.get("id") if user is not None else None
        if self.experiment is not None and uid is None and req.get("episode_id") is None:
            raise _no_unit(loc)
        return Prepared(obs, req.get("episode_id"), req.get("step"), uid)

    def decide_prepared(
        self, items: Sequence[Prepared], *, share: bool = False, encode: Callable[[list[dict[str, Any]]], R] = _same
    ) -> R:
        """Decide for encoded requests at once (one policy call), journal them, and return ``encode(responses)``."""
        if not items:
            return encode([])
        obs = np.stack([it.obs for it in items]) if len(items) > 1 else items[0].obs[None, :]
        return self._decide(
            obs, [it.episode_id for it in items], [it.step for it in items], [it.user_id for it in items], share=share,
            encode=encode,
        )  # fmt: skip

    def decide_validated(
        self,
        requests: Sequence[DecisionRequest],
        *,
        share: bool = False,
        encode: Callable[[list[dict[str, Any]]], R] = _same,
    ) -> R:
        """Decide for validated requests (from :func:`parse_decision_body`): one encoding pass, one policy call,
        one journal write. ``share``: the response dicts may share their constant parts (for immediate encoding).
        ``encode``: what the client gets from the response dicts (e.g. JSON bytes); the decisions are journaled only
        once it has returned, so a request that fails there leaves nothing in the log."""
        if not requests:
            return encode([])
        obs = self.policy.encoder.encode_many(requests)
        episodes, steps, users = [], [], []
        for r in requests:
            episodes.append(r.get("episode_id"))
            steps.append(r.get("step"))
            user = r.get("user")
            users.append(user.get("id") if user is not None else None)
        if self.experiment is not None:
            for i, (u, e) in enumerate(zip(users, episodes, strict=True)):
                if u is None and e is None:
                    raise _no_unit([i])
        return self._decide(obs, episodes, steps, users, share=share, encode=encode)

    def _decide(
        self,
        obs: np.ndarray,
        episodes: Sequence[str | int | None],
        steps: Sequence[int | None],
        users: Sequence[str | None],
        *,
        share: bool,
        encode: Callable[[list[dict[str, Any]]], R],
    ) -> R:
        experiment = self.experiment  # one version for the whole call, even if a hot swap lands meanwhile
        if experiment is not None:
            return self._decide_arms(experiment, obs, episodes, steps, users, share=share, encode=encode)
        arrays = self.policy.decide_arrays(obs)
        flat = flat_index(arrays.action, self.policy.nvec)
        actions = self._action_dicts
        pv, pid, explore = self.policy.policy_version, self.policy.policy_id, self._explore

        def respond(ids: list[str], out_steps: list[int]) -> R:
            out = [
                {
                    "event_id": eid,
                    "episode_id": ep,
                    "step": step,
                    "action": actions[a],
                    "propensity": p,
                    "propensities": {"delay": pd, "slot": ps, "creative": pc},
                    "policy_id": pid,
                    "policy_version": pv,
                    "exploration": explore,
                }
                for eid, ep, step, a, p, (pd, ps, pc) in zip(
                    ids, episodes, out_steps, flat.tolist(), arrays.propensity.tolist(), arrays.components.tolist(),
                    strict=True,
                )
            ]  # fmt: skip
            if not share:  # callers in process own their dicts
                for r in out:
                    r["action"] = r["action"].copy()
            return encode(out)

        # journaled (in the OS) with the answer it belongs to, before anything is returned
        answer = self.log.record_decisions(
            episodes, steps, users, obs, arrays.action, arrays.propensity, arrays.components, respond
        )
        self.metrics.count_decisions(flat)
        return answer

    def _decide_arms(
        self,
        experiment: Experiment,
        obs: np.ndarray,
        episodes: Sequence[str | int | None],
        steps: Sequence[int | None],
        users: Sequence[str | None],
        *,
        share: bool,
        encode: Callable[[list[dict[str, Any]]], R],
    ) -> R:
        """Each row decided by its user's arm (each arm its own exploration and exact propensities), one journal
        write for all, with the answer it belongs to."""
        units = [u if u is not None else f"episode:{e}" for u, e in zip(users, episodes, strict=True)]
        arm_of = experiment.assign(units)
        n = obs.shape[0]
        action = np.empty((n, 3), dtype=np.int64)
        propensity = np.empty(n)
        components = np.empty((n, 3))
        served: dict[int, int] = {}  # decisions per arm, counted once they are recorded
        for k in np.unique(arm_of).tolist():
            rows = np.flatnonzero(arm_of == k)
            arrays = experiment.arms[k].policy.decide_arrays(obs[rows])
            action[rows], propensity[rows], components[rows] = arrays.action, arrays.propensity, arrays.components
            served[k] = rows.size
        tags = [experiment.arms[k].tag for k in arm_of.tolist()]
        flat = flat_index(action, self.policy.nvec)
        actions = self._action_dicts
        explore = [str(a.policy.exploration) for a in experiment.arms]

        def respond(ids: list[str], out_steps: list[int]) -> R:
            out = [
                {
                    "event_id": eid,
                    "episode_id": ep,
                    "step": step,
                    "action": actions[a] if share else actions[a].copy(),
                    "propensity": p,
                    "propensities": {"delay": pd, "slot": ps, "creative": pc},
                    "policy_id": t.policy_id,
                    "policy_version": t.policy_version,
                    "exploration": explore[k],
                    "arm": t.arm,
                }
                for eid, ep, step, a, p, (pd, ps, pc), t, k in zip(
                    ids, episodes, out_steps, flat.tolist(), propensity.tolist(), components.tolist(), tags,
                    arm_of.tolist(), strict=True,
                )
            ]  # fmt: skip
            return encode(out)

        answer = self.log.record_decisions(
            episodes, steps, users, obs, action, propensity, components, respond,
            tags=[(t.arm, t.policy_id, t.policy_version) for t in tags],
        )  # fmt: skip
        for k, m in served.items():  # a failed answer leaves no trace, in the counts either
            experiment.arms[k].decisions += m
            self.metrics.count_arm(experiment.arms[k].spec.name, m)
        self.metrics.count_decisions(flat)
        return answer

    # ---- experiment ----------------------------------------------------------------------------------------
    def swap(self, arms: Sequence[ArmSpec] = (), split: Sequence[float] | None = None) -> dict[str, Any]:
        """Hot swap: replace same-named arms, add new ones and/or change the split, without stopping.

        The new arms load first (a bad one changes nothing); then the experiment reference is replaced at once, so
        each decision is made wholly by the old or the new version, and the version is journaled with its time.
        """
        if self.experiment is None:
            raise ConfigError("this server serves one policy, not an experiment; start it with --policy A --policy B")
        with self._swap_lock:
            old = self.experiment
            base = len(old.arms) + old.version * 100  # a fresh sampler stream for every loaded arm
            loaded = [load_arm(a, seed=self._seed, index=base + i) for i, a in enumerate(arms)]
            for a in loaded:
                if a.policy.layout.hash != self.policy.layout.hash:
                    raise FeatureMismatch(
                        f"arm {a.spec.name!r} ({a.spec.policy}) uses feature layout {a.policy.layout.hash}, the "
                        f"experiment uses {self.policy.layout.hash}; every arm must read the same features"
                    )
            new = old.updated(arms=loaded, split=split)
            self.log.record_experiment(new.history[-1])
            self.experiment = new
        return new.describe()

    def decide(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """One decision for a request mapping (``user``, ``context``, ``history`` or ``obs``, ``episode_id``...)."""
        return self.decide_prepared([self.prepare(request)])[0]

    def decide_batch(self, requests: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Decisions for many requests with one policy call; an invalid one fails the batch, naming its index."""
        if len(requests) > MAX_BATCH:
            raise InvalidRequest.at(
                [], f"a batch holds at most {MAX_BATCH} requests; split it", f"{len(requests)} items"
            )
        return self.decide_validated([self.policy.parse(r, [i]) for i, r in enumerate(requests)])

    # ---- feedback ----------------------------------------------------------------------------------------
    def feedback(self, request: FeedbackRequest | Mapping[str, Any]) -> dict[str, Any]:
        """Record click/conversion/leave for a decision id (raises ``UnknownDecision`` / ``FeedbackClosed``)."""
        if not isinstance(request, FeedbackRequest):
            try:
                request = FeedbackRequest.model_validate(dict(request))
            except ValidationError as e:
                raise InvalidRequest(summarize_errors(validation_errors(e)), validation_errors(e)) from None
        result = self.log.record_feedback(
            request.decision_id,
            click=request.click,
            conversion=request.conversion,
            leave=request.leave,
            shown=request.shown,
        )
        outcome = "conversion" if request.conversion else "click" if request.click else "no_click"
        self.metrics.count_feedback(outcome)
        return result

    def feedback_batch(self, requests: Sequence[FeedbackRequest | Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Several feedback events, each answered in order; the first bad one raises (earlier ones are recorded)."""
        return [self.feedback(r) for r in requests]

    # ---- introspection -----------------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        out = {**self.policy.describe(), "log": self.log.describe()}
        if self.experiment is not None:
            out["experiment"] = self.experiment.name
        return out

    def health(self) -> dict[str, Any]:
        stats = self.log.stats
        return {
            "status": "ok",
            "policy_version": self.policy.policy_version,
            "pending": self.log.n_pending,
            "log_write_errors": stats.write_errors,
            "last_log_error": stats.last_error,
        }


def _no_unit(loc: Sequence[str | int]) -> InvalidRequest:
    return InvalidRequest.at(
        [*loc, "user", "id"],
        "this server runs an experiment and assigns arms by user; send user.id (or an episode_id)",
        None,
    )


def dumps(obj: Any) -> bytes:
    """Compact JSON bytes for responses (orjson: NaN/inf would become null, but responses hold none)."""
    return orjson.dumps(obj)
