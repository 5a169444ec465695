"""A/B experiments through a real ``adrl serve`` process: driven users, the readout against the truth, hot swap."""

from __future__ import annotations

import http.client
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from adrl.agents.baselines import GreedyPolicy, PacingPolicy, RandomPolicy
from adrl.logs import read_logs
from adrl.scenario import Scenario
from adrl.serving.journal import read_records, segments

KEY = "process-test-key-0123456789"
API_KEY = "api-key-for-experiment-tests"
ADRL = [sys.executable, "-m", "adrl.cli"]
ENV = {**os.environ, "ADRL_LOG_KEY": KEY, "TEST_API_KEY": API_KEY}
AUTH = {"authorization": f"Bearer {API_KEY}"}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve(args: list[str]) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen([*ADRL, "serve", "--port", str(port), *args], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    end = time.monotonic() + 60
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise AssertionError(f"adrl serve exited {proc.returncode}: {proc.stdout.read().decode()}")  # type: ignore[union-attr]
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError("adrl serve did not become healthy within 60 s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def policies(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("arms")
    sc = Scenario()
    GreedyPolicy(sc).save(root / "greedy")
    PacingPolicy(sc, 3).save(root / "pacing")
    RandomPolicy(sc, seed=0).save(root / "random")
    return {"greedy": root / "greedy", "pacing": root / "pacing", "random": root / "random"}


def test_two_arm_experiment_readout_covers_the_true_lift(policies, tmp_path):
    log = tmp_path / "log"
    proc, base = serve(["--policy", str(policies["greedy"]), "--policy", str(policies["pacing"]), "--split", "50,50",
                        "--log-dir", str(log), "--feedback-window", "1", "--flush-interval", "0.1",
                        "--exploration", "epsilon:0.1", "--seed", "3"])  # fmt: skip
    try:
        exp = httpx.get(f"{base}/v1/experiment").json()
        assert [a["name"] for a in exp["arms"]] == ["A", "B"] and exp["split"] == [50.0, 50.0]
        drive_out = tmp_path / "drive.json"
        done = subprocess.run([*ADRL, "drive", "--url", base, "--users", "1500", "--days", "2", "--seed", "5",
                               "--truth-users", "40000", "--out", str(drive_out)], env=ENV, capture_output=True,
                              text=True, timeout=300)  # fmt: skip
        assert done.returncode == 0, done.stderr
        driven = json.loads(drive_out.read_text())
        counts = {a["name"]: a["decisions"] for a in httpx.get(f"{base}/v1/experiment").json()["arms"]}
        assert sum(counts.values()) == driven["decisions"] and min(counts.values()) > 0
        time.sleep(1.5)  # every feedback window closes
    finally:
        stop(proc)
    assert proc.returncode in (0, -signal.SIGTERM)  # uvicorn re-raises the signal after a graceful shutdown
    df = read_logs(log)
    assert len(df) == driven["decisions"] and not df["defaulted"].any()  # every decision got its feedback
    assert set(df["arm"]) == {"A", "B"} and df.groupby("arm")["policy_id"].nunique().eq(1).all()
    # sticky: each user saw one arm
    assert df.groupby("user_id")["arm"].nunique().eq(1).all()

    report_out = tmp_path / "report.json"
    done = subprocess.run([*ADRL, "experiment", "report", "--logs", str(log), "--out", str(report_out)], env=ENV,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(report_out.read_text())
    truth = driven["truth"]
    true_lift = truth["B"]["return_per_user_day"] - truth["A"]["return_per_user_day"]
    lo, hi = report["lift"]["B"]["return_per_user_day"]["absolute_ci"]
    assert lo <= true_lift <= hi, (lo, true_lift, hi)
    true_ctr_lift = truth["B"]["ctr"] - truth["A"]["ctr"]
    lo, hi = report["lift"]["B"]["ctr"]["absolute_ci"]
    assert lo <= true_ctr_lift <= hi, (lo, true_ctr_lift, hi)
    assert not report["srm"]["flag"]
    assert report["users"]["A"] + report["users"]["B"] == 1500
    assert set(report["ope"]) == {"A_from_B", "B_from_A"}


def test_hot_swap_under_load_fails_no_request_and_loses_no_decision(policies, tmp_path):
    log = tmp_path / "log"
    proc, base = serve(["--policy", str(policies["greedy"]), "--policy", str(policies["pacing"]), "--split", "50,50",
                        "--log-dir", str(log), "--feedback-window", "0.5", "--flush-interval", "0.1",
                        "--api-key-env", "TEST_API_KEY", "--exploration", "epsilon:0.1", "--seed", "1"])  # fmt: skip
    port = int(base.rsplit(":", 1)[1])
    acked: list[dict] = []
    failures: list[str] = []
    lock = threading.Lock()
    stop_flag = threading.Event()

    def client(i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        n = 0
        while not stop_flag.is_set() and n < 400:  # bounded load
            req = {"user": {"id": f"u{i}-{n % 50}", "segment": "office"}, "context": {"hour": n % 24}}
            conn.request(
                "POST", "/v1/decisions", body=json.dumps(req), headers={**AUTH, "content-type": "application/json"}
            )
            resp = conn.getresponse()
            data = resp.read()
            if resp.status != 200:
                with lock:
                    failures.append(f"{resp.status} {data[:200]!r}")
                continue
            d = json.loads(data)
            fb = json.dumps({"decision_id": d["event_id"], "click": n % 4 == 0})
            conn.request("POST", "/v1/feedback", body=fb, headers={**AUTH, "content-type": "application/json"})
            resp = conn.getresponse()
            fdata = resp.read()
            with lock:
                acked.append(d)
                if resp.status != 200:
                    failures.append(f"feedback {resp.status} {fdata[:200]!r}")
            n += 1

    try:
        threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        assert httpx.post(f"{base}/v1/admin/experiment", json={"split": [20, 80]}).status_code == 401
        r = httpx.post(f"{base}/v1/admin/experiment", headers=AUTH, timeout=30,
                       json={"arms": [{"name": "B", "policy": str(policies["random"]), "exploration": "none"}],
                             "split": [20, 80]})  # fmt: skip
        assert r.status_code == 200, r.text
        assert r.json()["version"] == 2 and r.json()["split"] == [20.0, 80.0]
        bad = httpx.post(f"{base}/v1/admin/experiment", headers=AUTH, json={"split": [20, 70]})
        assert bad.status_code == 422 and "sum to 100" in bad.text
        for t in threads:
            t.join(timeout=120)
        stop_flag.set()
        time.sleep(0.8)  # the last windows close
    finally:
        stop_flag.set()
        stop(proc)
    assert not failures, failures[:5]
    assert len(acked) == 1600
    ids = {d["event_id"] for d in acked}
    journaled = {r["id"] for r in read_records([p for _, p in segments(log / "journal")]) if r["t"] == "d"}
    assert ids <= journaled
    df = read_logs(log)
    assert ids <= set(df["event_id"]) and df["event_id"].is_unique
    versions = [json.loads(line) for line in (log / "experiment.jsonl").read_text().splitlines()]
    assert [v["version"] for v in versions] == [1, 2] and versions[1]["since"] > versions[0]["since"]
    served_b = {d["policy_id"] for d in acked if d["arm"] == "B"}
    assert len(served_b) == 2  # pacing before the swap, random after it
    # every decision is logged with the version that made it
    by_id = df.set_index("event_id")
    assert all(by_id.loc[d["event_id"], "policy_version"] == d["policy_version"] for d in acked[::37])


def test_two_workers_share_the_port_forward_feedback_and_merge_their_logs(policies, tmp_path):
    log = tmp_path / "log"
    proc, base = serve(["--policy", str(policies["greedy"]), "--policy", str(policies["pacing"]), "--split", "50,50",
                        "--log-dir", str(log), "--feedback-window", "30", "--flush-interval", "0.1", "--workers", "2",
                        "--api-key-env", "TEST_API_KEY", "--seed", "2"])  # fmt: skip
    try:
        ids: list[str] = []
        tokens: set[str] = set()
        # a new connection each time, so the kernel spreads them over both workers; on a loaded machine the second
        # worker may still be starting, so keep asking (slowly) for up to a minute
        deadline = time.monotonic() + 60
        for i in itertools.count():
            with httpx.Client(base_url=base, headers=AUTH, timeout=10) as c:
                d = c.post("/v1/decisions", json={"user": {"id": f"w{i}", "segment": "office"}, "context": {"hour": 9}})
                ids.append(d.json()["event_id"])
                tokens.add(ids[-1].rpartition("-")[0])
            if (len(tokens) == 2 and i >= 20) or time.monotonic() > deadline:
                break
            if i >= 20:
                time.sleep(0.1)
        assert len(tokens) == 2, "every connection went to one worker"
        for eid in ids:  # feedback on fresh connections too: often the other worker, which forwards it
            with httpx.Client(base_url=base, headers=AUTH, timeout=10) as c:
                assert c.post("/v1/feedback", json={"decision_id": eid, "click": True}).status_code == 200
        with httpx.Client(base_url=base, headers=AUTH, timeout=10) as c:
            r = c.post("/v1/feedback", json=[{"decision_id": eid, "conversion": True} for eid in ids])
            assert r.status_code == 200 and [x["decision_id"] for x in r.json()] == ids
            assert c.post("/v1/feedback", json={"decision_id": f"{min(tokens)}-999999"}).status_code == 404
            exp = c.get("/v1/experiment").json()
            assert exp["workers"] == 2 and sum(a["decisions"] for a in exp["arms"]) == len(ids)
            swap = c.post("/v1/admin/experiment", json={"split": [30, 70]}).json()
            assert swap["workers"] == 2 and not swap["worker_errors"]
            assert c.get("/v1/experiment").json()["split"] == [30.0, 70.0]
            time.sleep(1.2)  # each worker adds its counts to the shared metrics files once a second
            text = c.get("/metrics").text
        total = sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith("adrl_decisions_total{"))
        assert total == len(ids)  # one scrape covers both workers (prometheus multiprocess mode)
    finally:
        stop(proc)
    assert sorted(p.name for p in log.iterdir()) == ["worker-0", "worker-1"]
    # open windows are joined after a restart; here the one-worker recovery of each worker's directory does it
    from adrl.policy import load_policy
    from adrl.serving.decision_log import DecisionLog

    for k in (0, 1):
        p = load_policy(policies["greedy"])
        recovered = DecisionLog(p.scenario, log_dir=log / f"worker-{k}", key=KEY.encode(), policy_version="r",
                                feedback_window=0.01, flush_interval=0.05, experiment=True)  # fmt: skip
        recovered.start()
        time.sleep(0.05)
        recovered.close()
    df = read_logs(log)  # the reader merges both workers' parts
    assert set(df["event_id"]) == set(ids) and df["click"].all() and df["conversion"].all()
    from adrl.experiment import report

    out = report(log, ope=False)  # one readout over both workers' logs
    assert out["versions"] == 2 and sum(out["users"].values()) == len(ids)
