"""A traffic driver: ground-truth users living simulated days against a policy server.

Each user (hidden interest, segment and signals drawn once from ``seed``) lives ``days`` days. On every decision
epoch the driver sends the user's observable state as a real decision request (``user``/``context``/``history``,
the public schema; one list request per step for all users awake), samples the outcome of the served action from
the ground-truth world, and reports it as feedback (one list request per step), so the server's joined log holds
the rewards the world produced. A user who leaves (quits the session) ends that day early and comes back the next
day; the share of user-days ending so is the churn guardrail.

Endpoints: :class:`HttpEndpoint` (loopback only, keep-alive) and :class:`ServiceEndpoint` (the same requests into
a ``PolicyService`` in process: same validation, assignment and log, without HTTP; benchmarks use it for speed).
:func:`true_values` runs the same days with a policy deciding directly for a large population: the truth a readout
is compared with.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

import numpy as np

from adrl.errors import ConfigError, DataError
from adrl.features import WINDOWS, FeatureLayout
from adrl.scenario import Scenario
from adrl.world import UserBatch, World

MAX_USERS = 1_000_000
MAX_DAYS = 366
REQUEST_CHUNK = 2_000  # requests per list call (the server accepts up to 10,000)


class Endpoint(Protocol):
    """Where decisions come from: a list of requests in, a list of decisions out; feedback lists likewise."""

    def decide(self, requests: list[dict[str, Any]]) -> list[dict[str, Any]]: ...

    def feedback(self, events: list[dict[str, Any]]) -> list[dict[str, Any]]: ...


def check_loopback(url: str) -> tuple[str, int, str]:
    """Host, port and path prefix of a loopback http URL; anything else is refused (the driver makes load)."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ConfigError(f"--url {url!r}: expected http://127.0.0.1:PORT (the driver talks plain HTTP on loopback)")
    host = parts.hostname
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ConfigError(f"--url {url!r}: the driver only drives a server on loopback (127.0.0.1, ::1, localhost)")
    return host, parts.port or 80, parts.path.rstrip("/")


