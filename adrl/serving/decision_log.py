"""The server's decision/feedback log: a crash-safe journal, joined into parquet in the logged-data schema.

Directory layout of ``--log-dir DIR``::

    DIR/log.json                     token of this log (event ids), feature layout and scenario hashes
    DIR/journal/journal-<seq>.jsonl  every decision and feedback event, appended before the client gets its answer
    DIR/data/part-<first>-<last>.parquet   joined rows (decisions <first>..<last>), the logged-data schema

Decisions are numbered (``seq``) in the order they are made; the event id is ``<token>-<seq>``. A decision's
feedback window opens when it is made and closes ``feedback_window`` seconds later; feedback (click, conversion,
leave, shown) received meanwhile is merged (a conversion implies a click). When the window closes the decision
becomes one parquet row: reward from the feedback with the scenario's reward weights (``click_value * click +
conversion_weight * conversion_value[creative] * conversion - cost[slot]`` when shown, else 0), or
``default_reward`` with ``defaulted=True`` when no feedback came. Windows close in ``seq`` order, so the parquet
parts cover consecutive ranges and the largest ``<last>`` is the durable watermark: parts are written to a temp
file and renamed, so a part either exists whole or not at all.

On start the log recovers: decisions in the journal after the watermark become pending again with the feedback
journaled for them (their windows keep their original wall-clock deadlines), so nothing acknowledged is lost
and nothing is joined twice. ``adrl ope --logs DIR`` and ``adrl fit --logs DIR`` read ``DIR/data`` (the journal
is not parquet and is ignored by the readers).

User and episode ids are never written raw: they are stored as the first 8 bytes of
HMAC-SHA256(key, "<domain>:<id>") as a signed int64, with the key from an environment variable.
"""

from __future__ import annotations

import base64
import datetime as dt
import hmac
import json
import logging
import math
import os
import re
import secrets
import threading
import time
from binascii import b2a_base64
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar
from zlib import crc32

import numpy as np
import orjson

from adrl.errors import AdrlError, ConfigError, FeatureMismatch
from adrl.features import FeatureLayout
from adrl.io import check_output, read_json, write_json_atomic
from adrl.logs import LogWriter, logged_columns
from adrl.requests import InvalidRequest
from adrl.scenario import HOURS_PER_DAY, Scenario
from adrl.serving.journal import Journal, ReadStats, encode_line, read_records, segments

_LOG = logging.getLogger("adrl.serving")
LOG_FORMAT = 1
PART_RE = re.compile(r"^part-(\d{12})-(\d{12})\.parquet$")
MIN_KEY_BYTES = 16
MAX_STEP_EPISODES = 1_000_000  # server-counted steps are kept for this many recent episodes
HASH_CACHE_SIZE = 200_000
JOIN_CHUNK = 4096  # decisions moved per lock hold, so closing windows never stalls serving for long
# one decision's journal record (the keys and order of the log schema; see ``_recover``)
_DECISION_LINE = (
    b'{"t":"d","seq":%d,"id":"%s-%d","ts":%s,"ep":%d,"step":%d,"uid":%d,"a":[%d,%d,%d],"p":%s,"pc":[%s],"x":"%s"}'
)


class UnknownDecision(AdrlError, LookupError):
    """Feedback names a decision id this server never issued (HTTP 404)."""

    def __str__(self) -> str:  # LookupError would quote the message
        return str(self.args[0])


class FeedbackClosed(AdrlError, ValueError):
    """Feedback arrived after the decision's feedback window closed (HTTP 409)."""


