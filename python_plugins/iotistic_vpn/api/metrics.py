"""What the API exports for Prometheus, in a registry of its own (served on its own port)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["ApiMetrics"]

# Latency buckets around what the proxy path costs: a few hundred microseconds to seconds.
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

    def observe(self, route: str, method: str, status: int, seconds: float, bytes_in: int,
                bytes_out: int) -> None:  # fmt: skip
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route).observe(seconds)
        self.bytes.labels("in").inc(bytes_in)
        self.bytes.labels("out").inc(bytes_out)
