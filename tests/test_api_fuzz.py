"""Property-based API fuzzing (schemathesis) of the policy server, with and without auth.

Every operation of ``/openapi.json`` gets generated requests, valid and not, with a fixed seed and a bounded
example budget; all of schemathesis's checks run (no 5xx, status codes and bodies as documented, schema-valid data
accepted, schema-violating data rejected). ``ADRL_FUZZ_REPORT=path`` writes the requests sent, by status.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.config import SchemathesisConfig
from schemathesis.config._checks import (
    NEGATIVE_DATA_REJECTION_EXPECTED_STATUSES,
    POSITIVE_DATA_ACCEPTANCE_EXPECTED_STATUSES,
)
from schemathesis.hooks import HookContext

from adrl.agents.baselines import GreedyPolicy
from adrl.scenario import Scenario
from adrl.serving import PolicyService, ServeConfig, create_app

API_KEY = "fuzz-api-key-0123456789"
MAX_EXAMPLES = int(os.environ.get("ADRL_FUZZ_EXAMPLES", "60"))


def _app(auth: bool) -> Any:
    os.environ.setdefault("ADRL_LOG_KEY", "fuzz-log-key-0123456789abcdef")
    tmp = Path(tempfile.mkdtemp(prefix="adrl-fuzz-"))
    GreedyPolicy(Scenario()).save(tmp / "greedy")
    cfg = ServeConfig(policy=tmp / "greedy", log_dir=tmp / "log", exploration="epsilon:0.1", seed=0,
                      feedback_window=5.0, flush_interval=0.05)  # fmt: skip
    service = PolicyService.from_config(cfg).start()
    return create_app(service, api_key=API_KEY if auth else None, max_body_bytes=256 * 1024)


# 413 is how a body over the byte limit is refused: a rejection (negative data), and a limit JSON Schema cannot state
# (positive data); every other status a check expects is schemathesis's default.
CONFIG = SchemathesisConfig.from_dict(
    {
        "checks": {
            "negative_data_rejection": {"expected-statuses": [*NEGATIVE_DATA_REJECTION_EXPECTED_STATUSES, "413"]},
            "positive_data_acceptance": {"expected-statuses": [*POSITIVE_DATA_ACCEPTANCE_EXPECTED_STATUSES, "413"]},
        }
    }
)
open_schema = schemathesis.openapi.from_asgi("/openapi.json", _app(auth=False), config=CONFIG)
auth_schema = schemathesis.openapi.from_asgi("/openapi.json", _app(auth=True), config=CONFIG)
CALLS: Counter[tuple[str, str, str, int]] = Counter()  # (server, operation, generation mode, status) -> requests


def _keep_cross_field_rules(request: dict[str, Any]) -> None:
    """Make a schema-valid decision request satisfy the rules JSON Schema cannot state (see adrl.serving.openapi):
    each impression window at least the shorter one, conversions at most clicks."""
    history = request.get("history")
    if not isinstance(history, dict):
        return
    shorter = 0
    for window in ("impressions_1h", "impressions_6h", "impressions_24h"):
        if window in history or shorter:
            history[window] = max(history.get(window, 0), shorter)
            shorter = history[window]
    if history.get("conversions_today", 0) > history.get("clicks_today", 0):
        history["conversions_today"] = history.get("clicks_today", 0)


@schemathesis.hook
def map_case(ctx: HookContext, case: schemathesis.Case) -> schemathesis.Case:
    """Positive decision bodies are mapped onto the cross-field rules, so positive_data_acceptance stays on."""
    meta = case.meta
    if meta is not None and meta.generation.mode.is_positive and case.operation.path == "/v1/decisions":
        body = case.body
        for request in body if isinstance(body, list) else [body]:
            if isinstance(request, dict):
                _keep_cross_field_rules(request)
    return case


def _call(case: schemathesis.Case, server: str, **kwargs: Any) -> None:
    response = case.call_and_validate(**kwargs)
    mode = case.meta.generation.mode.value if case.meta is not None else "explicit"
    CALLS[(server, case.operation.label, mode, response.status_code)] += 1


def teardown_module() -> None:
    """With ADRL_FUZZ_REPORT=path: the requests sent, by server, operation, generation mode and status."""
    path = os.environ.get("ADRL_FUZZ_REPORT")
    if path:
        keys = ("server", "operation", "mode", "status")
        rows = [{**dict(zip(keys, k, strict=True)), "requests": n} for k, n in CALLS.items()]
        Path(path).write_text(json.dumps(sorted(rows, key=lambda r: tuple(map(str, r.values()))), indent=1))


FUZZ = settings(
    max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck), database=None
)


@open_schema.parametrize()
@FUZZ
def test_the_open_server_answers_every_generated_request_as_documented(case: schemathesis.Case) -> None:
    _call(case, "open")


@auth_schema.parametrize()
@FUZZ
def test_the_authenticated_server_answers_as_documented_with_and_without_the_key(case: schemathesis.Case) -> None:
    _call(case, "auth+key", headers={"Authorization": f"Bearer {API_KEY}"})
    _call(case, "auth, no key")  # no key: a documented 401 on /v1/*, the same answer elsewhere


SC = Scenario()
_counts = st.integers(0, 30)


@st.composite
def valid_decisions(draw: st.DrawFn) -> dict[str, Any]:
    """Requests that satisfy every rule, including the cross-field ones, so the 200 path is what gets fuzzed."""
    n1 = draw(_counts)
    n6 = n1 + draw(_counts)
    n24 = n6 + draw(_counts)
    clicks = draw(st.integers(0, 10))
    history = {
        "impressions_1h": n1, "impressions_6h": n6, "impressions_24h": n24, "clicks_today": clicks,
        "conversions_today": draw(st.integers(0, clicks)),
        "hours_since_last_ad": draw(st.none() | st.floats(0, 48, allow_nan=False)),
        "slot_counts": draw(st.dictionaries(st.sampled_from([s.name for s in SC.slots]), _counts, max_size=2)),
        "creative_counts": draw(st.dictionaries(st.sampled_from([c.name for c in SC.creatives]), _counts, max_size=3)),
    }  # fmt: skip
    user = {
        "id": draw(st.text(min_size=1, max_size=40)),
        "segment": draw(st.sampled_from([s.name for s in SC.segments]) | st.integers(0, SC.n_segments - 1)),
        "signals": draw(st.dictionaries(st.sampled_from(list(SC.categories)), st.floats(-3, 3), max_size=3)),
    }
    req = {"user": user, "context": {"hour": draw(st.integers(0, 23))}, "history": history}
    if draw(st.booleans()):
        req["episode_id"] = draw(st.text(min_size=1, max_size=60) | st.integers(-(2**63), 2**63 - 1))
    return req


@settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None)
@given(batch=st.lists(valid_decisions(), min_size=1, max_size=5), single=st.booleans())
def test_valid_decisions_are_answered_as_documented(batch: list[dict[str, Any]], single: bool) -> None:
    from fastapi.testclient import TestClient

    with TestClient(_VALID_APP) as client:
        r = client.post("/v1/decisions", json=batch[0] if single else batch)
    assert r.status_code == 200, r.text
    answers = [r.json()] if single else r.json()
    assert len(answers) == (1 if single else len(batch))
    for a in answers:
        assert 0 < a["propensity"] <= 1 and set(a["propensities"]) == {"delay", "slot", "creative"}
        assert a["action"]["slot"] in [s.name for s in SC.slots]


_VALID_APP = _app(auth=False)