# A decision waiting for its feedback window to close is a plain tuple of atomic values: CPython's collector stops
# tracking such tuples, so a backlog of 10^5 decisions costs garbage collections nothing (objects with slots cost
# ~15% of batch throughput). Fields by index:
SEQ: Final = 0
EVENT_ID: Final = 1
TS: Final = 2
EPISODE: Final = 3
STEP: Final = 4
USER: Final = 5
OBS: Final = 6
ACTION: Final = 7
PROPENSITY: Final = 8
COMPS: Final = 9
VERSION: Final = 10
ARM: Final = 11
POLICY_ID: Final = 12
# (seq, event id, time, episode hash, step, user hash, observation as float32 bytes, (delay, slot, creative),
#  propensity, component propensities, policy version, arm, policy id); arm and policy id are "" without an experiment
Pending = tuple[
    int, str, float, int, int, int, bytes, tuple[int, int, int], float, tuple[float, float, float], str, str, str
]
# feedback merged so far: (click, conversion, leave, shown)
Outcome = tuple[bool, bool, bool, bool]
NO_FEEDBACK: Outcome = (False, False, False, True)
R = TypeVar("R")


_TAG_JSON: dict[tuple[str, str, str], bytes] = {}


def _tag_json(arm: str, pid: str, version: str) -> bytes:
    key = (arm, pid, version)
    b = _TAG_JSON.get(key)
    if b is None:
        b = _TAG_JSON[key] = b',"arm":%s,"pid":%s,"v":%s}' % (
            orjson.dumps(arm),
            orjson.dumps(pid),
            orjson.dumps(version),
        )
    return b


def merge_outcome(old: Outcome | None, click: bool, conversion: bool, leave: bool, shown: bool) -> Outcome:
    """Several feedback events for one decision: any click or conversion counts (a conversion implies a click)."""
    c, v, lv, sh = old or NO_FEEDBACK
    return (c or click or conversion, v or conversion, lv or leave, sh and shown)


def _issued_seq(raw: str) -> int:
    """The sequence number of an event id's last part exactly as this log writes it (ASCII digits, no leading zero,
    within int64); -1 for anything else, so an id never issued is never read as one that was."""
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18 or (raw[0] == "0" and raw != "0"):
        return -1
    return int(raw)


def keyed_hash(key: bytes, domain: str, value: str | int) -> int:
    """First 8 bytes of HMAC-SHA256(key, "domain:value") as a signed int64."""
    return int.from_bytes(hmac.digest(key, f"{domain}:{value}".encode(), "sha256")[:8], "little", signed=True)


@dataclass
class LogStats:
    """Counters of the log, exported as metrics."""

    decisions: int = 0
    feedback: int = 0
    rows_written: int = 0
    rows_defaulted: int = 0
    parts_written: int = 0
    recovered_pending: int = 0
    recovered_torn: int = 0
    recovered_corrupt: int = 0
    write_errors: int = 0
    last_error: str | None = None
    recovery_notes: list[str] = field(default_factory=list)


