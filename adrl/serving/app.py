"""The HTTP app: ``create_app(service)`` → FastAPI with ``/v1/decisions``, ``/v1/feedback``, ``/v1/policy``,
``/healthz``, ``/metrics`` and ``/openapi.json``.

``POST /v1/decisions`` is the hot path and is answered by the pure ASGI middleware itself, in front of FastAPI's
router, exception and dependency layers (which cost about as much per request as the decision). It reads the raw
body (size-limited, 413 beyond ``max_body_bytes``) and validates it with the request models in Rust
(``TypeAdapter.validate_json``: unknown fields, wrong types, NaN/inf and bounds are 422s naming the field).
The FastAPI route of the same path documents it in OpenAPI and serves it when the app runs without the middleware.
Single decisions that arrive together are served by one policy call (:class:`MicroBatcher`: everything queued in
one event-loop pass), which keeps a heavy policy's per-call cost off each request. The middleware also checks the
API key on ``/v1/*`` (401) and records request counts and latency.
"""

from __future__ import annotations

import asyncio
import hmac
import importlib.util
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from adrl.errors import AdrlError, ArtifactError, ConfigError
from adrl.policy import Decision
from adrl.requests import InvalidRequest, invalid_from
from adrl.serving.bodies import FEEDBACK_VALUES, LARGE_BODY, LargeBodies, max_request_values
from adrl.serving.decision_log import FeedbackClosed, UnknownDecision
from adrl.serving.experiment import ArmSpec
from adrl.serving.metrics import CONTENT_TYPE
from adrl.serving.openapi import decision_body, request_schemas
from adrl.serving.peers import Peers
from adrl.serving.service import (
    _FEEDBACK,
    MAX_BATCH,
    FeedbackRequest,
    PolicyService,
    Prepared,
    dumps,
    parse_decision_body,
    parse_feedback_body,
)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

JSON = "application/json"
_JSON_BYTES = JSON.encode()
_UNAUTHORIZED = dumps(
    {"detail": "missing or invalid API key; send it as 'Authorization: Bearer <key>' or 'X-API-Key: <key>'"}
)
ROUTES = (
    "/v1/decisions", "/v1/feedback", "/v1/policy", "/v1/experiment", "/v1/admin/experiment", "/healthz", "/metrics",
    "/openapi.json", "/docs",
)  # fmt: skip


MIN_API_KEY_CHARS = 16  # `adrl serve` refuses shorter keys: a guessable key is no authentication


class PayloadTooLarge(AdrlError, ValueError):
    """The request body is larger than the server accepts (HTTP 413)."""


# ---- response documentation models (the routes build their JSON by hand) -----------------------------------------
class FeedbackOut(BaseModel):
    decision_id: str
    accepted: bool
    window_closes_in_s: float


class ErrorOut(BaseModel):
    detail: str | list[dict[str, Any]]
    message: str | None = None


class ArmIn(BaseModel):
    """An arm to add, or to replace the same-named arm with."""

    model_config = ConfigDict(extra="forbid", strict=True)
    name: str = Field(min_length=1, max_length=64)
    policy: str = Field(min_length=1, max_length=4096, description="policy artifact directory on the server")
    exploration: str = Field("none", max_length=64)


