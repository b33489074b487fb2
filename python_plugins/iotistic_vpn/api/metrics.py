"""What the API exports for Prometheus, in a registry of its own (served on its own port)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["ApiMetrics"]

# Latency buckets around what the proxy path costs: a few hundred microseconds to seconds.
# Methods counted by name; anything else a client sends is "other" (labels stay bounded).
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT"})
_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class ApiMetrics:
    def __init__(self, audit_backlog: Callable[[], int]) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter(
            "iotistic_api_requests", "Requests by route template, method and status.",
            ["route", "method", "status"], registry=r,
        )  # fmt: skip
        self.latency = Histogram(
            "iotistic_api_request_duration_seconds", "Time to the last byte, by route.",
            ["route"], buckets=_BUCKETS, registry=r,
        )  # fmt: skip
        self.bytes = Counter(
            "iotistic_api_bytes", "Body bytes, in (from clients) and out (to clients).",
            ["direction"], registry=r,
        )  # fmt: skip
        self.open_streams = Gauge(
            "iotistic_api_open_streams", "Device answers being streamed now.", registry=r
        )
        self.audit_backlog = Gauge(
            "iotistic_api_audit_spool_depth",
            "Audit records not yet in the registry (memory and spool).",
            registry=r,
        )
        self.audit_backlog.set_function(audit_backlog)
        # The labelled children per (route, method, status): .labels() costs more than .inc().
        self._children: dict[tuple[str, str, int], tuple] = {}
        self._bytes_in, self._bytes_out = self.bytes.labels("in"), self.bytes.labels("out")

    def observe(self, route: str, method: str, status: int, seconds: float, bytes_in: int,
                bytes_out: int) -> None:  # fmt: skip
        key = (route, method if method in _METHODS else "other", status)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (
                self.requests.labels(route, key[1], str(status)),
                self.latency.labels(route),
            )
        children[0].inc()
        children[1].observe(seconds)
        self._bytes_in.inc(bytes_in)
        self._bytes_out.inc(bytes_out)
