"""Server metrics in the Prometheus text exposition format (version 0.0.4), without a client library.

Counters and histograms are plain Python ints and lists updated on the event loop thread (or under the GIL from
the in-process service), which keeps the per-request cost to a dictionary update and one ``bisect``.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Callable

import numpy as np

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metrics:
    """Requests by route and status, latency histograms by route, decisions by action, errors by reason."""

    def __init__(self, action_labels: list[tuple[str, str, str]]) -> None:
        self.requests: defaultdict[tuple[str, str, int], int] = defaultdict(int)
        self.latency_counts: dict[str, list[int]] = {}
        self.latency_sum: defaultdict[str, float] = defaultdict(float)
        self.errors: defaultdict[tuple[str, str], int] = defaultdict(int)
        self.feedback: defaultdict[str, int] = defaultdict(int)
        self.action_labels = action_labels
        self.decisions = np.zeros(len(action_labels), dtype=np.int64)
        self.gauges: dict[str, tuple[str, Callable[[], float]]] = {}

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests[(route, method, status)] += 1
        counts = self.latency_counts.get(route)
        if counts is None:
            counts = self.latency_counts[route] = [0] * (len(LATENCY_BUCKETS) + 1)
        counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.latency_sum[route] += seconds

    def count_decisions(self, flat_actions: np.ndarray) -> None:
        if flat_actions.size == 1:
            self.decisions[int(flat_actions[0])] += 1
        else:
            self.decisions += np.bincount(flat_actions, minlength=self.decisions.size)

    def count_error(self, route: str, reason: str) -> None:
        self.errors[(route, reason)] += 1

    def gauge(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        self.gauges[name] = (help_text, read)

    def render(self) -> str:
        out: list[str] = []
        out += [
            "# HELP adrl_http_requests_total HTTP requests by route, method and status code.",
            "# TYPE adrl_http_requests_total counter",
        ]
        for (route, method, status), n in sorted(self.requests.items()):
            out.append(f'adrl_http_requests_total{{route="{_label(route)}",method="{method}",code="{status}"}} {n}')
        out += [
            "# HELP adrl_http_request_duration_seconds Time from request start to response end, by route.",
            "# TYPE adrl_http_request_duration_seconds histogram",
        ]
        for route, counts in sorted(self.latency_counts.items()):
            r = _label(route)
            cum = 0
            for le, c in zip(LATENCY_BUCKETS, counts, strict=False):
                cum += c
                out.append(f'adrl_http_request_duration_seconds_bucket{{route="{r}",le="{le:g}"}} {cum}')
            cum += counts[-1]
            out.append(f'adrl_http_request_duration_seconds_bucket{{route="{r}",le="+Inf"}} {cum}')
            out.append(f'adrl_http_request_duration_seconds_sum{{route="{r}"}} {self.latency_sum[route]:.6f}')
            out.append(f'adrl_http_request_duration_seconds_count{{route="{r}"}} {cum}')
        out += [
            "# HELP adrl_decisions_total Decisions served, by action (delay hours, slot, creative).",
            "# TYPE adrl_decisions_total counter",
        ]
        for (delay, slot, creative), n in zip(self.action_labels, self.decisions.tolist(), strict=True):
            if n:
                out.append(
                    f'adrl_decisions_total{{delay_hours="{delay}",slot="{_label(slot)}",'
                    f'creative="{_label(creative)}"}} {n}'
                )
        out += [
            "# HELP adrl_errors_total Rejected or failed requests, by route and reason.",
            "# TYPE adrl_errors_total counter",
        ]
        for (route, reason), n in sorted(self.errors.items()):
            out.append(f'adrl_errors_total{{route="{_label(route)}",reason="{_label(reason)}"}} {n}')
        out += [
            "# HELP adrl_feedback_total Feedback events accepted, by outcome.",
            "# TYPE adrl_feedback_total counter",
        ]
        for outcome, n in sorted(self.feedback.items()):
            out.append(f'adrl_feedback_total{{outcome="{outcome}"}} {n}')
        for name, (help_text, read) in sorted(self.gauges.items()):
            out += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name} {float(read()):g}"]
        return "\n".join(out) + "\n"
