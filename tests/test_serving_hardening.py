"""Bad input to the server gets a bounded 4xx naming the problem: never a 500, never another decision's answer."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adrl.agents.baselines import GreedyPolicy
from adrl.scenario import Scenario
from adrl.serving import PolicyService, ServeConfig, create_app
from adrl.serving.decision_log import DecisionLog

KEY = "hardening-key-0123456789abcdef"
REQ = {"episode_id": "s-1", "user": {"id": "alice", "segment": "office"}, "context": {"hour": 12}}


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    tmp = tmp_path_factory.mktemp("hardening")
    GreedyPolicy(Scenario()).save(tmp / "greedy")
    mp = pytest.MonkeyPatch()
    mp.setenv("ADRL_LOG_KEY", KEY)
    cfg = ServeConfig(policy=tmp / "greedy", log_dir=tmp / "log", feedback_window=30.0, flush_interval=0.05)
    service = PolicyService.from_config(cfg)
    with TestClient(create_app(service), raise_server_exceptions=False) as c:
        yield c
    mp.undo()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    field=st.sampled_from(["hour", "step", "episode_id", "segment", "impressions_24h"]),
    value=st.one_of(st.integers(min_value=2**63, max_value=2**200), st.integers(max_value=-(2**63) - 1)),
)
def test_integers_beyond_64_bits_are_a_422_naming_the_field(client: TestClient, field: str, value: int) -> None:
    req: dict = json.loads(json.dumps(REQ))
    if field == "hour":
        req["context"]["hour"] = value
    elif field == "segment":
        req["user"]["segment"] = value
    elif field == "impressions_24h":
        req["history"] = {"impressions_24h": value}
    else:
        req[field] = value
    r = client.post("/v1/decisions", content=json.dumps(req))
    assert r.status_code == 422, r.text
    assert field in r.text and len(r.content) < 4096


def test_error_replies_stay_small_whatever_the_body(client: TestClient) -> None:
    r = client.post("/v1/decisions", content=json.dumps([{}] * 5_000))
    assert r.status_code == 422
    assert len(r.content) < 8192, len(r.content)
    assert "more invalid field(s)" in r.text  # the rest are counted, not listed
    bad = {**REQ, "context": {"hour": 99}}
    for body, says in [
        ([{}] * 20_000, "at most 10000 requests"),  # large bodies: measured before they are validated
        ([bad] * 9_000, "more invalid field(s)"),
        ({"user": {"segment": 0, "signals": {f"k{i}": 9.0 for i in range(20_000)}}, "context": {}}, "values"),
    ]:
        r = client.post("/v1/decisions", content=json.dumps(body))
        assert r.status_code == 422 and says in r.text and len(r.content) < 4096, r.text[:300]
    r = client.post("/v1/decisions", content=json.dumps([REQ] * 5_000)[:-1])  # unbalanced
    assert r.status_code == 400 and len(r.content) < 4096
    r = client.post("/v1/feedback", content=json.dumps({f"x{i}": 1 for i in range(20_000)}))
    assert r.status_code == 422 and len(r.content) < 4096


def test_a_large_valid_batch_is_answered_like_a_small_one(client: TestClient) -> None:
    from adrl.serving.bodies import LARGE_BODY

    body = [{**REQ, "episode_id": f"big-{i}", "user": {"id": "u" * 200, "segment": "office"}} for i in range(600)]
    assert len(json.dumps(body)) > LARGE_BODY  # read in chunks
    answers = client.post("/v1/decisions", json=body).json()
    assert [a["episode_id"] for a in answers] == [f"big-{i}" for i in range(600)]
    body[450]["context"] = {"hour": 24}
    r = client.post("/v1/decisions", json=body)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == [450, "context", "hour"]
    assert r.json()["message"].startswith("1 invalid field(s): 450.context.hour")
    trailing = json.dumps(body[:300]) + " [1]"  # what follows the list is refused, as the parser would
    assert client.post("/v1/decisions", content=trailing).status_code == 400
    long = client.post("/v1/decisions", content=json.dumps({**REQ, "episode_id": "x" * 100_000}))
    assert long.status_code == 422 and len(long.content) < 4096


@pytest.mark.parametrize("mangle", ["leading_zero", "arabic_digits", "fullwidth_digits", "plus_sign", "spaces"])
def test_an_id_never_issued_is_unknown_not_read_as_an_issued_one(client: TestClient, mangle: str) -> None:
    eid = client.post("/v1/decisions", json=REQ).json()["event_id"]
    token, _, seq = eid.rpartition("-")
    forged = {
        "leading_zero": f"0{seq}",
        "arabic_digits": "".join(chr(0x0660 + int(d)) for d in seq),
        "fullwidth_digits": "".join(chr(0xFF10 + int(d)) for d in seq),
        "plus_sign": f"+{seq}",
        "spaces": f" {seq}",
    }[mangle]
    r = client.post("/v1/feedback", json={"decision_id": f"{token}-{forged}", "click": True})
    assert r.status_code == 404, r.text
    assert client.post("/v1/feedback", json={"decision_id": eid, "click": True}).status_code == 200


def test_feedback_in_parts_cannot_build_a_row_a_single_request_is_refused_for(client: TestClient) -> None:
    single = client.post("/v1/decisions", json=REQ).json()["event_id"]
    assert client.post("/v1/feedback", json={"decision_id": single, "click": True, "shown": False}).status_code == 422
    parts = client.post("/v1/decisions", json=REQ).json()["event_id"]
    assert client.post("/v1/feedback", json={"decision_id": parts, "shown": False}).status_code == 200
    r = client.post("/v1/feedback", json={"decision_id": parts, "click": True})
    assert r.status_code == 422 and "not shown" in r.text
    other = client.post("/v1/decisions", json=REQ).json()["event_id"]
    assert client.post("/v1/feedback", json={"decision_id": other, "click": True}).status_code == 200
    r = client.post("/v1/feedback", json={"decision_id": other, "shown": False})
    assert r.status_code == 422


def test_corrupt_journal_lines_are_counted_and_reported_on_recovery(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("ADRL_LOG_KEY", KEY)
    GreedyPolicy(Scenario()).save(tmp_path / "greedy")
    cfg = ServeConfig(policy=tmp_path / "greedy", log_dir=tmp_path / "log", feedback_window=60.0)
    with PolicyService.from_config(cfg) as service:
        for _ in range(3):
            service.decide(REQ)
    journal = sorted((tmp_path / "log" / "journal").glob("journal-*.jsonl"))[-1]
    lines = journal.read_bytes().splitlines(keepends=True)
    lines[1] = lines[1].replace(b'"step"', b'"stap"')  # checksum no longer matches
    journal.write_bytes(b"".join(lines))
    with caplog.at_level(logging.WARNING, logger="adrl.serving"), PolicyService.from_config(cfg) as service:
        assert service.log.stats.recovered_corrupt == 1
        assert "1 corrupt" in caplog.text
        metrics = create_app(service)
        with TestClient(metrics) as c:
            assert "adrl_log_recovered_corrupt_records 1" in c.get("/metrics").text
    assert isinstance(service.log, DecisionLog)


def test_serve_refuses_a_guessable_api_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from adrl.cli import app

    GreedyPolicy(Scenario()).save(tmp_path / "greedy")
    monkeypatch.setenv("ADRL_TEST_API_KEY", "x")
    result = CliRunner().invoke(
        app, ["serve", "--policy", str(tmp_path / "greedy"), "--api-key-env", "ADRL_TEST_API_KEY"]
    )
    assert result.exit_code == 2
    assert "at least 16" in result.output


def test_one_decision_type_in_process_and_over_http(client: TestClient, tmp_path: Path) -> None:
    from dataclasses import asdict

    from pydantic import TypeAdapter

    from adrl.policy import Decision, load_policy

    served = client.post("/v1/decisions", json=REQ).json()
    decision = TypeAdapter(Decision).validate_python(served)  # the HTTP answer is a Decision, field for field
    assert decision.to_dict() == served and decision.event_id is not None
    GreedyPolicy(Scenario()).save(tmp_path / "greedy")
    mine = load_policy(tmp_path / "greedy").decide(user={"segment": "office"}, context={"hour": 12})
    assert set(asdict(mine)) == set(served) and mine.event_id is None and mine.step is None
    assert mine.propensity_slot == mine.propensities.slot and mine.action == decision.action


@pytest.mark.parametrize("form", ["single", "list"])
def test_a_decision_whose_answer_fails_is_neither_journaled_nor_joinable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, form: str
) -> None:
    import adrl.serving.app as app_module
    from adrl.logs import read_logs
    from adrl.serving.journal import read_records, segments

    monkeypatch.setenv("ADRL_LOG_KEY", KEY)
    GreedyPolicy(Scenario()).save(tmp_path / "greedy")
    cfg = ServeConfig(policy=tmp_path / "greedy", log_dir=tmp_path / "log", feedback_window=0.2, flush_interval=0.05)
    service = PolicyService.from_config(cfg)
    body = REQ if form == "single" else [REQ, REQ]
    real = app_module.dumps

    def failing(obj: object) -> bytes:
        if isinstance(obj, (list, dict)) and "event_id" in json.dumps(obj, default=str):
            raise RuntimeError("encoder failed after the decision was made")
        return real(obj)

    with TestClient(create_app(service), raise_server_exceptions=False) as c:
        monkeypatch.setattr(app_module, "dumps", failing)
        assert c.post("/v1/decisions", json=body).status_code == 500
        monkeypatch.setattr(app_module, "dumps", real)
        assert service.log.n_pending == 0
        token = service.log.token
        records = list(read_records([p for _, p in segments(tmp_path / "log" / "journal")]))
        assert not [r for r in records if r["t"] == "d"]  # the journal holds no decision nobody was told of
        assert c.post("/v1/feedback", json={"decision_id": f"{token}-1", "click": True}).status_code == 404
        told = c.post("/v1/decisions", json=REQ).json()["event_id"]  # the id was never issued, so it is free
        time.sleep(0.3)  # its window closes, so shutdown joins it
    assert list(read_logs(tmp_path / "log")["event_id"]) == [told]


def test_an_integer_written_with_a_zero_fraction_is_the_integer(client: TestClient) -> None:
    # JSON Schema's "integer" (the OpenAPI document's) takes 22.0, so the server does too; 22.5 stays a 422
    as_float = {**REQ, "context": {"hour": 22.0}, "step": 3.0, "history": {"impressions_24h": 2.0}}
    r = client.post("/v1/decisions", content=json.dumps(as_float))
    assert r.status_code == 200, r.text
    assert r.json()["step"] == 3 and isinstance(r.json()["step"], int)
    half = client.post("/v1/decisions", content=json.dumps({**REQ, "context": {"hour": 22.5}}))
    assert half.status_code == 422 and "hour" in half.text


def test_the_openapi_document_states_the_markets_names_and_the_rules_it_cannot_express(client: TestClient) -> None:
    sc = Scenario()
    doc = client.get("/openapi.json").json()
    schemas = doc["components"]["schemas"]
    segment = schemas["UserFeatures"]["properties"]["segment"]["anyOf"]
    assert {"type": "string", "enum": [s.name for s in sc.segments]} in segment
    assert set(schemas["History"]["properties"]["slot_counts"]["properties"]) == {s.name for s in sc.slots}
    obs = schemas["DecisionRequest"]["properties"]["obs"]["anyOf"][0]
    policy = client.get("/v1/policy").json()
    assert obs["minItems"] == obs["maxItems"] == len(obs["prefixItems"]) == len(policy["obs_names"])
    assert "clicks_today" in schemas["History"]["properties"]["conversions_today"]["description"]
    bad = {**REQ, "history": {"clicks_today": 1, "conversions_today": 2}}  # schema-valid, refused by its rule
    assert client.post("/v1/decisions", json=bad).status_code == 422


def test_a_refused_value_is_not_logged_by_the_app(
    client: TestClient, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    marker = "SECRET-VALUE-9e2d"
    with caplog.at_level(logging.DEBUG):
        for body in (
            {**REQ, "user": {"id": marker * 40, "segment": "office"}},
            {**REQ, "user": {"segment": marker}},
            {**REQ, "history": {"slot_counts": {marker: 1}}},
            {**REQ, marker: 1},
        ):
            assert client.post("/v1/decisions", json=body).status_code == 422
        assert client.post("/v1/feedback", json={"decision_id": marker * 10}).status_code == 422
        assert client.post("/v1/feedback", json={"decision_id": f"x-{marker}"}).status_code == 404
    out, err = capfd.readouterr()
    assert marker not in caplog.text and marker not in out and marker not in err


def test_a_restarted_service_joins_each_pending_decision_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from adrl.logs import read_logs

    monkeypatch.setenv("ADRL_LOG_KEY", KEY)
    GreedyPolicy(Scenario()).save(tmp_path / "greedy")
    cfg = ServeConfig(policy=tmp_path / "greedy", log_dir=tmp_path / "log", feedback_window=0.3, flush_interval=0.05)
    service = PolicyService.from_config(cfg)
    with service:
        eid = service.decide(REQ)["event_id"]
    with service:  # the same object started again (an app's lifespan run twice): it recovers from its journal
        time.sleep(0.5)
    assert service.log.stats.write_errors == 0, service.log.stats.last_error
    assert list(read_logs(tmp_path / "log")["event_id"]) == [eid]


_text = st.text(alphabet='ab"\\\\[]{},: \\u00e9')  # quotes, backslashes and brackets inside strings
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | _text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
    max_leaves=10,
)


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(items=st.lists(_json, max_size=6), spaced=st.booleans())
def test_measuring_a_body_finds_exactly_its_items(items: list[object], spaced: bool) -> None:
    from adrl.serving.bodies import measure

    body = json.dumps(items, separators=(", ", ": ") if spaced else (",", ":")).encode()
    shape = measure(body)
    assert shape.is_list and shape.balanced and shape.n_items == len(items)
    assert [json.loads(body[a:b]) for a, b in zip(shape.starts, shape.ends, strict=True)] == items


@pytest.mark.parametrize("size", [300, 100_000])
def test_a_body_that_is_no_object_gets_the_same_answer_whatever_its_size(client: TestClient, size: int) -> None:
    for body in ("1" * size, json.dumps("x" * size), json.dumps({**REQ, "episode_id": "e" * size})):
        r = client.post("/v1/decisions", content=body)
        assert r.status_code == (422 if body.startswith("{") else 400), (size, r.text[:200])
