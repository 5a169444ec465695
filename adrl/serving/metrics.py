"""Server metrics exported with prometheus-client (text exposition 0.0.4), in multiprocess mode under several workers.

One worker: each service has its own registry (several services can live in one process, e.g. in tests). Several
workers (``adrl serve --workers N``): ``PROMETHEUS_MULTIPROC_DIR`` is set before the workers import
prometheus-client, every worker writes its samples to memory-mapped files there, and ``/metrics`` on any worker
collects all of them (``MultiProcessCollector``; gauges summed over live workers).

The hot path stays cheap: request counters and latency histograms are prometheus children cached per label set
(one ``inc`` and one ``observe``); decisions by action are counted in a numpy array and added to their counters on
every scrape and, under several workers, once a second (so another worker's scrape sees them).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

disable_created_metrics()  # no *_created series: they double the exposition and nobody here reads them

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def multiprocess() -> bool:
    return bool(os.environ.get(MULTIPROC_ENV))


def worker_exited(pid: int) -> None:
    """Drop a dead worker's live gauges (the supervisor calls it)."""
    if multiprocess():
        mark_process_dead(pid)


class Metrics:
    """Requests by route and status, latency histograms by route, decisions by action, errors by reason, feedback
    by outcome, decisions by experiment arm, and the log's gauges."""

    def __init__(self, action_labels: list[tuple[str, str, str]]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.multiprocess = multiprocess()
        reg = self.registry
        self._requests = Counter(
            "adrl_http_requests", "HTTP requests by route, method and status code.", ["route", "method", "code"],
            registry=reg,
        )  # fmt: skip
        self._latency = Histogram(
            "adrl_http_request_duration_seconds", "Time from request start to response end, by route.", ["route"],
            buckets=LATENCY_BUCKETS, registry=reg,
        )  # fmt: skip
        self._decisions = Counter(
            "adrl_decisions", "Decisions served, by action (delay hours, slot, creative).",
            ["delay_hours", "slot", "creative"], registry=reg,
        )  # fmt: skip
        self._errors = Counter(
            "adrl_errors", "Rejected or failed requests, by route and reason.", ["route", "reason"], registry=reg
        )
        self._feedback = Counter("adrl_feedback", "Feedback events accepted, by outcome.", ["outcome"], registry=reg)
        self._arms = Counter("adrl_experiment_decisions", "Decisions served, by experiment arm.", ["arm"], registry=reg)
        self.action_labels = action_labels
        self.decisions = np.zeros(len(action_labels), dtype=np.int64)  # counted here, added to the counter lazily
        self._flushed = np.zeros(len(action_labels), dtype=np.int64)
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self.gauges: dict[str, tuple[Gauge, Callable[[], float]]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        pair = self._children.get(key)
        if pair is None:
            pair = self._children[key] = (
                self._requests.labels(route, method, str(status)),
                self._latency.labels(route),
            )
        pair[0].inc()
        pair[1].observe(seconds)

    def count_decisions(self, flat_actions: np.ndarray) -> None:
        if flat_actions.size == 1:
            self.decisions[int(flat_actions[0])] += 1
        else:
            self.decisions += np.bincount(flat_actions, minlength=self.decisions.size)

    def count_arm(self, arm: str, n: int) -> None:
        self._arms.labels(arm).inc(n)

    def count_error(self, route: str, reason: str) -> None:
        self._errors.labels(route, reason).inc()

    def count_feedback(self, outcome: str) -> None:
        self._feedback.labels(outcome).inc()

    def gauge(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        g = Gauge(name, help_text, registry=self.registry, multiprocess_mode="livesum")
        self.gauges[name] = (g, read)

    def refresh(self) -> None:
        """Add the decisions counted since the last refresh to their counters and read the gauges."""
        with self._lock:
            delta = self.decisions - self._flushed
            self._flushed += delta
            for j in np.flatnonzero(delta).tolist():
                self._decisions.labels(*self.action_labels[j]).inc(int(delta[j]))
            for g, read in self.gauges.values():
                g.set(float(read()))

    def start(self) -> None:
        """Under several workers, refresh once a second so other workers' scrapes see this one's numbers."""
        if self.multiprocess and self._ticker is None:
            self._ticker = threading.Thread(target=self._tick, name="adrl-metrics", daemon=True)
            self._ticker.start()

    def stop(self) -> None:
        self._stop.set()
        self.refresh()

    def _tick(self) -> None:
        while not self._stop.wait(1.0):
            self.refresh()

    def render(self) -> str:
        self.refresh()
        if self.multiprocess:
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
            return generate_latest(registry).decode()
        return generate_latest(self.registry).decode()
