"""``adrl serve --workers N``: N worker processes on one listening socket, and what makes them one server.

The supervisor binds the socket and starts N workers (``python -m adrl.serving.workers``) that inherit it; the kernel
spreads connections over them. Worker ``k`` logs to ``--log-dir DIR/worker-k`` (its own log token, journal
segments and parquet parts, recovered by the same worker index after a restart), and ``adrl ope`` / ``adrl
experiment report --logs DIR`` read every worker's parts at once (the log reader takes all parquet files under DIR).

Decisions never leave their worker. Feedback names its decision's log token (``<token>-<seq>``), so a worker that
receives feedback for another worker's decision forwards it to that worker over a private unix socket
(``<run dir>/<token>.sock``, newline-delimited JSON) and answers with that worker's reply: validation, windows and
joins stay exact. A hot swap is applied by the worker that received it, then by every other worker; ``GET
/v1/experiment`` sums the arms' decisions over all workers. Metrics use prometheus-client's multiprocess mode
(``PROMETHEUS_MULTIPROC_DIR`` in the run dir), so ``/metrics`` on any worker covers all of them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from adrl.errors import ConfigError
from adrl.serving.peers import Peers

CONFIG_ENV = "ADRL_WORKER_CONFIG"


# ---- supervisor -----------------------------------------------------------------------------------------------
def run_workers(
    n: int, *, host: str, port: int, config: dict[str, Any], log_dir: Path | None, grace: float = 15.0
) -> int:
    """Start ``n`` workers on one socket and supervise them until SIGINT/SIGTERM; a worker that dies is restarted."""
    if log_dir is not None and (log_dir / "log.json").exists():
        raise ConfigError(
            f"--log-dir {log_dir} holds a one-worker log; several workers log to DIR/worker-<k>, so use a new "
            "directory (or serve it with --workers 1)"
        )
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    run_dir = Path(tempfile.mkdtemp(prefix="adrl-serve-"))  # short: unix socket paths are limited to ~100 bytes
    prom = run_dir / "prometheus"
    prom.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(prom)}
    procs: dict[int, subprocess.Popen[bytes]] = {}

    def start(k: int) -> None:
        cfg = {**config, "index": k, "fd": sock.fileno(), "run_dir": str(run_dir),
               "log_dir": None if log_dir is None else str(log_dir / f"worker-{k}")}  # fmt: skip
        procs[k] = subprocess.Popen([sys.executable, "-m", "adrl.serving.workers"], env={**env, CONFIG_ENV:
                                    json.dumps(cfg)}, pass_fds=(sock.fileno(),))  # fmt: skip

    stopping = False

    def on_signal(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for k in range(n):
            start(k)
        restarts = 0
        while not stopping:
            time.sleep(0.2)
            for k, p in list(procs.items()):
                if p.poll() is not None and not stopping:
                    from adrl.serving.metrics import worker_exited

                    worker_exited(p.pid)
                    restarts += 1
                    if restarts > 10 * n:
                        raise ConfigError(f"workers keep exiting (worker {k}: code {p.returncode}); see their output")
                    start(k)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        end = time.monotonic() + grace
        for p in procs.values():
            try:
                p.wait(timeout=max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for s, h in old.items():
            signal.signal(s, h)
        sock.close()
        shutil.rmtree(run_dir, ignore_errors=True)
    return 0


# ---- worker ------------------------------------------------------------------------------------------------
def worker_main(cfg: dict[str, Any]) -> None:
    import gc

    import numpy as np
    import uvicorn

    from adrl.serving.app import create_app, uvicorn_options
    from adrl.serving.experiment import spec_from_mapping
    from adrl.serving.service import PolicyService, ServeConfig

    k = int(cfg["index"])
    seed = cfg.get("seed")
    experiment = cfg.get("experiment")
    serve_cfg = ServeConfig(
        policy=Path(cfg["policy"]),
        log_dir=None if cfg["log_dir"] is None else Path(cfg["log_dir"]),
        exploration=cfg["exploration"],
        seed=None if seed is None else int(np.random.SeedSequence([int(seed), k]).generate_state(1)[0]),
        feedback_window=cfg["feedback_window"],
        default_reward=cfg["default_reward"],
        log_key_env=cfg["log_key_env"],
        ephemeral_log_key=cfg["ephemeral_log_key"],
        rotate_mb=cfg["rotate_mb"],
        fsync_interval=cfg["fsync_interval"],
        flush_interval=cfg["flush_interval"],
        experiment=None if experiment is None else spec_from_mapping(experiment, "experiment"),
    )
    if serve_cfg.ephemeral_log_key and not os.environ.get(serve_cfg.log_key_env):
        raise ConfigError("several workers need one hashing key: set the key variable instead of --ephemeral-log-key")
    service = PolicyService.from_config(serve_cfg)
    service.start()
    peers = Peers(Path(cfg["run_dir"]), service.log.token)
    api_key = os.environ.get(cfg["api_key_env"]) if cfg.get("api_key_env") else None
    app = create_app(service, api_key=api_key, max_body_bytes=int(cfg["max_body_bytes"]), peers=peers)
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    options = {**uvicorn_options(), "workers": 1}
    # the inherited socket as what it is (TCP): uvicorn's own fd= option takes it for a unix socket, and asyncio then
    # leaves Nagle's algorithm on for every connection (40 ms stalls per response)
    sock = socket.socket(fileno=int(cfg["fd"]))
    server = uvicorn.Server(uvicorn.Config(app, timeout_graceful_shutdown=10, **options))
    server.run(sockets=[sock])


def spec_to_mapping(spec: Any) -> dict[str, Any] | None:
    """An :class:`ExperimentSpec` as the mapping ``spec_from_mapping`` reads (for the workers' config)."""
    if spec is None:
        return None
    out: dict[str, Any] = {
        "name": spec.name,
        "arms": [{"name": a.name, "policy": str(Path(a.policy).resolve()), "exploration": a.exploration}
                 for a in spec.arms],
        "split": list(spec.split),
    }  # fmt: skip
    if spec.salt is not None:
        out["salt"] = spec.salt.decode()
    return out


def split_tokens(ids: Sequence[str]) -> list[str]:
    return [i.rpartition("-")[0] for i in ids]


if __name__ == "__main__":
    worker_main(json.loads(os.environ[CONFIG_ENV]))