class SwapIn(BaseModel):
    """A hot swap: arms replaced or added, and/or a new split (percent per arm, in the resulting arm order)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    arms: list[ArmIn] = Field(default_factory=list, max_length=16)
    split: list[float] | None = Field(None, max_length=16)


# ---- micro-batching ------------------------------------------------------------------------------------------
class MicroBatcher:
    """Runs ``fn`` once for every item submitted during one event-loop pass (at most ``max_batch`` at a time)."""

    def __init__(self, fn: Callable[[list[Prepared]], list[bytes]], max_batch: int = 256) -> None:
        self.fn = fn
        self.max_batch = max_batch
        self._items: list[Prepared] = []
        self._futures: list[asyncio.Future[bytes]] = []
        self._scheduled = False

    async def submit(self, item: Prepared) -> bytes:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[bytes] = loop.create_future()
        self._items.append(item)
        self._futures.append(fut)
        if len(self._items) >= self.max_batch:
            self._flush()
        elif not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return await fut

    def _flush(self) -> None:
        self._scheduled = False
        items, futures = self._items, self._futures
        if not items:
            return
        self._items, self._futures = [], []
        try:
            results = self.fn(items)
        except Exception as e:
            for f in futures:
                if not f.done():
                    f.set_exception(e)
            return
        for f, r in zip(futures, results, strict=True):
            if not f.done():  # a client that went away still got its decision logged, never the reverse
                f.set_result(r)


# ---- middleware --------------------------------------------------------------------------------------------
class ServingMiddleware:
    """API-key check on ``/v1/*`` and request metrics, as plain ASGI (no per-request task or body copy)."""

    def __init__(
        self, app: ASGIApp, *, service: PolicyService, api_key: str | None, decisions: DecisionHandler | None = None
    ) -> None:
        self.app = app
        self.metrics = service.metrics
        self.api_key = api_key.encode() if api_key else None
        self.decisions = decisions

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        path = scope["path"]
        route = path if path in ROUTES else "other"
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            if self.api_key is not None and path.startswith("/v1/") and not self._authorized(scope):
                self.metrics.count_error(route, "unauthorized")
                await _send_bytes(
                    send_status,
                    401,
                    _UNAUTHORIZED,
                    [(b"www-authenticate", b'Bearer realm="adrl"')],
                )
                return
            if self.decisions is not None and path == "/v1/decisions" and scope["method"] == "POST":
                await self.decisions.asgi(scope, receive, send_status)
            else:
                await self.app(scope, receive, send_status)
        finally:
            self.metrics.observe_request(route, scope["method"], status, time.perf_counter() - start)

    def _authorized(self, scope: Scope) -> bool:
        assert self.api_key is not None
        for name, value in scope["headers"]:
            if name == b"authorization" and value[:7].lower() == b"bearer ":
                return hmac.compare_digest(value[7:].strip(), self.api_key)
            if name == b"x-api-key":
                return hmac.compare_digest(value.strip(), self.api_key)
        return False


async def _send_bytes(send: Send, status: int, data: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", _JSON_BYTES), (b"content-length", b"%d" % len(data)), *(headers or [])],
        }
    )
    await send({"type": "http.response.body", "body": data})


# ---- routes --------------------------------------------------------------------------------------------------
async def get_service(request: Request) -> PolicyService:
    """The service ``create_app`` put on ``app.state`` (async, so FastAPI does not hop to a thread)."""
    service: PolicyService = request.app.state.service
    return service


Service = Annotated[PolicyService, Depends(get_service)]


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The request body, or :class:`PayloadTooLarge` as soon as its Content-Length or the bytes received pass
    ``limit``; ``ClientDisconnect`` if the client goes away first (both routes read raw ASGI messages)."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            if value.isdigit() and int(value) > limit:
                raise PayloadTooLarge(
                    f"request body of {int(value)} bytes is larger than the limit of {limit} bytes; "
                    "send smaller batches"
                )
            break
    chunks = []
    total = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect
        chunk = message.get("body", b"")
        total += len(chunk)
        if total > limit:
            raise PayloadTooLarge(f"request body passed the limit of {limit} bytes; send smaller batches")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def error_status(e: Exception) -> tuple[int, str, Any, str | None] | None:
    """HTTP status, metrics reason, ``detail`` and ``message`` of an error a route can raise (None: not ours)."""
    if isinstance(e, InvalidRequest):
        malformed = any(err.get("type") == "json_invalid" for err in e.errors)
        status, reason = (400, "malformed_json") if malformed else (422, "invalid_request")
        return status, reason, e.errors, str(e)
    for cls, status, reason in (
        (PayloadTooLarge, 413, "body_too_large"),
        (UnknownDecision, 404, "unknown_decision"),
        (FeedbackClosed, 409, "feedback_window_closed"),
    ):
        if isinstance(e, cls):
            return status, reason, str(e), None
    if isinstance(e, AdrlError):
        return 500, type(e).__name__, str(e), None
    return None


def error_reply(e: Exception, route: str, service: PolicyService) -> tuple[int, bytes] | None:
    """Status and JSON body for an error a route raised, counted in the metrics (None: not ours to answer)."""
    known = error_status(e)
    if known is None:
        return None
    status, reason, detail, message = known
    service.metrics.count_error(route if route in ROUTES else "other", reason)
    body: dict[str, Any] = {"detail": detail}
    if message is not None:
        body["message"] = message
    return status, dumps(body)


def _each_as_json(responses: list[dict[str, Any]]) -> list[bytes]:
    return [dumps(r) for r in responses]


class DecisionHandler:
    """``POST /v1/decisions``: one request object or a list, as an ASGI handler and as a FastAPI route body."""

    def __init__(self, service: PolicyService, *, max_body_bytes: int, max_batch: int) -> None:
        self.service = service
        self.max_body_bytes = max_body_bytes
        self.max_batch = max_batch
        self.batcher = MicroBatcher(partial(service.decide_prepared, share=True, encode=_each_as_json))
        self.large = LargeBodies(max_batch=max_batch, max_values=max_request_values(service.policy.layout.obs_dim))

    async def decide(self, body: bytes) -> bytes:
        """Response JSON for a request body (raises :class:`InvalidRequest` and friends)."""
        if len(body) > LARGE_BODY:  # measured off the event loop first, then validated in chunks
            parsed = await self.large.decisions(body)
        else:
            parsed = parse_decision_body(body, max_batch=self.max_batch)
        service = self.service
        if isinstance(parsed, list):
            return service.decide_validated(
                parsed, share=True, encode=dumps
            )  # one encoding, policy call, journal write
        return await self.batcher.submit(service.prepare(parsed, validated=True))

    async def asgi(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            data = await self.decide(await read_body(scope, receive, self.max_body_bytes))
        except ClientDisconnect:
            return
        except Exception as e:
            reply = error_reply(e, "/v1/decisions", self.service)
            if reply is None:
                raise
            await _send_bytes(send, *reply)
            return
        await _send_bytes(send, 200, data)


def _json_body(schema: str, *, many: bool = False) -> dict[str, Any]:
    ref = {"$ref": f"#/components/schemas/{schema}"}
    body = {"oneOf": [ref, {"type": "array", "items": ref, "maxItems": MAX_BATCH}]} if many else ref
    return {"requestBody": {"required": True, "content": {JSON: {"schema": body}}}}


_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut, "description": text}
    for code, text in (
        (400, "malformed JSON"),
        (401, "missing or invalid API key"),
        (413, "body too large"),
        (422, "invalid field: loc, msg, input per error"),
    )
}

router = APIRouter(prefix="/v1")
ops_router = APIRouter()


@router.post(
    "/decisions",
    summary="Decide for one request or a list of requests",
    openapi_extra=_json_body("DecisionRequest", many=True),
    responses={
        200: {"model": Decision | list[Decision], "description": "one decision, or a list in order"},
        **_ERRORS,
    },
    response_class=Response,
)
async def post_decisions(request: Request) -> Response:
    # served by ServingMiddleware in front of this route when the app has it (create_app adds it)
    handler: DecisionHandler = request.app.state.decisions
    body = await read_body(request.scope, request.receive, handler.max_body_bytes)
    return Response(await handler.decide(body), media_type=JSON)


@router.post(
    "/feedback",
    summary="Report click / conversion / leave for a decision id (or a list of such reports)",
    openapi_extra=_json_body("FeedbackRequest", many=True),
    responses={
        200: {"model": FeedbackOut | list[FeedbackOut], "description": "one answer, or a list in order"},
        404: {"model": ErrorOut, "description": "unknown decision id"},
        409: {"model": ErrorOut, "description": "feedback window closed"},
        **_ERRORS,
    },
    response_class=Response,
)
async def post_feedback(request: Request, service: Service) -> Response:
    body = await read_body(request.scope, request.receive, request.app.state.max_body_bytes)
    if len(body) > LARGE_BODY:  # bounded per item and counted off the event loop, then parsed off it too
        large: LargeBodies = request.app.state.decisions.large
        await large.shape(body, FEEDBACK_VALUES)
        parsed = await asyncio.to_thread(parse_feedback_body, body)
    else:
        parsed = parse_feedback_body(body)
    items = parsed if isinstance(parsed, list) else [parsed]
    peers: Peers | None = request.app.state.peers
    if peers is not None and any(peers.owns(i.decision_id.rpartition("-")[0]) for i in items):
        return await _feedback_across_workers(service, peers, items, many=isinstance(parsed, list))
    if isinstance(parsed, list):
        return Response(dumps(service.feedback_batch(parsed)), media_type=JSON)
    return Response(dumps(service.feedback(parsed)), media_type=JSON)


async def _feedback_across_workers(
    service: PolicyService, peers: Peers, items: list[FeedbackRequest], *, many: bool
) -> Response:
    """Feedback for other workers' decisions goes to them (they hold the windows); answers keep the order."""
    groups: dict[str, list[int]] = {}
    for i, item in enumerate(items):
        groups.setdefault(item.decision_id.rpartition("-")[0], []).append(i)
    results: list[Any] = [None] * len(items)
    for token, idx in groups.items():
        if peers.owns(token):
            status, body = await peers.call(token, {"op": "feedback", "items": [items[i].model_dump() for i in idx]})
            if status != 200:
                return Response(dumps(body), status_code=status, media_type=JSON)
        else:
            body = service.feedback_batch([items[i] for i in idx])
        for i, r in zip(idx, body, strict=True):
            results[i] = r
    return Response(dumps(results if many else results[0]), media_type=JSON)


async def peer_handler(service: PolicyService, message: dict[str, Any]) -> tuple[int, Any]:
    """What one worker answers another (see :mod:`adrl.serving.workers`): feedback, a swap, the experiment."""
    op = message.get("op")
    try:
        if op == "feedback":
            return 200, service.feedback_batch([FeedbackRequest.model_validate(x) for x in message["items"]])
        if op == "swap":
            specs = [ArmSpec(a["name"], Path(a["policy"]), a["exploration"]) for a in message["arms"]]
            return 200, await asyncio.to_thread(service.swap, specs, message.get("split"))
        if op == "experiment":
            return 200, None if service.experiment is None else service.experiment.describe()
    except Exception as e:
        known = error_status(e)
        if known is None:
            return 500, {"detail": f"{type(e).__name__}: {e}"}
        status, reason, detail, msg = known
        service.metrics.count_error("/v1/feedback" if op == "feedback" else "/v1/admin/experiment", reason)
        return status, {"detail": detail, **({"message": msg} if msg else {})}
    return 400, {"detail": f"unknown peer operation {op!r}"}


@router.get("/experiment", summary="The experiment: arms, split, decisions per arm and the history of versions")
async def get_experiment(request: Request, service: Service) -> dict[str, Any]:
    if service.experiment is None:
        return {"experiment": None, "arms": [], "split": [100.0], "policy_version": service.policy.policy_version}
    out = service.experiment.describe()
    peers: Peers | None = request.app.state.peers
    if peers is not None:  # decisions per arm over every worker
        out["workers"] = 1
        for token in peers.others():
            status, other = await peers.call(token, {"op": "experiment"})
            if status == 200 and other:
                out["workers"] += 1
                counts = {a["name"]: a["decisions"] for a in other["arms"]}
                for a in out["arms"]:
                    a["decisions"] += counts.get(a["name"], 0)
    return out


@router.post(
    "/admin/experiment",
    summary="Hot swap: replace or add an arm, or change the split (needs the API key; refused when auth is off)",
    openapi_extra=_json_body("SwapIn"),
    responses={
        403: {"model": ErrorOut, "description": "auth is off"},
        409: {"model": ErrorOut, "description": "the server serves one policy, not an experiment"},
        **_ERRORS,
    },
)
async def post_swap(request: Request, service: Service) -> Response:
    if not request.app.state.auth:
        return Response(
            dumps({"detail": "hot swap needs authentication; start adrl serve with --api-key-env"}),
            status_code=403,
            media_type=JSON,
        )
    if service.experiment is None:  # a state, not a bad body: the same swap is valid on an experiment server
        return Response(
            dumps({"detail": "this server serves one policy, not an experiment; start it with --policy A --policy B"}),
            status_code=409,
            media_type=JSON,
        )
    body = await read_body(request.scope, request.receive, request.app.state.max_body_bytes)
    try:
        swap = SwapIn.model_validate_json(body)
    except ValidationError as e:
        raise invalid_from(e) from None
    specs = [ArmSpec(a.name, Path(a.policy), a.exploration) for a in swap.arms]
    try:  # policies load on a thread: decisions keep being served by the current version meanwhile
        out = await asyncio.to_thread(service.swap, specs, swap.split)
    except (ConfigError, ArtifactError, OSError) as e:  # a bad arm, artifact or split: nothing changed
        raise InvalidRequest(str(e), [{"loc": [], "msg": str(e), "type": "value_error"}]) from None
    peers: Peers | None = request.app.state.peers
    if peers is not None:  # then every other worker, with the same arms and split
        message = {"op": "swap", "arms": [a.model_dump() for a in swap.arms], "split": swap.split}
        out["workers"] = 1
        out["worker_errors"] = []
        for token in peers.others():
            status, body = await peers.call(token, message)
            if status == 200:
                out["workers"] += 1
            else:
                out["worker_errors"].append({"worker": token, "status": status, "detail": body})
    return Response(dumps(out), media_type=JSON)


@router.get("/policy", summary="The served policy: ids, action names, features, exploration, log settings")
async def get_policy(service: Service) -> dict[str, Any]:
    return service.describe()


@ops_router.get("/healthz", summary="Liveness and log health")
async def healthz(service: Service) -> dict[str, Any]:
    return service.health()


@ops_router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(service: Service) -> Response:
    return Response(service.metrics.render(), media_type=CONTENT_TYPE)


# ---- app ---------------------------------------------------------------------------------------------------
def _error_response(request: Request, e: Exception) -> Response:
    reply = error_reply(e, request.url.path, request.app.state.service)
    if reply is None:
        raise e
    status, data = reply
    return Response(data, status_code=status, media_type=JSON)


def create_app(
    service: PolicyService,
    *,
    api_key: str | None = None,
    max_body_bytes: int = 8 << 20,
    max_batch: int = MAX_BATCH,
    manage_service: bool = True,
    peers: Peers | None = None,
) -> FastAPI:
    """The HTTP app around ``service`` (put on ``app.state``).

    Args:
        service: the in-process service; started and closed with the app's lifespan when ``manage_service``.
        api_key: when set, ``/v1/*`` needs ``Authorization: Bearer <key>`` or ``X-API-Key: <key>`` (else 401);
            ``/healthz``, ``/metrics`` and the OpenAPI document stay open.
        max_body_bytes: larger request bodies get 413.
        max_batch: most decisions in one list request.
        peers: the other workers of ``adrl serve --workers N`` (feedback for their decisions is forwarded).
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if manage_service:
            service.start()
        if peers is not None:
            await peers.serve(partial(peer_handler, service))
        try:
            yield
        finally:
            if peers is not None:
                await peers.close()
            if manage_service:
                service.close()  # graceful shutdown: join closed windows, write parquet, fsync the journal

    app = FastAPI(
        title="adrl policy server",
        version="1",
        lifespan=lifespan,
        description="Ad placement decisions with exact propensities, and feedback that becomes logs.",
    )
    app.state.service = service
    app.state.max_body_bytes = max_body_bytes
    app.state.auth = bool(api_key)
    app.state.peers = peers
    decisions = app.state.decisions = DecisionHandler(service, max_body_bytes=max_body_bytes, max_batch=max_batch)
    app.include_router(router)
    app.include_router(ops_router)

    for exc in (InvalidRequest, PayloadTooLarge, UnknownDecision, FeedbackClosed, AdrlError):
        app.add_exception_handler(exc, _error_response)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            schema.setdefault("components", {}).setdefault("schemas", {}).update(
                request_schemas(service.policy.layout, _FEEDBACK)
            )
            swap = SwapIn.model_json_schema(ref_template="#/components/schemas/{model}")
            schema["components"]["schemas"].update({**swap.pop("$defs", {}), "SwapIn": swap})
            body = schema["paths"]["/v1/decisions"]["post"]["requestBody"]["content"][JSON]
            body["schema"] = decision_body(max_batch)
            if api_key:
                schema["components"]["securitySchemes"] = {
                    "bearer": {"type": "http", "scheme": "bearer"},
                    "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                }
                for path, ops in schema.get("paths", {}).items():
                    if path.startswith("/v1/"):
                        for op in ops.values():
                            op["security"] = [{"bearer": []}, {"apiKey": []}]
                            op.setdefault("responses", {}).setdefault(
                                "401",
                                {
                                    "description": "missing or invalid API key",
                                    "content": {JSON: {"schema": {"$ref": "#/components/schemas/ErrorOut"}}},
                                },
                            )
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.add_middleware(ServingMiddleware, service=service, api_key=api_key, decisions=decisions)
    return app


def uvicorn_options() -> dict[str, Any]:
    """The uvicorn settings ``adrl serve`` runs with (the load benchmark's reference endpoint uses the same):
    one worker, the C HTTP parser (httptools) and the libuv event loop (uvloop) when installed, no access log."""
    options: dict[str, Any] = {"workers": 1, "log_level": "warning", "access_log": False}
    options["http"] = "httptools" if importlib.util.find_spec("httptools") else "h11"
    options["loop"] = "uvloop" if sys.platform != "win32" and importlib.util.find_spec("uvloop") else "asyncio"
    return options
