"""``/healthz`` latency of ``adrl serve`` while the largest allowed requests are being refused; prints one JSON object.

For each kind of hostile body at the size limit (``--max-body-mb``, 8 MiB as ``adrl serve`` defaults to), client
threads post it over and over on 127.0.0.1 while a prober asks ``/healthz`` every 20 ms; the report gives the
probe latencies (p50, p99, max), the refusals' status codes, latency and reply sizes. Goal (issue 17): ``/healthz``
within 50 ms (max) while the largest allowed request is being refused, and error replies of a few KB.

Usage: .venv/bin/python benchmarks/serve_hardening.py [--seconds 6] [--clients 2] [--max-body-mb 8]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from adrl.agents.baselines import GreedyPolicy
from adrl.scenario import Scenario

REQ = {"episode_id": "s-1", "user": {"id": "alice", "segment": "office"}, "context": {"hour": 12}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bodies(limit: int) -> dict[str, bytes]:
    """Hostile bodies just under ``limit`` bytes."""

    def fill(head: bytes, item: bytes, tail: bytes) -> bytes:
        n = (limit - len(head) - len(tail)) // (len(item) + 1)
        return head + b",".join([item] * n) + tail

    bad = json.dumps({**REQ, "context": {"hour": 99}}).encode()
    long_ids = json.dumps({**REQ, "user": {"id": "u" * 256, "segment": "office"}, "episode_id": "e" * 256})
    n_valid = min(9_999, (limit - 200) // (len(long_ids) + 1))
    return {
        "valid_but_the_last": ("[" + ",".join([long_ids] * n_valid) + "," + bad.decode() + "]").encode(),
        "list_of_empty_objects": fill(b"[", b"{}", b"]"),
        "list_of_invalid_requests": fill(b"[", bad, b"]"),
        "one_request_of_bad_signals": fill(b'{"user": {"segment": 0, "signals": {', b'"k": 1e9', b'}}, "context": {}}'),
        "unknown_fields": fill(b"{", b'"x": 1', b"}"),
        "unterminated": fill(b"[", b'{"a": [1, 2]}', b""),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=6.0, help="per kind of body")
    ap.add_argument("--clients", type=int, default=2, help="threads posting the body")
    ap.add_argument("--max-body-mb", type=float, default=8.0)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="adrl-hardening-"))
    GreedyPolicy(Scenario()).save(tmp / "policy")
    port = free_port()
    cmd = [sys.executable, "-m", "adrl.cli", "serve", "--policy", str(tmp / "policy"), "--port", str(port),
           "--max-body-mb", str(args.max_body_mb)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, env={**os.environ})
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(f"{base}/healthz", timeout=1).read()
                break
            except OSError:
                time.sleep(0.1)
        limit = int(args.max_body_mb * (1 << 20))
        results: dict[str, Any] = {}
        for name, body in bodies(limit - 64).items():
            results[name] = run(port, base, body, seconds=args.seconds, clients=args.clients)
        worst = max(r["healthz_ms"]["max"] for r in results.values())
        print(json.dumps({"max_body_bytes": limit, "clients": args.clients, "seconds": args.seconds,
                          "healthz_max_ms_over_all": worst, "goal_healthz_max_ms": 50, "met": worst < 50,
                          "bodies": results}, indent=2))  # fmt: skip
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def run(port: int, base: str, body: bytes, *, seconds: float, clients: int) -> dict[str, Any]:
    stop = threading.Event()
    refusals: list[tuple[int, float, int]] = []
    lock = threading.Lock()

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while not stop.is_set():
            t = time.perf_counter()
            conn.request("POST", "/v1/decisions", body=body, headers={"content-type": "application/json"})
            resp = conn.getresponse()
            data = resp.read()
            with lock:
                refusals.append((resp.status, time.perf_counter() - t, len(data)))

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for th in threads:
        th.start()
    time.sleep(0.5)  # the refusals are under way
    probes = []
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t = time.perf_counter()
        conn.request("GET", "/healthz")
        conn.getresponse().read()
        probes.append(time.perf_counter() - t)
        time.sleep(0.02)
    stop.set()
    for th in threads:
        th.join(timeout=120)
    ms = np.array(probes) * 1000
    statuses = sorted({s for s, _, _ in refusals})
    return {
        "body_bytes": len(body),
        "healthz_probes": len(probes),
        "healthz_ms": {
            "p50": round(float(np.median(ms)), 2),
            "p99": round(float(np.percentile(ms, 99)), 2),
            "max": round(float(ms.max()), 2),
        },
        "refusals": len(refusals),
        "refusal_statuses": statuses,
        "refusal_s_mean": round(float(np.mean([d for _, d, _ in refusals])), 3) if refusals else None,
        "reply_bytes_max": max((n for _, _, n in refusals), default=0),
    }


if __name__ == "__main__":
    main()
