"""Decision requests: the schema (in process and over HTTP), its validation errors, and the one encoder.

A request names the user (segment and interest signals), the context (hour of day) and the observable history
(impression counts, time since the last ad, clicks and conversions today, per-slot and per-creative counts).
:class:`RequestEncoder` turns it into the observation vector of :class:`~adrl.features.FeatureLayout`, field by
field (``encode``) or for a validated batch in one pass (``encode_many``, the same rows), and rejects unknown,
missing, mistyped, non-finite or out-of-range values with an :class:`InvalidRequest` that names the field, the
value and what was expected. A raw observation (``obs=``) is accepted too.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, NotRequired

import numpy as np
from pydantic import AfterValidator, ConfigDict, Field, TypeAdapter, ValidationError, with_config
from typing_extensions import TypedDict  # pydantic needs this one before Python 3.12

from adrl.errors import AdrlError
from adrl.features import SIGNAL_BOUND, WINDOWS, FeatureLayout
from adrl.scenario import HOURS_PER_DAY

MAX_COUNT = 1_000_000  # request counts above this are rejected (the layout caps them far lower anyway)


class InvalidRequest(AdrlError, ValueError):
    """A decision request has an unknown, missing, mistyped, non-finite or out-of-range field.

    Attributes:
        errors: one ``{"loc": [...], "msg": str, "type": str, "input": value}`` per problem (FastAPI's shape).
    """

    def __init__(self, message: str, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.errors = errors or [{"loc": [], "msg": message, "type": "value_error"}]

    @classmethod
    def at(cls, loc: Sequence[str | int], msg: str, value: Any) -> InvalidRequest:
        path = ".".join(str(p) for p in loc)
        return cls(
            f"{path} = {_short(value)}: {msg}",
            [{"loc": list(loc), "msg": msg, "type": "value_error", "input": _jsonable(value)}],
        )


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


MAX_REPORTED_ERRORS = 20  # an error reply names at most this many problems (and counts the rest): a few KB at most
_INT64 = 1 << 63


def _jsonable(value: Any) -> Any:
    """An echoed input, bounded and JSON-encodable: long values shortened, integers beyond int64 as text."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if -_INT64 <= value < _INT64 else _short(value)
    if isinstance(value, str):
        return value if len(value) <= 60 else _short(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    return _short(value)


# ---- request schema (also the HTTP API's) -------------------------------------------------------------------
# TypedDicts rather than models: pydantic-core validates them in Rust into plain dicts, about 1.5x faster than
# building nested model instances, and the encoder reads dicts directly. Same rules: strict types, unknown fields
# rejected, NaN/inf rejected, bounds checked, every error naming its field.
_STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

Signal = Annotated[float, Field(ge=-SIGNAL_BOUND, le=SIGNAL_BOUND)]
Count = Annotated[int, Field(ge=0, le=MAX_COUNT)]
Exposure = Annotated[float, Field(ge=0, le=1e6)]
Int64 = Annotated[int, Field(ge=-_INT64, le=_INT64 - 1)]  # ids travel through the log as int64


@with_config(_STRICT)
class UserFeatures(TypedDict):
    """Who the decision is for."""

    id: NotRequired[
        Annotated[str | None, Field(min_length=1, max_length=256, description="your user id; logs keep a keyed hash")]
    ]
    segment: Annotated[str | Int64, Field(description="segment name (or its index in the scenario)")]
    signals: NotRequired[
        Annotated[
            dict[str, Signal],
            Field(
                description=f"observed interest signal per category, in [-{SIGNAL_BOUND:g}, {SIGNAL_BOUND:g}]; "
                "missing: 0"
            ),
        ]
    ]


@with_config(_STRICT)
class DecisionContext(TypedDict):
    """When the decision is made."""

    hour: Annotated[int, Field(ge=0, le=HOURS_PER_DAY - 1, description="hour of day, 0..23")]
    day_progress: NotRequired[
        Annotated[
            float | None,
            Field(
                ge=0, le=1, description="fraction of the decision day elapsed; default: from hour, start hour, horizon"
            ),
        ]
    ]


@with_config(_STRICT)
class History(TypedDict, total=False):
    """What the user saw and did today; every field defaults to 'nothing yet'."""

    impressions_1h: Count
    impressions_6h: Count
    impressions_24h: Count
    hours_since_last_ad: Annotated[
        float | None, Field(ge=0, le=1e6, description="hours since the last ad; null: none today (encoded as 24)")
    ]
    clicks_today: Count
    conversions_today: Count
    slot_counts: Annotated[dict[str, Count], Field(description="impressions today per slot name")]
    creative_counts: Annotated[dict[str, Count], Field(description="impressions today per creative name")]
    slot_exposure: Annotated[
        dict[str, Exposure],
        Field(
            description="per slot name, today's impressions each weighted by 0.5 ** (hours ago / half-life), the "
            "half-life being GET /v1/policy's exposure_half_life_hours; missing: 0"
        ),
    ]
    slot_repeat_exposure: Annotated[
        dict[str, Exposure],
        Field(
            description="as slot_exposure, each impression also weighted by how many times its creative had been "
            "shown to the user earlier today; missing: 0"
        ),
    ]


@with_config(_STRICT)
class DecisionRequest(TypedDict, total=False):
    """One decision: user + context (+ history), or a raw observation vector ``obs``."""

    episode_id: Annotated[
        str | Int64 | None,
        Field(description="the user's episode (e.g. user-day session) id; default: the user id, else a new episode"),
    ]
    step: Annotated[int | None, Field(ge=0, le=MAX_COUNT, description="step within the episode; default: counted")]
    user: UserFeatures | None
    context: DecisionContext | None
    history: History | None
    obs: Annotated[list[float] | None, Field(max_length=10_000, description="raw observation (obs_dim values)")]


def _one_form(req: DecisionRequest) -> DecisionRequest:
    """Cross-field rules of a request (run by the validator, so errors carry the request's location)."""
    if req.get("obs") is not None:
        if req.get("user") is not None or req.get("context") is not None or req.get("history") is not None:
            raise ValueError("give either obs or user/context/history, not both")
    elif req.get("user") is None or req.get("context") is None:
        raise ValueError("user and context are required (or a raw obs vector)")
    ep = req.get("episode_id")
    if isinstance(ep, str) and not 1 <= len(ep) <= 256:
        raise ValueError(f"episode_id must have 1..256 characters, got {len(ep)}")
    return req


CheckedRequest = Annotated[DecisionRequest, AfterValidator(_one_form)]
REQUEST_ADAPTER: TypeAdapter[DecisionRequest] = TypeAdapter(CheckedRequest)
REQUESTS_ADAPTER: TypeAdapter[list[DecisionRequest]] = TypeAdapter(list[CheckedRequest])


def validate(adapter: TypeAdapter[Any], data: bytes | Any) -> Any:
    """``data`` (JSON bytes, or Python values) validated by ``adapter``, where an integer may also be written as a
    number with a zero fraction (``3.0``), as JSON Schema's ``integer`` allows. Strict, Rust-only validation first;
    only a body refused for such a number is read again with those numbers as integers."""
    try:
        return adapter.validate_json(data) if isinstance(data, bytes) else adapter.validate_python(data)
    except ValidationError as e:
        if not any(err["type"] == "int_type" and _integral(err.get("input")) for err in e.errors()):
            raise
        values = json.loads(data) if isinstance(data, bytes) else data
        return adapter.validate_python(_ints(values))


def _integral(value: Any) -> bool:
    return isinstance(value, float) and value.is_integer()


def _ints(value: Any) -> Any:
    """``value`` with every integral float as an int (a float field takes ints alike, so this changes no meaning)."""
    if isinstance(value, float):
        return int(value) if value.is_integer() else value
    if isinstance(value, dict):
        return {k: _ints(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_ints(v) for v in value]
    return value


def validation_errors(e: ValidationError) -> list[dict[str, Any]]:
    """A pydantic error as FastAPI-shaped dicts with JSON-safe, bounded inputs: the first
    :data:`MAX_REPORTED_ERRORS` problems, then one entry counting the rest."""
    out = []
    errors = e.errors(include_url=False, include_context=False)
    for err in errors[:MAX_REPORTED_ERRORS]:
        out.append(
            {
                "loc": [_jsonable(x) for x in err["loc"]],
                "msg": err["msg"].removeprefix("Value error, "),
                "type": err["type"],
                "input": _jsonable(err.get("input")),
            }
        )
    if len(errors) > MAX_REPORTED_ERRORS:
        more = len(errors) - MAX_REPORTED_ERRORS
        out.append({"loc": [], "msg": f"{more} more invalid field(s) not listed", "type": "too_many_errors"})
    return out


def summarize_errors(errors: list[dict[str, Any]]) -> str:
    """``N invalid field(s): a.b = 3: reason; ...`` from error dicts."""
    parts = []
    for err in errors[:5]:
        path = ".".join(str(p) for p in err["loc"]) or "(body)"
        value = f" = {_short(err['input'])}" if err.get("type") != "missing" and "input" in err else ""
        parts.append(f"{path}{value}: {err['msg']}")
    more = f" (+{len(errors) - 5} more)" if len(errors) > 5 else ""
    return f"{len(errors)} invalid field(s): " + "; ".join(parts) + more


def invalid_from(e: ValidationError, prefix: Sequence[str | int] = ()) -> InvalidRequest:
    errors = validation_errors(e)
    for err in errors:
        err["loc"] = [*prefix, *err["loc"]]
    return InvalidRequest(summarize_errors(errors), errors)


# ---- encoding ----------------------------------------------------------------------------------------------
class RequestEncoder:
    """Request fields → observation vector (float32, ``layout.obs_dim``), derived from the feature layout.

    Counts above the layout's cap are saturated exactly as the simulator saturates them (e.g. ``impressions_1h``
    at 1, ``hours_since_last_ad`` at 24); everything else outside its bounds is an error.
    """

    def __init__(self, layout: FeatureLayout) -> None:
        self.layout = layout
        self.low, self.high = layout.obs_low, layout.obs_high
        self._segments = {name: i for i, name in enumerate(layout.segments)}
        self._signal = {c: layout.index(f"signal_{c}") for c in layout.categories}
        self._hour = layout.index("hour")
        self._windows = [layout.index(f"impressions_{w}h") for w in WINDOWS]
        self._since = layout.index("hours_since_last_ad")
        self._clicks = layout.index("clicks_today")
        self._conversions = layout.index("conversions_today")
        self._slots = {s: layout.index(f"slot_count_{s}") for s in layout.slots}
        self._creatives = {c: layout.index(f"creative_count_{c}") for c in layout.creatives}
        self._exposure = {s: layout.index(f"exposure_{s}") for s in layout.slots}
        self._repeat_exposure = {s: layout.index(f"repeat_exposure_{s}") for s in layout.slots}
        self._named = (
            ("slot_counts", self._slots),
            ("creative_counts", self._creatives),
            ("slot_exposure", self._exposure),
            ("slot_repeat_exposure", self._repeat_exposure),
        )
        self._hour_rows = np.empty((HOURS_PER_DAY, 4), dtype=np.float32)
        for h in range(HOURS_PER_DAY):
            angle = 2.0 * np.pi * h / HOURS_PER_DAY
            epoch = (h - layout.start_hour) % HOURS_PER_DAY
            progress = min(epoch, layout.horizon) / layout.horizon
            self._hour_rows[h] = (h, np.sin(angle), np.cos(angle), progress)
        self._categorical = np.array([f.kind == "categorical" for f in layout.obs])
        # segment by name or index, for the batch encoder's single lookup (strict validation rules out bools)
        self._segment_table: dict[str | int, int] = {i: i for i in range(len(layout.segments))}
        self._segment_table.update(self._segments)
        self._dense_cols = [0, *self._windows, self._since, self._clicks, self._conversions]

    def encode(self, req: DecisionRequest, loc: Sequence[str | int] = ()) -> np.ndarray:
        """Observation of a validated request; raises :class:`InvalidRequest` naming the field."""
        obs = req.get("obs")
        if obs is not None:
            return self.check_obs(obs, [*loc, "obs"])
        user, ctx = req.get("user"), req.get("context")
        assert user is not None and ctx is not None  # guaranteed by _one_form
        hist: History = req.get("history") or {}
        x = np.zeros(self.layout.obs_dim, dtype=np.float32)
        seg = user["segment"]
        if isinstance(seg, str):
            if seg not in self._segments:
                raise InvalidRequest.at(
                    [*loc, "user", "segment"], f"unknown segment; expected one of {list(self._segments)}", seg
                )
            x[0] = self._segments[seg]
        else:
            if not 0 <= seg < len(self._segments):
                raise InvalidRequest.at(
                    [*loc, "user", "segment"], f"segment index out of range; expected 0..{len(self._segments) - 1}", seg
                )
            x[0] = seg
        for cat, value in (user.get("signals") or {}).items():
            j = self._signal.get(cat)
            if j is None:
                raise InvalidRequest.at(
                    [*loc, "user", "signals", cat], f"unknown category; expected one of {list(self._signal)}", value
                )
            x[j] = value
        x[self._hour : self._hour + 4] = self._hour_rows[ctx["hour"]]
        progress = ctx.get("day_progress")
        if progress is not None:
            x[self._hour + 3] = progress
        counts = (hist.get("impressions_1h", 0), hist.get("impressions_6h", 0), hist.get("impressions_24h", 0))
        for name, a, b in (("impressions_6h", counts[0], counts[1]), ("impressions_24h", counts[1], counts[2])):
            if b < a:
                raise InvalidRequest.at([*loc, "history", name], f"must be >= the shorter window's count {a}", b)
        for j, v in zip(self._windows, counts, strict=True):
            x[j] = v
        since = hist.get("hours_since_last_ad")
        clicks, conversions = hist.get("clicks_today", 0), hist.get("conversions_today", 0)
        x[self._since] = HOURS_PER_DAY if since is None else since
        x[self._clicks] = clicks
        x[self._conversions] = conversions
        if conversions > clicks:
            raise InvalidRequest.at(
                [*loc, "history", "conversions_today"],
                f"must be <= clicks_today ({clicks}); a conversion follows a click",
                conversions,
            )
        for field, table in self._named:
            counted: dict[str, float] = hist.get(field) or {}  # type: ignore[assignment]
            for name, value in counted.items():
                j = table.get(name)
                if j is None:
                    raise InvalidRequest.at(
                        [*loc, "history", field, name], f"unknown name; expected one of {list(table)}", value
                    )
                x[j] = value
        np.minimum(x, self.high, out=x)  # saturate counts as the simulator does; lower bounds were validated
        return x

    def encode_many(self, reqs: Sequence[DecisionRequest], loc: Sequence[str | int] = ()) -> np.ndarray:
        """Observations (n, obs_dim) of validated requests, the same as :meth:`encode` row by row, in one pass.

        One Python loop gathers values into flat lists (dense columns, and (row, column, value) triples for the
        named signals and counts); numpy then fills, checks and saturates all rows at once. A row that breaks a
        rule is re-encoded by :meth:`encode`, which raises the same error (location ``[*loc, i, ...]``).
        """
        n = len(reqs)
        dim = self.layout.obs_dim
        x = np.zeros((n, dim), dtype=np.float32)
        if n == 0:
            return x
        segments, signal_cols = self._segment_table, self._signal
        named = self._named
        progress_col = self._hour + 3
        dense: list[float] = []  # per row: segment, impressions 1h/6h/24h, hours since last ad, clicks, conversions
        hours: list[int] = []
        rows: list[int] = []
        cols: list[int] = []
        vals: list[float] = []
        raw_obs: list[int] = []
        bad = n
        empty: dict[str, Any] = {}
        items: Sequence[Mapping[str, Any]] = reqs  # validated: the lookups below cannot miss a required field
        for i, req in enumerate(items):
            try:
                if req.get("obs") is not None:
                    raw_obs.append(i)
                    dense += (0, 0, 0, 0, 0, 0, 0)
                    hours.append(0)
                    continue
                user = req["user"]
                ctx = req["context"]
                hist = req.get("history") or empty
                seg = segments[user["segment"]]
                signals = user.get("signals")
                if signals:
                    for cat, value in signals.items():
                        cols.append(signal_cols[cat])
                        rows.append(i)
                        vals.append(value)
                hours.append(ctx["hour"])
                progress = ctx.get("day_progress")
                if progress is not None:
                    rows.append(i)
                    cols.append(progress_col)
                    vals.append(progress)
                since = hist.get("hours_since_last_ad")
                dense += (
                    seg,
                    hist.get("impressions_1h", 0),
                    hist.get("impressions_6h", 0),
                    hist.get("impressions_24h", 0),
                    HOURS_PER_DAY if since is None else since,
                    hist.get("clicks_today", 0),
                    hist.get("conversions_today", 0),
                )
                for field, table in named:
                    counted = hist.get(field)
                    if counted:
                        for name, value in counted.items():
                            cols.append(table[name])
                            rows.append(i)
                            vals.append(value)
            except (KeyError, TypeError):  # an unknown name (or an unhashable segment): encode() says which
                bad = i
                break
        m = len(hours)  # rows gathered (all of them unless one broke a rule)
        d = np.array(dense, dtype=np.float64).reshape(m, 7)
        broken = (d[:, 2] < d[:, 1]) | (d[:, 3] < d[:, 2]) | (d[:, 6] > d[:, 5])
        if broken.any():
            bad = min(bad, int(np.flatnonzero(broken)[0]))
        if bad < n:
            self.encode(reqs[bad], [*loc, bad])  # raises the error of the first bad row
            raise AssertionError(f"request {bad} failed the batch encoding but not encode()")  # pragma: no cover
        x[:, self._dense_cols] = d
        x[:, self._hour : self._hour + 4] = self._hour_rows[hours]
        if rows:
            x[rows, cols] = vals
        for i in raw_obs:
            x[i] = self.check_obs(reqs[i]["obs"], [*loc, i, "obs"])  # type: ignore[arg-type]
        np.minimum(x, self.high, out=x)
        return x

    def check_obs(self, obs: Sequence[float] | np.ndarray, loc: Sequence[str | int] = ("obs",)) -> np.ndarray:
        """A raw observation as float32 (obs_dim,), each value finite, in bounds, integral where categorical."""
        x = np.asarray(obs, dtype=np.float64)
        if x.shape != (self.layout.obs_dim,):
            raise InvalidRequest.at(
                list(loc),
                f"expected {self.layout.obs_dim} values "
                f"({', '.join(self.layout.obs_names[:4])}, ...), got shape {x.shape}",
                "...",
            )
        bad = ~np.isfinite(x) | (x < self.low) | (x > self.high) | (self._categorical & (x != np.round(x)))
        if bad.any():
            j = int(np.flatnonzero(bad)[0])
            f = self.layout.obs[j]
            what = "an integer in" if f.kind == "categorical" else "a finite number in"
            raise InvalidRequest.at(
                [*loc, j], f"feature {f.name!r} must be {what} [{f.low:g}, {f.high:g}]", float(x[j])
            )
        return x.astype(np.float32)


# ---- exploration -------------------------------------------------------------------------------------------
