"""A real ``adrl serve`` process on 127.0.0.1: decide → feedback → joined log, bad input, auth, SIGKILL, SIGTERM."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from adrl.agents.baselines import GreedyPolicy
from adrl.logs import read_logs
from adrl.policy import load_policy
from adrl.scenario import Scenario
from adrl.serving.decision_log import DecisionLog
from adrl.serving.journal import ReadStats, read_records, segments

KEY = "process-test-key-0123456789"
API_KEY = "api-key-for-tests"
REQ = {"episode_id": "p-1", "user": {"id": "carol", "segment": "night_owl"}, "context": {"hour": 22}}
ADRL = [sys.executable, "-m", "adrl.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    base: str
    log_dir: Path
    headers: dict[str, str]


def start_server(policy: Path, log_dir: Path, *, api_key: bool, window: float = 0.5) -> Server:
    port = free_port()
    env = {**os.environ, "ADRL_LOG_KEY": KEY, "TEST_API_KEY": API_KEY}
    cmd = [*ADRL, "serve", "--policy", str(policy), "--port", str(port), "--log-dir", str(log_dir),
           "--feedback-window", str(window), "--flush-interval", "0.1", "--exploration", "epsilon:0.2", "--seed", "1",
           "--max-body-mb", "0.05"]  # fmt: skip
    if api_key:
        cmd += ["--api-key-env", "TEST_API_KEY"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    end = time.monotonic() + 60
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise AssertionError(f"adrl serve exited {proc.returncode}: {proc.stdout.read().decode()}")  # type: ignore[union-attr]
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                headers = {"authorization": f"Bearer {API_KEY}"} if api_key else {}
                return Server(proc, base, log_dir, headers)
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError("adrl serve did not become healthy within 60 s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("proc") / "greedy"
    GreedyPolicy(Scenario()).save(path)
    return path


@pytest.fixture(scope="module")
def server(policy_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = start_server(policy_dir, tmp_path_factory.mktemp("proc-log") / "log", api_key=True)
    yield s
    stop(s.proc)


def wait_rows(log_dir: Path, ids: set[str], timeout: float = 15.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            df = read_logs(log_dir)
            if ids <= set(df["event_id"]):
                return df
        except Exception:
            pass
        time.sleep(0.1)
    raise AssertionError(f"decisions {sorted(ids)[:3]}... not joined into {log_dir} within {timeout} s")


def test_decide_feedback_then_the_log_holds_both_joined(server):
    c = httpx.Client(base_url=server.base, headers=server.headers, timeout=10)
    d = c.post("/v1/decisions", json=REQ).json()
    batch = c.post("/v1/decisions", json=[REQ, REQ]).json()
    assert [b["step"] for b in batch] == [1, 2]
    assert c.post("/v1/feedback", json={"decision_id": d["event_id"], "click": True}).status_code == 200
    df = wait_rows(server.log_dir, {d["event_id"], *(b["event_id"] for b in batch)}).set_index("event_id")
    row = df.loc[d["event_id"]]
    assert row["click"] and not row["defaulted"] and row["propensity"] == pytest.approx(d["propensity"])
    assert df.loc[batch[0]["event_id"], "defaulted"]
    assert df["policy_version"].iloc[0] == d["policy_version"]


BAD = [
    ({"user": {"segment": "night_owl"}}, 422),  # missing context
    ({**REQ, "extra": 1}, 422),  # unknown field
    ({**REQ, "context": {"hour": "22"}}, 422),  # wrong type
    ({**REQ, "context": {"hour": -1}}, 422),  # out of range
    ({**REQ, "user": {"segment": "night_owl", "signals": {"games": 1e9}}}, 422),  # out of range
    (b'{"user": {"segment": "night_owl", "signals": {"games": NaN}}, "context": {"hour": 1}}', 422),  # NaN
    (b'{"obs": [Infinity]}', 422),  # inf
    (b"{not json", 400),
    (json.dumps([REQ] * 1000).encode(), 413),  # larger than --max-body-mb 0.05
]


def test_bad_input_gets_its_4xx_and_the_server_stays_healthy(server):
    c = httpx.Client(base_url=server.base, headers=server.headers, timeout=10)
    for body, status in BAD:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        r = c.post("/v1/decisions", content=content, headers={"content-type": "application/json"})
        assert r.status_code == status, (body, r.text)
        assert r.json()["detail"], r.text
    r = c.post("/v1/feedback", json={"decision_id": "never-issued-7", "click": True})
    assert r.status_code == 404
    assert c.post("/v1/feedback", json={"decision_id": 7}).status_code == 422
    assert c.get("/healthz").json()["status"] == "ok"
    assert c.post("/v1/decisions", json=REQ).status_code == 200
    assert 'reason="invalid_request"' in c.get("/metrics").text


def test_auth_on_rejects_missing_key_and_keeps_ops_open(server):
    assert httpx.post(f"{server.base}/v1/decisions", json=REQ).status_code == 401
    assert httpx.get(f"{server.base}/v1/policy", headers={"x-api-key": "wrong"}).status_code == 401
    assert httpx.get(f"{server.base}/v1/policy", headers={"x-api-key": API_KEY}).status_code == 200
    assert httpx.get(f"{server.base}/healthz").status_code == 200
    assert httpx.get(f"{server.base}/openapi.json").status_code == 200


def test_sigterm_flushes_the_log_and_exits(server):
    c = httpx.Client(base_url=server.base, headers=server.headers, timeout=10)
    ids = {c.post("/v1/decisions", json=REQ).json()["event_id"] for _ in range(5)}
    time.sleep(0.6)  # windows close
    server.proc.send_signal(signal.SIGTERM)
    server.proc.wait(timeout=30)
    assert ids <= set(read_logs(server.log_dir)["event_id"])


def test_auth_off_and_sigkill_under_load_loses_no_acknowledged_decision(policy_dir, tmp_path):
    srv = start_server(policy_dir, tmp_path / "log", api_key=False, window=30.0)
    port = int(srv.base.rsplit(":", 1)[1])
    acked: list[str] = []
    lock = threading.Lock()
    stop_flag = threading.Event()

    def client(i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        body = json.dumps([{**REQ, "episode_id": f"k{i}"}] * (1 + i % 3)).encode()
        while not stop_flag.is_set():
            try:
                conn.request("POST", "/v1/decisions", body=body, headers={"content-type": "application/json"})
                resp = conn.getresponse()
                data = resp.read()
            except (OSError, http.client.HTTPException):
                return  # the server died: requests in flight were never acknowledged
            assert resp.status == 200, data
            with lock:
                acked.extend(d["event_id"] for d in json.loads(data))

    try:
        assert httpx.post(f"{srv.base}/v1/decisions", json=REQ).status_code == 200  # auth off: no key needed
        threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        time.sleep(1.5)
        srv.proc.send_signal(signal.SIGKILL)
        srv.proc.wait(timeout=10)
        stop_flag.set()
        for t in threads:
            t.join(timeout=10)
    finally:
        stop(srv.proc)
    assert len(acked) > 50, "the load generator got too few answers to mean anything"

    stats = ReadStats()
    records = list(read_records([p for _, p in segments(tmp_path / "log" / "journal")], stats))
    journaled = {r["id"] for r in records if r["t"] == "d"}
    assert set(acked) <= journaled
    assert stats.corrupt == 0 and stats.torn <= 1

    # a restart recovers every journaled decision and, once windows close, joins each exactly once
    policy = load_policy(policy_dir)
    log = DecisionLog(policy.scenario, log_dir=tmp_path / "log", key=KEY.encode(), policy_version="restart",
                      feedback_window=0.01, flush_interval=0.05)  # fmt: skip
    log.start()
    time.sleep(0.05)
    log.close()
    df = read_logs(tmp_path / "log")
    assert set(acked) <= set(df["event_id"]) and df["event_id"].is_unique


def test_a_refused_value_is_never_printed_by_the_server(policy_dir, tmp_path):
    """The values of refused requests reach neither stdout nor stderr (uvicorn's loggers as adrl serve sets them)."""
    srv = start_server(policy_dir, tmp_path / "log", api_key=True)
    marker = "SECRET-VALUE-4f1c"
    refused = [
        ("/v1/decisions", {**REQ, "user": {"id": marker * 40, "segment": "night_owl"}}),  # over-long user id
        ("/v1/decisions", {**REQ, "episode_id": marker * 40}),  # over-long episode id
        ("/v1/decisions", {**REQ, "user": {"segment": marker}}),  # unknown segment
        ("/v1/decisions", {**REQ, marker: 1}),  # unknown field
        ("/v1/decisions", {**REQ, "context": {"hour": marker}}),  # wrong type
        ("/v1/feedback", {"decision_id": marker * 10, "click": True}),  # over-long id
        ("/v1/feedback", {"decision_id": f"x-{marker}", "click": True}),  # unknown id
    ]
    try:
        with httpx.Client(base_url=srv.base, headers=srv.headers, timeout=10) as c:
            for path, body in refused:
                assert c.post(path, json=body).status_code in (404, 422)
            assert c.post("/v1/decisions", content=f"{{{marker}".encode()).status_code == 400
            assert c.post(f"/v1/decisions?{marker}=1", json=REQ).status_code == 200
            assert httpx.post(f"{srv.base}/v1/decisions", json=REQ, headers={"x-api-key": marker}).status_code == 401
        srv.proc.send_signal(signal.SIGTERM)
        output, _ = srv.proc.communicate(timeout=30)
    finally:
        stop(srv.proc)
    assert marker not in output.decode(errors="replace")


def test_healthz_answers_while_the_largest_allowed_requests_are_refused(policy_dir, tmp_path):
    """Loose bound (a busy 2-core machine); benchmarks/serve_hardening.py measures the 50 ms goal."""
    port = free_port()
    cmd = [*ADRL, "serve", "--policy", str(policy_dir), "--port", str(port)]  # the default 8 MiB body limit
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    body = b"[" + b",".join([b"{}"] * ((8 << 20) // 3 - 10)) + b"]"  # just under the limit, ~2.8 M bad items
    stop_flag = threading.Event()
    statuses: list[int] = []

    def refuse() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        while not stop_flag.is_set():
            conn.request("POST", "/v1/decisions", body=body, headers={"content-type": "application/json"})
            resp = conn.getresponse()
            data = resp.read()
            statuses.append(resp.status)
            assert len(data) < 4096

    try:
        end = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                assert time.monotonic() < end and proc.poll() is None
                time.sleep(0.1)
        threads = [threading.Thread(target=refuse, daemon=True) for _ in range(2)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        probes = []
        with httpx.Client(base_url=base, timeout=30) as c:
            until = time.monotonic() + 3
            while time.monotonic() < until:
                t0 = time.perf_counter()
                assert c.get("/healthz").status_code == 200
                probes.append(time.perf_counter() - t0)
                time.sleep(0.02)
        stop_flag.set()
        for t in threads:
            t.join(timeout=60)
    finally:
        stop(proc)
    assert statuses and set(statuses) == {422}
    assert max(probes) < 1.0, f"healthz took up to {max(probes):.3f} s (median {sorted(probes)[len(probes) // 2]:.3f})"
