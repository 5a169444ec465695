"""Durability of ``adrl serve``'s log under SIGKILL; prints one JSON object.

Starts ``adrl serve`` on 127.0.0.1 with a durable log, loads it with client threads (lists of decisions per
request, plus feedback), SIGKILLs it mid-load, and does that ``--kills`` times on the same ``--log-dir``. Then it
checks that every acknowledged decision (a 200 the client read) is in the journal, that no journal line is corrupt
(a torn last line per kill is expected and skipped), and that a restart joins every acknowledged decision into the
parquet log exactly once.

Usage: .venv/bin/python benchmarks/serve_durability.py [--kills 3] [--seconds 4] [--clients 4] [--batch 20]
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

from adrl.agents.baselines import GreedyPolicy
from adrl.logs import read_logs
from adrl.policy import load_policy
from adrl.scenario import Scenario
from adrl.serving.decision_log import DecisionLog
from adrl.serving.journal import ReadStats, read_records, segments

KEY = "durability-benchmark-key-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(policy: Path, log_dir: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    cmd = [sys.executable, "-m", "adrl.cli", "serve", "--policy", str(policy), "--port", str(port),
           "--log-dir", str(log_dir), "--feedback-window", "30", "--exploration", "epsilon:0.1",
           "--seed", "0"]  # fmt: skip
    proc = subprocess.Popen(cmd, env={**os.environ, "ADRL_LOG_KEY": KEY}, stdout=subprocess.DEVNULL)
    end = time.monotonic() + 60
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise SystemExit(f"adrl serve exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                return proc, port
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("adrl serve did not become healthy within 60 s")


def load_and_kill(port: int, proc: subprocess.Popen[bytes], *, seconds: float, clients: int, batch: int) -> list[str]:
    """Acknowledged event ids of a load run that ends with SIGKILL after ``seconds``."""
    acked: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client(i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        reqs = [{"episode_id": f"c{i}-{j}", "user": {"id": f"u{i}-{j}", "segment": j % 3}, "context": {"hour": j % 24}}
                for j in range(batch)]  # fmt: skip
        body = json.dumps(reqs).encode()
        headers = {"content-type": "application/json"}
        n = 0
        while not stop.is_set():
            try:
                conn.request("POST", "/v1/decisions", body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                if resp.status != 200:
                    raise SystemExit(f"unexpected {resp.status}: {data[:200]!r}")
                ids = [d["event_id"] for d in json.loads(data)]
                n += 1
                if n % 5 == 0:  # some feedback too, so the journal mixes both kinds of line
                    fb = json.dumps({"decision_id": ids[0], "click": True}).encode()
                    conn.request("POST", "/v1/feedback", body=fb, headers=headers)
                    conn.getresponse().read()
            except (OSError, http.client.HTTPException):
                return  # the server died: what was in flight was never acknowledged
            with lock:
                acked.extend(ids)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    time.sleep(seconds)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    stop.set()
    for t in threads:
        t.join(timeout=10)
    return acked


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=4.0, help="load before each SIGKILL")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--batch", type=int, default=20, help="decisions per request")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="adrl-durability-"))
    GreedyPolicy(Scenario()).save(tmp / "policy")
    log_dir = tmp / "log"
    acked: list[str] = []
    rounds: list[dict[str, Any]] = []
    for _ in range(args.kills):
        proc, port = start(tmp / "policy", log_dir)
        got = load_and_kill(port, proc, seconds=args.seconds, clients=args.clients, batch=args.batch)
        acked += got
        rounds.append({"acknowledged": len(got)})
    stats = ReadStats()
    records = list(read_records([p for _, p in segments(log_dir / "journal")], stats))
    journaled = {r["id"] for r in records if r.get("t") == "d"}
    lost_in_journal = len(set(acked) - journaled)
    # a restart recovers the journal and, once the windows close, joins each decision exactly once
    policy = load_policy(tmp / "policy")
    log = DecisionLog(policy.scenario, log_dir=log_dir, key=KEY.encode(), policy_version="restart",
                      feedback_window=0.01, flush_interval=0.05)  # fmt: skip
    log.start()
    time.sleep(0.1)
    log.close()
    df = read_logs(log_dir)
    joined = set(df["event_id"])
    result = {
        "kills": args.kills,
        "rounds": rounds,
        "acknowledged_decisions": len(acked),
        "journaled_decisions": len(journaled),
        "lost_acknowledged_in_journal": lost_in_journal,
        "lost_acknowledged_after_restart": len(set(acked) - joined),
        "corrupt_journal_lines": stats.corrupt,
        "torn_journal_lines": stats.torn,
        "joined_rows": len(df),
        "joined_rows_unique": bool(df["event_id"].is_unique),
        "recovered_corrupt_at_restart": log.stats.recovered_corrupt,
    }
    print(json.dumps(result, indent=2))
    ok = lost_in_journal == 0 and result["lost_acknowledged_after_restart"] == 0 and stats.corrupt == 0
    sys.exit(0 if ok and result["joined_rows_unique"] else 1)


if __name__ == "__main__":
    main()