class DecisionLog:
    """Issues event ids, journals decisions and feedback, joins them when windows close, writes parquet.

    With ``log_dir=None`` nothing is written, but ids, step counts and feedback windows work the same.
    Thread-safe: decisions and feedback may come from any thread; a background thread closes windows.
    """

    def __init__(
        self,
        scenario: Scenario,
        *,
        log_dir: Path | str | None,
        key: bytes | None,
        policy_version: str,
        feedback_window: float = 60.0,
        default_reward: float = 0.0,
        rotate_bytes: int = 64 << 20,
        fsync_interval: float = 1.0,
        flush_interval: float = 5.0,
        part_rows: int = 200_000,
        experiment: bool = False,
    ) -> None:
        if not (feedback_window > 0 and np.isfinite(feedback_window)):
            raise ConfigError(f"feedback window must be a finite number of seconds > 0, got {feedback_window:g}")
        if not np.isfinite(default_reward):
            raise ConfigError(f"default reward must be finite, got {default_reward:g}")
        if flush_interval <= 0:
            raise ConfigError(f"flush interval must be > 0 seconds, got {flush_interval:g}")
        if log_dir is not None and (key is None or len(key) < MIN_KEY_BYTES):
            raise ConfigError(
                f"logging needs a hashing key of at least {MIN_KEY_BYTES} bytes for user ids, got "
                f"{0 if key is None else len(key)}"
            )
        self.scenario = scenario
        self.layout = FeatureLayout.from_scenario(scenario)
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.key = key if key is not None else secrets.token_bytes(32)
        self.policy_version = policy_version
        self.feedback_window = float(feedback_window)
        self.default_reward = float(default_reward)
        self.flush_interval = float(flush_interval)
        self.part_rows = part_rows
        self.experiment = experiment  # rows carry arm and policy id columns
        self.stats = LogStats()
        self.token = secrets.token_hex(4)
        self._lock = threading.Lock()
        self._pending: dict[str, Pending] = {}
        self._order: deque[Pending] = deque()
        self._feedback: dict[str, Outcome] = {}  # of pending decisions that got feedback
        self._ready: list[tuple[Pending, Outcome | None]] = []
        self._next_seq = 1
        self._finalized_seq = 0  # every decision <= this has left the window
        self._durable_seq = 0  # every decision <= this is in a parquet part
        self._steps: OrderedDict[int, int] = OrderedDict()
        self._hash_cache: dict[tuple[str, str | int], int] = {}
        self._journal: Journal | None = None
        self._rotate_bytes, self._fsync_interval = rotate_bytes, fsync_interval
        self._stop = threading.Event()
        self._joiner: threading.Thread | None = None
        self._last_flush = time.monotonic()
        self._write_lock = threading.Lock()
        self._delay_hours = np.array(scenario.delays)
        self._hour_col = self.layout.index("hour")
        self.started = False

    # ---- lifecycle ---------------------------------------------------------------------------------------
    @property
    def data_dir(self) -> Path | None:
        return None if self.log_dir is None else self.log_dir / "data"

    def start(self) -> None:
        """Recover from the directory (if any), open a new journal segment and start closing windows."""
        if self.started:
            return
        if self.log_dir is not None:
            self._open_dir(self.log_dir)
            self._recover()
            self._journal = Journal(
                self.log_dir / "journal", rotate_bytes=self._rotate_bytes, fsync_interval=self._fsync_interval
            )
            self._journal.open(
                self._next_seq,
                {
                    "policy_version": self.policy_version,
                    "token": self.token,
                    "layout_hash": self.layout.hash,
                    "started": _now(),
                },
            )
        self._joiner = threading.Thread(target=self._join_loop, name="adrl-log-joiner", daemon=True)
        self._joiner.start()
        self.started = True

    def close(self) -> None:
        """Join closed windows, write them, sync and close the journal. Open windows stay pending in the journal
        and are joined after the next start."""
        self._stop.set()
        if self._joiner is not None:
            self._joiner.join(timeout=30)
            self._joiner = None
        self.join_closed(force_write=True)
        if self._journal is not None:
            self._journal.close()
            self._journal = None
        self.started = False

    def _open_dir(self, log_dir: Path) -> None:
        # an append-only log is continued, never replaced: an existing one is fine, a file or unwritable place is not
        check_output(log_dir, kind="directory", force=True, flag="--log-dir")
        meta_path = log_dir / "log.json"
        if meta_path.is_file():
            meta = read_json(meta_path, what="decision log metadata")
            if meta.get("layout_hash") != self.layout.hash:
                raise FeatureMismatch(
                    f"{log_dir}: the log holds feature layout {meta.get('layout_hash')!r}, this "
                    f"policy uses {self.layout.hash}; an append-only log is never replaced: use another --log-dir for "
                    "this policy"
                )
            self.token = str(meta["token"])
        else:
            if log_dir.exists() and any(p for p in log_dir.iterdir() if not p.name.startswith(".")):
                raise ConfigError(
                    f"--log-dir {log_dir} is not empty and holds no log.json; give a new or an "
                    "adrl serving log directory"
                )
            write_json_atomic(
                meta_path,
                {
                    "format": LOG_FORMAT,
                    "token": self.token,
                    "layout_hash": self.layout.hash,
                    "scenario_hash": self.scenario.content_hash,
                    "created": _now(),
                },
            )
        (log_dir / "data").mkdir(parents=True, exist_ok=True)

    def _recover(self) -> None:
        assert self.log_dir is not None
        # the journal is the truth: a restart of this object (start after close) must not hold its decisions twice
        self._pending.clear()
        self._order.clear()
        self._feedback.clear()
        data = self.log_dir / "data"
        for tmp in data.glob(".part-*.tmp"):  # a part being written when the process died
            tmp.unlink(missing_ok=True)
        for p in data.glob("part-*.parquet"):
            m = PART_RE.match(p.name)
            if m:
                self._durable_seq = max(self._durable_seq, int(m.group(2)))
        self._finalized_seq = self._durable_seq
        segs = segments(self.log_dir / "journal")
        start = 0
        for i, (first, _) in enumerate(segs):
            if first <= self._durable_seq + 1:
                start = i
        stats = ReadStats()
        version = self.policy_version
        max_seq = self._durable_seq
        for rec in read_records([p for _, p in segs[start:]], stats):
            t = rec.get("t")
            if t == "h":
                version = str(rec.get("policy_version", version))
            elif t == "d":
                seq = int(rec["seq"])
                max_seq = max(max_seq, seq)
                self._count_step(int(rec["ep"]), int(rec["step"]))
                if seq <= self._durable_seq:
                    continue
                obs = base64.b64decode(rec["x"])
                a = rec["a"]
                pc = rec["pc"]
                restored: Pending = (
                    seq,
                    str(rec["id"]),
                    float(rec["ts"]),
                    int(rec["ep"]),
                    int(rec["step"]),
                    int(rec["uid"]),
                    obs,
                    (int(a[0]), int(a[1]), int(a[2])),
                    float(rec["p"]),
                    (float(pc[0]), float(pc[1]), float(pc[2])),
                    str(rec.get("v", version)),
                    str(rec.get("arm", "")),
                    str(rec.get("pid", "")),
                )
                self._pending[restored[EVENT_ID]] = restored
                self._order.append(restored)
            elif t == "f":
                eid = str(rec.get("id"))
                if eid in self._pending:
                    self._feedback[eid] = merge_outcome(
                        self._feedback.get(eid),
                        bool(rec["click"]),
                        bool(rec["conversion"]),
                        bool(rec["leave"]),
                        bool(rec["shown"]),
                    )
        self._next_seq = max_seq + 1
        self.stats.recovered_pending = len(self._pending)
        self.stats.recovered_torn, self.stats.recovered_corrupt = stats.torn, stats.corrupt
        self.stats.recovery_notes = list(stats.where or [])[:20]
        if stats.corrupt or stats.torn:  # said once, at start: which lines of the journal could not be read
            _LOG.warning(
                "decision log %s: recovery skipped %d corrupt and %d torn journal line(s): %s",
                self.log_dir, stats.corrupt, stats.torn, "; ".join(self.stats.recovery_notes[:5]),
            )  # fmt: skip

    # ---- decisions -----------------------------------------------------------------------------------------
    def hash_id(self, domain: str, value: str | int) -> int:
        """Keyed hash of an id, memoised (bounded) since the same users and sessions come back."""
        k = (domain, value)
        h = self._hash_cache.get(k)
        if h is None:
            if len(self._hash_cache) >= HASH_CACHE_SIZE:
                self._hash_cache.clear()
            h = self._hash_cache[k] = keyed_hash(self.key, domain, value)
        return h

    def _count_step(self, episode: int, step: int) -> None:
        steps = self._steps
        if episode in steps:
            steps.move_to_end(episode)
        steps[episode] = max(step + 1, steps.get(episode, 0))
        if len(steps) > MAX_STEP_EPISODES:
            steps.popitem(last=False)

    def record_decisions(
        self,
        episodes: Sequence[str | int | None],
        steps: Sequence[int | None],
        users: Sequence[str | None],
        obs: np.ndarray,
        action: np.ndarray,
        propensity: np.ndarray,
        components: np.ndarray,
        respond: Callable[[list[str], list[int]], R],
        tags: Sequence[tuple[str, str, str]] | None = None,
    ) -> R:
        """Number, journal and hold ``n`` decisions; returns ``respond(event ids, steps)``, the client's answer.

        ``respond`` runs before anything is journaled or held: if it raises, nothing is recorded and no id is
        issued, so the log never holds a decision its client was not told. ``tags``: per decision (arm, policy id,
        policy version) in an experiment; else the log's policy version. Returns only after the journal lines
        reached the OS, so an acknowledged decision survives a crash.
        """
        n = obs.shape[0]
        hash_id = self.hash_id
        user_h = [-1 if u is None else hash_id("user", u) for u in users]
        # each row's float32 bytes: held until joined (written as one buffer) and base64'd into the journal
        raw = np.ascontiguousarray(obs, dtype=np.float32).tobytes()
        width = len(raw) // n
        obs_rows = [raw[i * width : (i + 1) * width] for i in range(n)]
        acts = action.tolist()
        props = propensity.tolist()
        comps = components.tolist()
        ids: list[str] = []
        out_steps: list[int] = []
        held: list[Pending] = []
        journal = self._journal
        if journal is not None:
            # the text of every line's numbers is made up front, outside the lock: the observation row as base64
            # of its float32 bytes, the propensities by one orjson call (shortest round-trip floats, like repr)
            x_b64 = [b2a_base64(row, newline=False) for row in obs_rows]
            table = np.empty((n, 4), dtype=np.float64)
            table[:, 0] = propensity
            table[:, 1:] = components
            numbers = orjson.dumps(table, option=orjson.OPT_SERIALIZE_NUMPY)[2:-2].split(b"],[")
            token_b = self.token.encode()
        lines: list[bytes] = []
        with self._lock:
            ts = time.time()
            ts_b = repr(ts).encode()
            first = self._next_seq
            version = self.policy_version
            counted: dict[int, int] = {}  # next step per episode in this batch, applied only once it is recorded
            for i in range(n):
                seq = first + i
                eid = f"{self.token}-{seq}"
                ep_raw = episodes[i]
                if ep_raw is not None:
                    ep = hash_id("episode", ep_raw)
                elif users[i] is not None:
                    ep = hash_id("episode", f"user:{users[i]}")
                else:
                    ep = keyed_hash(self.key, "episode", f"decision:{eid}")
                known = counted.get(ep)
                if known is None:
                    known = self._steps.get(ep, 0)
                step = steps[i]
                if step is None:
                    step = known
                counted[ep] = max(step + 1, known)
                a = acts[i]
                pc = comps[i]
                arm, pid, ver = ("", "", version) if tags is None else tags[i]
                p: Pending = (
                    seq, eid, ts, ep, step, user_h[i], obs_rows[i], (a[0], a[1], a[2]), props[i], (pc[0], pc[1], pc[2]),
                    ver, arm, pid,
                )  # fmt: skip
                held.append(p)
                ids.append(eid)
                out_steps.append(step)
                if journal is not None:
                    p_b, _, pc_b = numbers[i].partition(b",")
                    payload = _DECISION_LINE % (
                        seq, token_b, seq, ts_b, ep, step, user_h[i], a[0], a[1], a[2], p_b, pc_b, x_b64[i]
                    )  # fmt: skip
                    if tags is not None:  # the arm's fields, JSON-encoded once per tag
                        payload = payload[:-1] + _tag_json(arm, pid, ver)
                    lines.append(b"%08x %s\n" % (crc32(payload), payload))
            answer = respond(ids, out_steps)  # the client's answer exists before its decisions are recorded
            if journal is not None:
                journal.append(b"".join(lines), first + n)
            self._next_seq = first + n
            pending, order = self._pending, self._order
            for p in held:
                pending[p[EVENT_ID]] = p
            order.extend(held)
            for ep, nxt in counted.items():
                self._count_step(ep, nxt - 1)
            self.stats.decisions += n
        return answer

    def record_feedback(
        self, event_id: str, *, click: bool = False, conversion: bool = False, leave: bool = False, shown: bool = True
    ) -> dict[str, Any]:
        """Merge feedback into a pending decision and journal it.

        Raises:
            UnknownDecision: the id was never issued by this log.
            FeedbackClosed: the decision's feedback window has closed.
        """
        if (click or conversion) and not shown:
            raise InvalidRequest.at(
                ["shown"],
                "an ad that was not shown cannot be clicked or converted; send shown=true with click/conversion",
                False,
            )
        with self._lock:
            now = time.time()
            pend = self._pending.get(event_id)
            if pend is None or now > pend[TS] + self.feedback_window:
                token, _, raw = event_id.rpartition("-")
                seq = _issued_seq(raw)
                if token != self.token or not 0 < seq < self._next_seq:
                    raise UnknownDecision(
                        f"unknown decision id {event_id!r}; expected an event_id returned by "
                        "POST /v1/decisions on this server"
                    )
                ago = "" if pend is None else f" {now - pend[TS] - self.feedback_window:.3g} s ago"
                raise FeedbackClosed(
                    f"feedback window of {self.feedback_window:g} s for decision {event_id!r} "
                    f"closed{ago}; feedback after the window is not joined"
                )
            merged = merge_outcome(self._feedback.get(event_id), click, conversion, leave, shown)
            if merged[0] and not merged[3]:  # the joined row is what must make sense, not each part alone
                raise InvalidRequest.at(
                    ["shown"],
                    "this decision's feedback so far says it was clicked (or converted) but not shown; an ad that was "
                    "not shown cannot be clicked or converted",
                    shown,
                )
            self._feedback[event_id] = merged
            if self._journal is not None:
                self._journal.append(
                    encode_line(
                        json.dumps(
                            {
                                "t": "f",
                                "id": event_id,
                                "ts": now,
                                "click": click,
                                "conversion": conversion,
                                "leave": leave,
                                "shown": shown,
                            },
                            separators=(",", ":"),
                        )
                    ),
                    self._next_seq,
                )
            self.stats.feedback += 1
            closes_in = pend[TS] + self.feedback_window - now
        return {"decision_id": event_id, "accepted": True, "window_closes_in_s": round(closes_in, 3)}

    def record_experiment(self, snapshot: dict[str, Any]) -> None:
        """Journal an experiment version (arms, split, since when) and append it to ``DIR/experiment.jsonl``."""
        line = orjson.dumps({"t": "x", **snapshot})
        with self._lock:
            if self._journal is not None:
                self._journal.append(encode_line(line.decode()), self._next_seq)
            if self.log_dir is not None:
                with open(self.log_dir / "experiment.jsonl", "ab") as f:  # append-only history, synced
                    f.write(line + b"\n")
                    f.flush()
                    os.fsync(f.fileno())

    # ---- joining -------------------------------------------------------------------------------------------
    @property
    def n_pending(self) -> int:
        return len(self._pending)

    def _join_loop(self) -> None:
        tick = max(0.02, min(0.5, self.feedback_window / 4, self.flush_interval / 2))
        while not self._stop.wait(tick):
            try:
                self.join_closed()
            except Exception as e:  # keep serving; the journal still holds everything, recovery rejoins it
                self.stats.write_errors += 1
                self.stats.last_error = f"{type(e).__name__}: {e}"

    def join_closed(self, *, force_write: bool = False, everything: bool = False) -> int:
        """Finalize decisions whose window closed (``everything``: every pending one, e.g. when a driven experiment
        is over and no more feedback will come); write a parquet part when due. Returns rows written."""
        deadline = math.inf if everything else time.time() - self.feedback_window
        order = self._order
        more = True
        while more:
            with self._lock:
                for _ in range(JOIN_CHUNK):
                    if not order or order[0][TS] > deadline:
                        more = False
                        break
                    p = order.popleft()
                    eid = p[EVENT_ID]
                    del self._pending[eid]
                    self._ready.append((p, self._feedback.pop(eid, None)))
                    self._finalized_seq = p[SEQ]
        with self._lock:
            due = (
                force_write
                or len(self._ready) >= self.part_rows
                or (time.monotonic() - self._last_flush >= self.flush_interval)
            )
            if not due or not self._ready:
                return 0
            rows, self._ready = self._ready, []
            self._last_flush = time.monotonic()
        if self.data_dir is None:
            return 0
        with self._write_lock:
            self._write_part(rows)
        return len(rows)

    def _write_part(self, rows: list[tuple[Pending, Outcome | None]]) -> None:
        assert self.data_dir is not None
        n = len(rows)
        pend = [p for p, _ in rows]
        action = np.array([p[ACTION] for p in pend], dtype=np.int64).reshape(n, 3)
        obs = np.frombuffer(b"".join([p[OBS] for p in pend]), dtype=np.float32).reshape(n, self.layout.obs_dim)
        fb = np.array([o is not None for _, o in rows], dtype=bool)
        outcome = np.array([o or NO_FEEDBACK for _, o in rows], dtype=bool).reshape(n, 4)
        click = outcome[:, 0] & fb
        conversion = outcome[:, 1] & fb
        shown = outcome[:, 3]
        reward = self.scenario.reward_table.realised(click, conversion, action[:, 1], action[:, 2], shown)
        reward = np.where(fb, reward, self.default_reward)
        comps = np.array([p[COMPS] for p in pend], dtype=np.float64).reshape(n, 3)
        hour = (obs[:, self._hour_col].astype(np.int64) + self._delay_hours[action[:, 0]]) % HOURS_PER_DAY
        cols = logged_columns(
            self.layout, obs=obs, episode_id=np.array([p[EPISODE] for p in pend], dtype=np.int64),
            user_id=np.array([p[USER] for p in pend], dtype=np.int64),
            step=np.array([p[STEP] for p in pend], dtype=np.int32), hour=hour.astype(np.int8), action=action,
            propensity=np.array([p[PROPENSITY] for p in pend], dtype=np.float64), components=comps, shown=shown,
            click=click, conversion=conversion, leave=outcome[:, 2] & fb, reward=reward,
            serving=(np.array([p[EVENT_ID] for p in pend], dtype=object),
                     np.array([p[VERSION] for p in pend], dtype=object), ~fb),
        )  # fmt: skip
        if self.experiment:
            cols["arm"] = np.array([p[ARM] for p in pend], dtype=object)
            cols["policy_id"] = np.array([p[POLICY_ID] for p in pend], dtype=object)
        path = self.data_dir / f"part-{pend[0][SEQ]:012d}-{pend[-1][SEQ]:012d}.parquet"
        with LogWriter(
            path, self.layout, serving=True, experiment=self.experiment, scenario_hash=self.scenario.content_hash
        ) as writer:
            writer.write(cols)
        self._durable_seq = max(self._durable_seq, pend[-1][SEQ])
        self.stats.rows_written += n
        self.stats.rows_defaulted += int((~fb).sum())
        self.stats.parts_written += 1

    def describe(self) -> dict[str, Any]:
        return {
            "log_dir": None if self.log_dir is None else str(self.log_dir),
            "feedback_window_s": self.feedback_window,
            "default_reward": self.default_reward,
            "pending": self.n_pending,
            "next_seq": self._next_seq,
            "joined_through_seq": self._durable_seq,
        }


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
