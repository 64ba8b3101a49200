"""``/metrics``: request counts, a latency histogram and queue depth in Prometheus' text format (0.0.4).

Written by hand (about fifty lines) rather than with ``prometheus_client``: the server needs three
metric kinds, one process and no registry, and one dependency fewer is one thing less to audit next
to patient data. Labels are route templates and status codes only, never a raw path or a query string,
so nothing a client sends (a patient's name in a file name, a report text) can reach the exposition.
"""

from __future__ import annotations

import bisect
import threading
from collections import defaultdict
from collections.abc import Callable

#: Latency histogram bucket upper bounds in seconds (Prometheus' defaults, extended to a minute).
LATENCY_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: Batch-size histogram bucket upper bounds (images per forward pass).
BATCH_BUCKETS: tuple[float, ...] = (1, 2, 4, 8, 16, 32, 64)


def _labels(pairs: tuple[tuple[str, str], ...]) -> str:
    if not pairs:
        return ""
    body = ",".join(f'{k}="{v.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"' for k, v in pairs)
    return "{" + body + "}"


class Histogram:
    """Cumulative-bucket histogram keyed by a label tuple."""

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts: dict[tuple[tuple[str, str], ...], list[int]] = defaultdict(lambda: [0] * (len(buckets) + 1))
        self.sums: dict[tuple[tuple[str, str], ...], float] = defaultdict(float)

    def observe(self, labels: tuple[tuple[str, str], ...], value: float) -> None:
        self.counts[labels][bisect.bisect_left(self.buckets, value)] += 1
        self.sums[labels] += value

    def lines(self, name: str) -> list[str]:
        out = []
        for labels in sorted(self.counts):
            running = 0
            for bound, n in zip((*self.buckets, float("inf")), self.counts[labels]):
                running += n
                le = "+Inf" if bound == float("inf") else f"{bound:g}"
                out.append(f"{name}_bucket{_labels((*labels, ('le', le)))} {running}")
            out.append(f"{name}_sum{_labels(labels)} {self.sums[labels]:.6f}")
            out.append(f"{name}_count{_labels(labels)} {running}")
        return out


class Metrics:
    """The server's metrics; thread-safe (requests finish on the event loop, batches on the model thread).

    Args:
        gauges: name -> (help, callable read at scrape time), e.g. the queue depth.
    """

    def __init__(self, gauges: dict[str, tuple[str, Callable[[], float]]] | None = None) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[tuple[str, str], ...], int] = defaultdict(int)
        self.latency = Histogram(LATENCY_BUCKETS)
        self.batch_size = Histogram(BATCH_BUCKETS)
        self.gauges = dict(gauges or {})

    def observe_request(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(("endpoint", endpoint), ("method", method), ("status", str(status)))] += 1
            self.latency.observe((("endpoint", endpoint),), seconds)

    def observe_batch(self, size: int) -> None:
        with self._lock:
            self.batch_size.observe((), float(size))

    def count(self, endpoint: str, status: int) -> int:
        """Requests answered so far on ``endpoint`` with ``status`` (any method)."""
        with self._lock:
            return sum(n for k, n in self.requests.items() if dict(k)["endpoint"] == endpoint
                       and dict(k)["status"] == str(status))

    def render(self) -> str:
        """The exposition text."""
        with self._lock:
            lines = ["# HELP mammoclip_requests_total HTTP requests answered, by route template and status.",
                     "# TYPE mammoclip_requests_total counter"]
            lines += [f"mammoclip_requests_total{_labels(k)} {n}" for k, n in sorted(self.requests.items())]
            lines += ["# HELP mammoclip_request_duration_seconds Time from request start to response.",
                      "# TYPE mammoclip_request_duration_seconds histogram"]
            lines += self.latency.lines("mammoclip_request_duration_seconds")
            lines += ["# HELP mammoclip_batch_size Images per model forward pass.",
                      "# TYPE mammoclip_batch_size histogram"]
            lines += self.batch_size.lines("mammoclip_batch_size")
        for name, (text, read) in sorted(self.gauges.items()):
            lines += [f"# HELP {name} {text}", f"# TYPE {name} gauge", f"{name} {float(read()):g}"]
        return "\n".join(lines) + "\n"
