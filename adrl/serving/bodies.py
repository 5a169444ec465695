"""Large request bodies, refused or read without stalling the server.

One event loop serves every request, and pydantic validates a body in one call that holds the GIL: an 8 MB body of
a million bad values would keep ``/healthz`` waiting for seconds, most of it spent building error objects that
the bounded error reply never shows. So a body larger than :data:`LARGE_BODY` is first measured in a worker thread
(numpy, which releases the GIL): its top-level items and the values in each. A list of more than ``max_batch``
items, an item with more values than a request can have, or unbalanced brackets are refused from that alone; the
rest is validated a few kilobytes of items at a time, yielding to the event loop in between and stopping at the
first chunk with an error. Small bodies take the one-call path (:func:`parse_decision_body`).
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import TypeAdapter, ValidationError

from adrl.requests import (
    REQUESTS_ADAPTER,
    DecisionRequest,
    InvalidRequest,
    invalid_from,
    summarize_errors,
    validate,
    validation_errors,
)
from adrl.serving.service import parse_decision_body

LARGE_BODY = 64 << 10  # bytes; smaller bodies cost less to validate in one call than to measure
CHUNK_BYTES = 16 << 10  # items validated per event-loop pass
FEEDBACK_VALUES = 64  # a feedback body has five fields


def max_request_values(obs_dim: int) -> int:
    """Most values one decision request may hold: its obs form has ``obs_dim``, its named form about twice the
    names of the market (each a key and a value), which ``obs_dim`` counts; the margin keeps every valid request."""
    return 4 * obs_dim + 256


_WHITESPACE = b" \t\r\n"


@dataclass(frozen=True)
class Shape:
    """The top level of a JSON body: a list's item spans (``starts``/``ends`` byte offsets), or one object, and the
    number of values (separators + 1) in each item."""

    is_list: bool
    starts: np.ndarray
    ends: np.ndarray
    values: np.ndarray
    balanced: bool
    n_items: int  # of a list: more than ``max_items`` leaves the spans empty


def _running(x: np.ndarray, op: np.ufunc = np.add) -> np.ndarray:
    # into a preallocated int32 array: numpy then releases the GIL (np.cumsum allocating its result does not)
    out = np.empty(x.shape, dtype=np.int32)
    op.accumulate(x.astype(np.int32, copy=False), out=out)
    return out


def measure(body: bytes, max_items: int = 1 << 30) -> Shape:
    """:class:`Shape` of ``body`` from its bytes: strings (with escaped quotes) are skipped, brackets counted."""
    raw = np.frombuffer(body, dtype=np.uint8)
    n = raw.size
    quote = raw == ord('"')
    backslash = raw == ord("\\")
    if backslash.any():  # a quote after an odd run of backslashes is part of a string
        idx = np.arange(n, dtype=np.int32)
        last_other = _running(np.where(backslash, -1, idx), np.maximum)
        run = np.zeros(n, dtype=np.int32)
        run[1:] = idx[:-1] - last_other[:-1]
        quote &= (run & 1) == 0
    in_string = ((_running(quote) - quote) & 1).astype(bool)
    outside = ~in_string & ~quote
    opens = outside & ((raw == ord("[")) | (raw == ord("{")))
    closes = outside & ((raw == ord("]")) | (raw == ord("}")))
    depth = _running(opens.astype(np.int32) - closes)
    separators = outside & ((raw == ord(",")) | (raw == ord(":")))
    first = len(body) - len(body.lstrip(_WHITESPACE))
    balanced = bool(n) and int(depth[-1]) == 0 and int(depth.min(initial=0)) >= 0 and not in_string[-1]
    if first >= n or raw[first] != ord("["):
        return Shape(False, np.array([first]), np.array([n]), np.array([int(separators.sum()) + 1]), balanced, 1)
    top_commas = separators & (depth == 1) & (raw == ord(","))
    count = int(np.count_nonzero(top_commas)) + 1
    if count > max_items:
        empty = np.zeros(0, dtype=np.int64)
        return Shape(True, empty, empty, empty, balanced, count)
    top = np.flatnonzero(top_commas)
    close = first + int(np.argmax(depth[first:] == 0)) if balanced else n - 1
    if body[close + 1 :].strip(_WHITESPACE):  # e.g. "[1] [2]": the parser would refuse what follows the list
        balanced = False
    starts = np.concatenate([[first + 1], top + 1])
    ends = np.concatenate([top, [close]])
    inner = np.zeros(n + 1, dtype=np.int32)
    np.add.accumulate((separators & (depth >= 2)).astype(np.int32), out=inner[1:])
    values = inner[ends] - inner[starts] + 1
    if len(top) == 0 and not body[first + 1 : close].strip(_WHITESPACE):  # "[]"
        starts, ends, values = starts[:0], ends[:0], values[:0]
    return Shape(True, starts, ends, values, balanced, len(starts))


def _malformed(msg: str) -> InvalidRequest:
    return InvalidRequest(f"request body is not valid JSON: {msg}", [{"loc": [], "msg": msg, "type": "json_invalid"}])


class LargeBodies:
    """Reads large decision and feedback bodies as the module docstring says (one measurement at a time, so at
    most one body's arrays are in memory)."""

    def __init__(self, *, max_batch: int, max_values: int) -> None:
        self.max_batch = max_batch
        self.max_values = max_values
        self._measuring = threading.Lock()  # held in the worker thread: no event loop to bind to

    def _measure(self, body: bytes) -> Shape:
        with self._measuring:
            return measure(body, self.max_batch)

    async def shape(self, body: bytes, max_values: int) -> Shape:
        shape = await asyncio.to_thread(self._measure, body)
        if not shape.balanced:
            raise _malformed("unbalanced brackets or an unterminated string")
        big = np.flatnonzero(shape.values > max_values)
        if big.size:
            i = int(big[0])
            loc: list[str | int] = [i] if shape.is_list else []
            raise InvalidRequest.at(
                loc, f"holds {int(shape.values[i]):,} values; a request has at most {max_values:,}", "..."
            )
        return shape

    async def decisions(self, body: bytes) -> DecisionRequest | list[DecisionRequest]:
        """A large decision body validated like :func:`~adrl.serving.service.parse_decision_body`."""
        shape = await self.shape(body, self.max_values)
        if not shape.is_list:  # one object of a bounded number of values: the small bodies' path
            return parse_decision_body(body, max_batch=self.max_batch)
        n = shape.n_items
        if n > self.max_batch:
            raise InvalidRequest.at([], f"a batch holds at most {self.max_batch} requests; split it", f"{n} items")
        out: list[DecisionRequest] = []
        i = 0
        while i < n:
            j = i + 1
            while j < n and shape.ends[j] - shape.starts[i] <= CHUNK_BYTES:
                j += 1
            chunk = b"[" + body[int(shape.starts[i]) : int(shape.ends[j - 1])] + b"]"
            try:
                out += validate(REQUESTS_ADAPTER, chunk)
            except ValidationError as e:
                errors = validation_errors(e)
                for err in errors:  # the chunk's item index, as the body's
                    if err["loc"] and isinstance(err["loc"][0], int):
                        err["loc"][0] += i
                raise InvalidRequest(summarize_errors(errors), errors) from None
            i = j
            await asyncio.sleep(0)  # let /healthz and other requests in between chunks
        return out

    async def one(self, adapter: TypeAdapter[Any], body: bytes, max_values: int | None = None) -> Any:
        """A large body holding one object (e.g. feedback), validated once its size in values is known."""
        if max_values is not None:
            await self.shape(body, max_values)
        try:
            return validate(adapter, body)
        except ValidationError as e:
            raise invalid_from(e) from None
