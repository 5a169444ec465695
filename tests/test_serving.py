"""PolicyService, the HTTP app (TestClient) and the decision/feedback log, in process."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from adrl.agents.baselines import GreedyPolicy
from adrl.errors import ConfigError, FeatureMismatch
from adrl.logs import read_logs
from adrl.policy import load_policy
from adrl.scenario import Scenario
from adrl.serving import PolicyService, ServeConfig, UnknownDecision, create_app
from adrl.serving.decision_log import DecisionLog, FeedbackClosed, keyed_hash
from adrl.serving.journal import ReadStats, read_records, segments
from adrl.serving.service import log_key_from_env

KEY = "test-key-0123456789abcdef"
REQ = {"episode_id": "s-1", "user": {"id": "alice", "segment": "office", "signals": {"travel": 1.0}},
       "context": {"hour": 12}, "history": {"impressions_24h": 1, "hours_since_last_ad": 5}}  # fmt: skip


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("serving") / "greedy"
    GreedyPolicy(Scenario()).save(path)
    return path


def make_service(
    policy_dir: Path, log_dir: Path | None, monkeypatch: pytest.MonkeyPatch, *, default_reward: float = 0.0
) -> PolicyService:
    monkeypatch.setenv("ADRL_LOG_KEY", KEY)
    cfg = ServeConfig(policy=policy_dir, log_dir=log_dir, exploration="epsilon:0.1", seed=0,
                      feedback_window=0.3, flush_interval=0.05,
                      default_reward=default_reward)  # fmt: skip
    return PolicyService.from_config(cfg)


@pytest.fixture
def client(policy_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    service = make_service(policy_dir, tmp_path / "log", monkeypatch, default_reward=0.5)
    with TestClient(create_app(service, max_body_bytes=64 * 1024)) as c:
        yield c


def wait_rows(log_dir: Path, n: int, timeout: float = 10.0):
    end = time.monotonic() + timeout
    while True:
        try:
            df = read_logs(log_dir)
            if len(df) >= n:
                return df
        except Exception:
            if time.monotonic() > end:
                raise
        if time.monotonic() > end:
            raise AssertionError(f"log at {log_dir} did not reach {n} rows in {timeout} s")
        time.sleep(0.05)


def test_decide_feedback_and_the_joined_log(client, tmp_path):
    r = client.post("/v1/decisions", json=REQ)
    assert r.status_code == 200, r.text
    d = r.json()
    assert d["step"] == 0 and d["episode_id"] == "s-1" and 0 < d["propensity"] <= 1
    assert set(d["action"]) == {"delay_index", "delay_hours", "slot_index", "slot", "creative_index", "creative"}
    assert set(d["propensities"]) == {"delay", "slot", "creative"}
    r2 = client.post("/v1/decisions", json=REQ).json()
    assert r2["step"] == 1  # the server counts steps per episode
    fb = client.post("/v1/feedback", json={"decision_id": d["event_id"], "conversion": True})
    assert fb.status_code == 200 and fb.json()["accepted"] is True
    df = wait_rows(tmp_path / "log", 2).set_index("event_id")
    row, other = df.loc[d["event_id"]], df.loc[r2["event_id"]]
    sc = Scenario()
    c, s = d["action"]["creative_index"], d["action"]["slot_index"]
    expected = (
        sc.rewards.click_value + sc.rewards.conversion_weight * sc.creatives[c].conversion_value - sc.slots[s].cost
    )
    assert row["click"] and row["conversion"] and not row["defaulted"]  # a conversion implies a click
    assert row["reward"] == pytest.approx(expected)
    assert other["defaulted"] and other["reward"] == 0.5 and not other["click"]
    assert row["propensity"] == pytest.approx(d["propensity"]) and row["propensity_slot"] == pytest.approx(
        d["propensities"]["slot"])  # fmt: skip
    assert row["episode_id"] == other["episode_id"] and (row["step"], other["step"]) == (0, 1)
    assert row["policy_version"] == d["policy_version"]
    # user ids are a keyed hash, never raw
    assert row["user_id"] == keyed_hash(KEY.encode(), "user", "alice")
    for f in (tmp_path / "log").rglob("*.*"):
        assert b"alice" not in f.read_bytes(), f
    # feedback after the window: 409; unknown id: 404
    late = client.post("/v1/feedback", json={"decision_id": r2["event_id"], "click": True})
    assert late.status_code == 409 and "window" in late.json()["detail"]


def test_batch_decisions_keep_order_and_are_logged(client, tmp_path):
    reqs = [{**REQ, "episode_id": f"e{i}", "context": {"hour": i}} for i in range(20)]
    r = client.post("/v1/decisions", json=reqs)
    assert r.status_code == 200
    out = r.json()
    assert [x["episode_id"] for x in out] == [f"e{i}" for i in range(20)]
    df = wait_rows(tmp_path / "log", 20)
    assert set(df["event_id"]) == {x["event_id"] for x in out}
    assert (df["hour"].to_numpy() == [(i + out[i]["action"]["delay_hours"]) % 24 for i in range(20)]).all()


BAD = [
    (b'{"user": {"segment": "office"}}', 422, "user and context are required"),
    (json.dumps({**REQ, "colour": "red"}).encode(), 422, "Extra inputs"),
    (json.dumps({**REQ, "context": {"hour": "noon"}}).encode(), 422, "valid integer"),
    (json.dumps({**REQ, "context": {"hour": 30}}).encode(), 422, "less than or equal to 23"),
    (json.dumps({**REQ, "user": {"segment": "pirates"}}).encode(), 422, "unknown segment"),
    (json.dumps(REQ).replace('"travel": 1.0', '"travel": NaN').encode(), 422, "finite"),
    (json.dumps(REQ).replace('"hours_since_last_ad": 5', '"hours_since_last_ad": Infinity').encode(), 422, "finite"),
    (json.dumps([REQ, {**REQ, "step": -1}]).encode(), 422, "1.step"),
    (b'{"user": ', 400, "JSON"),
    (b"42", 400, "JSON object"),
]


@pytest.mark.parametrize(("body", "status", "needle"), BAD)
def test_bad_decision_requests_get_4xx_naming_the_problem(client, body, status, needle):
    r = client.post("/v1/decisions", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert needle in json.dumps(r.json()), r.text
    assert client.get("/healthz").json()["status"] == "ok"


def test_oversized_unknown_and_mistyped_feedback(client):
    big = json.dumps([REQ] * 400).encode()
    assert len(big) > 64 * 1024
    r = client.post("/v1/decisions", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "limit" in r.json()["detail"]
    r = client.post("/v1/feedback", json={"decision_id": "nope-1", "click": True})
    assert r.status_code == 404 and "unknown decision id" in r.json()["detail"]
    r = client.post("/v1/feedback", json={"decision_id": "x", "click": "yes"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["click"]
    r = client.post("/v1/feedback", json={"click": True})
    assert r.status_code == 422 and "decision_id" in r.text


def test_a_streamed_body_past_the_limit_gets_413(client):
    chunk = json.dumps([REQ] * 100).encode()

    def stream() -> Iterator[bytes]:  # no Content-Length: the limit is checked as the chunks arrive
        for _ in range(4):
            yield chunk

    r = client.post("/v1/decisions", content=stream(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "passed the limit" in r.json()["detail"]
    assert client.post("/v1/decisions", json=REQ).status_code == 200


def test_the_fastapi_route_answers_like_the_middleware_fast_path(policy_dir, monkeypatch):
    from fastapi import FastAPI

    from adrl.serving.app import DecisionHandler, create_app, router

    service = make_service(policy_dir, None, monkeypatch)
    bare = FastAPI()  # the route alone, as an app without ServingMiddleware would serve it
    bare.state.service = service
    bare.state.decisions = DecisionHandler(service, max_body_bytes=1 << 20, max_batch=10)
    bare.include_router(router)
    with TestClient(bare) as c, TestClient(create_app(service, max_batch=10)) as fast:
        for cl in (c, fast):
            one = cl.post("/v1/decisions", json=REQ).json()
            assert one["policy_id"].startswith("greedy") and 0 < one["propensity"] <= 1
            many = cl.post("/v1/decisions", json=[REQ] * 3).json()
            assert len(many) == 3 and all(m["step"] >= 0 for m in many)
        assert fast.post("/v1/decisions", json=[REQ] * 11).status_code == 422


def test_in_process_decisions_are_independent_dicts(policy_dir, monkeypatch):
    with make_service(policy_dir, None, monkeypatch) as service:
        a, b = service.decide_batch([REQ, REQ])
        a["action"]["slot"] = "changed"
        assert b["action"]["slot"] != "changed"
        assert service.decide(REQ)["action"]["slot"] != "changed"


def test_metrics_policy_and_openapi(client):
    client.post("/v1/decisions", json=REQ)
    client.post("/v1/decisions", json={"nope": 1})
    text = client.get("/metrics").text
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }  # label order is the exporter's business, so compare parsed samples

    def value(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted(labels.items())))]

    assert value("adrl_http_requests_total", route="/v1/decisions", method="POST", code="200") == 1
    assert value("adrl_http_request_duration_seconds_bucket", route="/v1/decisions", le="+Inf") == 2
    assert sum(v for (name, _), v in samples.items() if name == "adrl_decisions_total") == 1
    assert value("adrl_errors_total", route="/v1/decisions", reason="invalid_request") == 1
    info = client.get("/v1/policy").json()
    assert info["kind"] == "greedy" and info["exploration"] == "epsilon:0.1" and len(info["creatives"]) == 12
    spec = client.get("/openapi.json").json()
    assert {"/v1/decisions", "/v1/feedback", "/v1/policy", "/healthz", "/metrics"} <= set(spec["paths"])
    assert "DecisionRequest" in spec["components"]["schemas"]
    assert spec["components"]["schemas"]["DecisionRequest"]["additionalProperties"] is False


def test_api_key_auth(policy_dir, monkeypatch):
    service = make_service(policy_dir, None, monkeypatch)
    with TestClient(create_app(service, api_key="s3cret")) as c:
        assert c.post("/v1/decisions", json=REQ).status_code == 401
        assert c.post("/v1/decisions", json=REQ, headers={"authorization": "Bearer wrong"}).status_code == 401
        assert c.post("/v1/decisions", json=REQ, headers={"authorization": "Bearer s3cret"}).status_code == 200
        assert c.post("/v1/decisions", json=REQ, headers={"x-api-key": "s3cret"}).status_code == 200
        assert c.get("/v1/policy").status_code == 401
        assert c.get("/healthz").status_code == 200 and c.get("/metrics").status_code == 200


def test_logging_needs_a_key_unless_ephemeral(monkeypatch):
    monkeypatch.delenv("ADRL_LOG_KEY", raising=False)
    with pytest.raises(ConfigError, match="ADRL_LOG_KEY is not set"):
        log_key_from_env("ADRL_LOG_KEY", logging=True, ephemeral=False)
    assert len(log_key_from_env("ADRL_LOG_KEY", logging=True, ephemeral=True) or b"") == 32
    assert log_key_from_env("ADRL_LOG_KEY", logging=False, ephemeral=False) is None
    monkeypatch.setenv("ADRL_LOG_KEY", "short")
    with pytest.raises(ConfigError, match="at least 16 bytes"):
        log_key_from_env("ADRL_LOG_KEY", logging=True, ephemeral=False)


def test_recovery_skips_a_torn_line_and_joins_pending_decisions_once(policy_dir, tmp_path):
    policy = load_policy(policy_dir, seed=0)
    sc = policy.scenario

    def new_log(window: float) -> DecisionLog:
        return DecisionLog(sc, log_dir=tmp_path / "log", key=KEY.encode(), policy_version=policy.policy_version,
                           feedback_window=window, flush_interval=0.05)  # fmt: skip

    log = new_log(60.0)
    log.start()
    obs = policy.encode({"segment": "office"}, {"hour": 3})[None, :].repeat(5, axis=0)
    arrays = policy.decide_arrays(obs)
    ids, _ = log.record_decisions(["e"] * 5, [None] * 5, ["bob"] * 5, obs, arrays.action, arrays.propensity,
                                  arrays.components, lambda ids, steps: (ids, steps))  # fmt: skip
    log.record_feedback(ids[1], click=True)
    with pytest.raises(UnknownDecision):
        log.record_feedback("zzz-1")
    log._journal._write(b'0badc0de {"t":"d","seq":6,"id":')  # type: ignore[union-attr]  # a torn write
    log._stop.set()  # simulate a crash: nothing joined, nothing written
    log._journal.close()  # type: ignore[union-attr]

    again = new_log(0.01)
    again.start()
    assert again.stats.recovered_pending == 5 and again.stats.recovered_torn == 1
    time.sleep(0.05)
    again.close()
    df = read_logs(tmp_path / "log")
    assert sorted(df["event_id"]) == sorted(ids) and df.set_index("event_id").loc[ids[1], "click"]
    assert list(df.sort_values("event_id")["step"]) == [0, 1, 2, 3, 4]
    third = new_log(0.01)  # a further restart joins nothing twice
    third.start()
    third.close()
    assert len(read_logs(tmp_path / "log")) == 5
    with pytest.raises(FeedbackClosed):
        third.record_feedback(ids[0], click=True)
    stats = ReadStats()
    records = list(read_records([p for _, p in segments(tmp_path / "log" / "journal")], stats))
    assert stats.corrupt == 0 and stats.torn == 1 and sum(r["t"] == "d" for r in records) == 5


def test_a_log_dir_of_another_layout_is_refused(policy_dir, tmp_path):
    policy = load_policy(policy_dir)
    log = DecisionLog(policy.scenario, log_dir=tmp_path, key=KEY.encode(), policy_version="v")
    log.start()
    log.close()
    other = Scenario(delays=(0, 1))
    with pytest.raises(FeatureMismatch, match="another --log-dir"):
        DecisionLog(other, log_dir=tmp_path, key=KEY.encode(), policy_version="v").start()


def test_pending_decisions_cost_the_garbage_collector_nothing(policy_dir, tmp_path, monkeypatch):
    import gc

    monkeypatch.setenv("ADRL_LOG_KEY", KEY)
    cfg = ServeConfig(policy=policy_dir, log_dir=tmp_path / "log", feedback_window=60.0)  # still pending below
    with PolicyService.from_config(cfg) as service:
        out = service.decide_batch([REQ] * 50)
        service.feedback({"decision_id": out[0]["event_id"], "click": True})
        # a collection untracks a tuple whose items are untracked by then (an inner tuple met later in the same
        # pass waits for the next one)
        gc.collect()
        gc.collect()
        held = [service.log._pending[d["event_id"]] for d in out]
        assert not any(gc.is_tracked(p) for p in held)
        assert not gc.is_tracked(service.log._feedback[out[0]["event_id"]])