class HttpEndpoint:
    """A keep-alive HTTP/1.1 client of ``POST /v1/decisions`` and ``POST /v1/feedback`` on loopback."""

    def __init__(self, url: str, *, api_key: str | None = None, timeout: float = 30.0) -> None:
        self.host, self.port, self.prefix = check_loopback(url)
        self.timeout = timeout
        self.headers = {"content-type": "application/json"}
        if api_key:
            self.headers["authorization"] = f"Bearer {api_key}"
        self._conn: http.client.HTTPConnection | None = None
        self.requests = 0

    def _post(self, path: str, payload: Any) -> Any:
        body = json.dumps(payload, separators=(",", ":")).encode()
        for attempt in range(2):  # a kept-alive connection the server closed is reopened once
            if self._conn is None:
                self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                self._conn.request("POST", self.prefix + path, body=body, headers=self.headers)
                resp = self._conn.getresponse()
                data = resp.read()
            except (TimeoutError, ConnectionError, http.client.RemoteDisconnected) as e:
                self._conn.close()
                self._conn = None
                if attempt or isinstance(e, TimeoutError):
                    raise DataError(f"{path}: the server at {self.host}:{self.port} did not answer ({e})") from e
                continue
            self.requests += 1
            if resp.status != 200:
                raise DataError(f"{path}: HTTP {resp.status}: {data[:300].decode(errors='replace')}")
            return json.loads(data)
        raise AssertionError("unreachable")

    def decide(self, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = self._post("/v1/decisions", requests)
        return out

    def feedback(self, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = self._post("/v1/feedback", events)
        return out

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class ServiceEndpoint:
    """The same requests into a service in process (anything with ``decide_batch`` and ``feedback_batch``)."""

    def __init__(self, service: Any) -> None:
        self.service = service

    def decide(self, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = self.service.decide_batch(requests)
        return out

    def feedback(self, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = self.service.feedback_batch(events)
        return out


class RequestBuilder:
    """Observations of the world's users as decision requests of the public schema (they encode back exactly)."""

    def __init__(self, layout: FeatureLayout) -> None:
        self.layout = layout
        idx = layout.index
        self.signals = [(c, idx(f"signal_{c}")) for c in layout.categories]
        self.hour, self.progress = idx("hour"), idx("day_progress")
        self.windows = [(f"impressions_{w}h", idx(f"impressions_{w}h")) for w in WINDOWS]
        self.since, self.clicks, self.conversions = (
            idx("hours_since_last_ad"),
            idx("clicks_today"),
            idx("conversions_today"),
        )
        self.named = [
            ("slot_counts", [(s, idx(f"slot_count_{s}")) for s in layout.slots], int),
            ("creative_counts", [(c, idx(f"creative_count_{c}")) for c in layout.creatives], int),
            ("slot_exposure", [(s, idx(f"exposure_{s}")) for s in layout.slots], float),
            ("slot_repeat_exposure", [(s, idx(f"repeat_exposure_{s}")) for s in layout.slots], float),
        ]

    def build(
        self, obs: np.ndarray, users: Sequence[str], episodes: Sequence[str], steps: Sequence[int]
    ) -> list[dict[str, Any]]:
        rows = obs.tolist()  # float32 → float is exact, so the server encodes the same observation
        out = []
        for row, uid, ep, step in zip(rows, users, episodes, steps, strict=True):
            history: dict[str, Any] = {name: int(row[j]) for name, j in self.windows}
            history["hours_since_last_ad"] = row[self.since]
            history["clicks_today"] = int(row[self.clicks])
            history["conversions_today"] = int(row[self.conversions])
            for name, cols, kind in self.named:
                values = {k: kind(row[j]) for k, j in cols if row[j]}
                if values:
                    history[name] = values
            out.append(
                {
                    "episode_id": ep,
                    "step": step,
                    "user": {"id": uid, "segment": int(row[0]), "signals": {c: row[j] for c, j in self.signals}},
                    "context": {"hour": int(row[self.hour]), "day_progress": row[self.progress]},
                    "history": history,
                }
            )
        return out


@dataclass
class DriveResult:
    """What the users did, per user (index = user number): the driver's own tally, from the world's outcomes."""

    users: int
    days: int
    user_ids: list[str]
    arm: list[str | None]  # arm of the user's first decision (None: no decision, or no experiment)
    reward: np.ndarray
    user_days: np.ndarray
    impressions: np.ndarray
    clicks: np.ndarray
    conversions: np.ndarray
    leaves: np.ndarray  # days the user left early
    decisions: int = 0
    seconds: float = 0.0
    complete: bool = True
    arms_seen: dict[str, int] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {
            "users": self.users,
            "days": self.days,
            "decisions": self.decisions,
            "seconds": round(self.seconds, 3),
            "complete": self.complete,
            "user_days": int(self.user_days.sum()),
            "return_per_user_day": float(self.reward.sum() / max(self.user_days.sum(), 1)),
            "churn_per_user_day": float(self.leaves.sum() / max(self.user_days.sum(), 1)),
            "arms": self.arms_seen,
        }


def _check_bounds(users: int, days: int, max_seconds: float | None) -> None:
    if not 1 <= users <= MAX_USERS:
        raise ConfigError(f"--users {users}: expected 1..{MAX_USERS:,}")
    if not 1 <= days <= MAX_DAYS:
        raise ConfigError(f"--days {days}: expected 1..{MAX_DAYS}")
    if max_seconds is not None and not max_seconds > 0:
        raise ConfigError(f"--max-seconds {max_seconds:g}: expected a number of seconds > 0")


def population(scenario: Scenario, users: int, seed: int) -> UserBatch:
    """The users of ``seed``: the same people whatever days or server they are driven against."""
    return World(scenario).sample_users(users, np.random.default_rng(np.random.SeedSequence([seed, 0])))


def live_days(
    scenario: Scenario,
    decide: Callable[[np.ndarray, np.ndarray, int, np.ndarray], tuple[np.ndarray, list[str | None], list[str]]],
    feedback: Callable[[list[str], Any], None] | None,
    *,
    users: int,
    days: int,
    seed: int,
    day_offset: int = 0,
    max_seconds: float | None = None,
    user_prefix: str = "user-",
) -> DriveResult:
    """The day loop shared by the driver and the truth: ``decide(obs, user index, day, step)`` gives actions,
    arms and event ids; ``feedback(event ids, step result)`` reports outcomes."""
    _check_bounds(users, days, max_seconds)
    world = World(scenario)
    layout = FeatureLayout.from_scenario(scenario)
    base = population(scenario, users, seed)
    outcome_rng = np.random.default_rng(np.random.SeedSequence([seed, 1, day_offset]))
    res = DriveResult(
        users=users, days=days, user_ids=[f"{user_prefix}{i}" for i in range(users)], arm=[None] * users,
        reward=np.zeros(users), user_days=np.zeros(users, dtype=np.int64), impressions=np.zeros(users, dtype=np.int64),
        clicks=np.zeros(users, dtype=np.int64), conversions=np.zeros(users, dtype=np.int64),
        leaves=np.zeros(users, dtype=np.int64),
    )  # fmt: skip
    start = time.monotonic()
    deadline = None if max_seconds is None else start + max_seconds
    for day in range(day_offset, day_offset + days):
        batch = base.take(slice(None))  # a fresh day: hidden interest stays, today's history and fatigue start over
        active = np.arange(users)
        res.user_days += 1
        step = 0
        while active.size:
            if deadline is not None and time.monotonic() > deadline:
                res.complete = False
                res.seconds = time.monotonic() - start
                return res
            obs = layout.encode(batch)
            action, arms, ids = decide(obs, active, day, np.full(active.size, step))
            for i, a in zip(active.tolist(), arms, strict=True):
                if res.arm[i] is None and a is not None:
                    res.arm[i] = a
                    res.arms_seen[a] = res.arms_seen.get(a, 0) + 1
            out = world.step(batch, action, outcome_rng)
            if feedback is not None:
                feedback(ids, out)
            res.decisions += active.size
            res.reward[active] += out.reward
            res.impressions[active] += out.shown
            res.clicks[active] += out.click
            res.conversions[active] += out.conversion
            res.leaves[active] += out.leave
            going = ~(out.terminated | out.truncated)
            step += 1
            if not going.all():
                active, batch = active[going], batch.take(going)
    res.seconds = time.monotonic() - start
    return res


def drive(
    endpoint: Endpoint,
    scenario: Scenario,
    *,
    users: int,
    days: int,
    seed: int,
    day_offset: int = 0,
    max_seconds: float | None = None,
    user_prefix: str = "user-",
) -> DriveResult:
    """Users of ``seed`` live ``days`` days against ``endpoint`` (days numbered from ``day_offset``, so a later run
    of the same users, e.g. after a pre-period, continues their calendar); bounded by ``max_seconds``."""
    builder = RequestBuilder(FeatureLayout.from_scenario(scenario))

    def decide(
        obs: np.ndarray, idx: np.ndarray, day: int, steps: np.ndarray
    ) -> tuple[np.ndarray, list[str | None], list[str]]:
        uids = [f"{user_prefix}{i}" for i in idx.tolist()]
        eps = [f"{u}/day-{day}" for u in uids]
        answers: list[dict[str, Any]] = []
        for lo in range(0, len(uids), REQUEST_CHUNK):
            hi = lo + REQUEST_CHUNK
            answers += endpoint.decide(builder.build(obs[lo:hi], uids[lo:hi], eps[lo:hi], steps[lo:hi].tolist()))
        if len(answers) != len(uids):
            raise DataError(f"the server answered {len(answers)} decisions for {len(uids)} requests")
        action = np.array(
            [(a["action"]["delay_index"], a["action"]["slot_index"], a["action"]["creative_index"]) for a in answers],
            dtype=np.int64,
        )
        return action, [a.get("arm") for a in answers], [a["event_id"] for a in answers]

    def report(ids: list[str], out: Any) -> None:
        events = [
            {"decision_id": eid, "click": c, "conversion": v, "leave": lv, "shown": sh}
            for eid, c, v, lv, sh in zip(
                ids, out.click.tolist(), out.conversion.tolist(), out.leave.tolist(), out.shown.tolist(), strict=True
            )
        ]
        for lo in range(0, len(events), REQUEST_CHUNK):
            endpoint.feedback(events[lo : lo + REQUEST_CHUNK])

    return live_days(scenario, decide, report, users=users, days=days, seed=seed, day_offset=day_offset,
                     max_seconds=max_seconds, user_prefix=user_prefix)  # fmt: skip


def true_values(
    policies: Mapping[str, Any], scenario: Scenario, *, users: int, days: int, seed: int
) -> dict[str, dict[str, float]]:
    """Each arm's value if every user got it: the same days, with the arm's serving distribution (exploration
    included, ``decide_arrays``) deciding for ``users`` users of ``seed``. Metrics as the readout's."""
    out = {}
    for name, policy in policies.items():

        def decide(obs: np.ndarray, idx: np.ndarray, day: int, steps: np.ndarray, p: Any = policy) -> Any:
            return p.decide_arrays(obs).action, [None] * len(idx), []

        r = live_days(scenario, decide, None, users=users, days=days, seed=seed)
        out[name] = {
            "return_per_user_day": float(r.reward.sum() / r.user_days.sum()),
            "ctr": float(r.clicks.sum() / max(r.impressions.sum(), 1)),
            "conversions_per_user": float(r.conversions.mean()),
            "churn": float(r.leaves.sum() / r.user_days.sum()),
            "users": float(users),
        }
    return out
