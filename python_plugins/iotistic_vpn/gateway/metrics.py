"""What the gateway agent exports: Prometheus metrics and the /healthz document.

Metrics use prometheus_client (Debian's python3-prometheus-client on the gateways) in a
registry of their own, so nothing else in the process leaks into /metrics. Refusals are counted
by their fixed code (authorize.DENY_CODES), never by their text, which names the device.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .authorize import DENY_CODES

__all__ = ["CONTENT_TYPE_LATEST", "Metrics", "health_problems"]


class Metrics:
    """Every series the agent exports, in one registry."""

    def __init__(self, instances: list[str]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.connected = Gauge(
            "iotistic_gateway_connected_devices",
            "Devices with an established tunnel, per OpenVPN instance.",
            ["instance"], registry=r,
        )  # fmt: skip
        self.management_up = Gauge(
            "iotistic_gateway_management_up",
            "1 while the agent holds the instance's management socket.",
            ["instance"], registry=r,
        )  # fmt: skip
        self.holds_released = Counter(
            "iotistic_gateway_holds_released",
            "Times the agent let a held instance start (management-hold: at start, on restarts).",
            ["instance"], registry=r,
        )  # fmt: skip
        for name in instances:
            self.connected.labels(name).set(0)
            self.management_up.labels(name).set(0)
            self.holds_released.labels(name)
        self.accepted = Counter(
            "iotistic_gateway_connects_accepted",
            "Connects and re-authentications the agent accepted.",
            registry=r,
        )
        self.denied = Counter(
            "iotistic_gateway_connects_denied",
            "Connects and re-authentications the agent refused, by reason.",
            ["reason"], registry=r,
        )  # fmt: skip
        for code in DENY_CODES:
            self.denied.labels(code)
        self.killed = Counter(
            "iotistic_gateway_sessions_killed",
            "Live sessions ended because their device is no longer admitted, by reason.",
            ["reason"], registry=r,
        )  # fmt: skip
        self.spool_depth = Gauge(
            "iotistic_gateway_spool_depth",
            "Connect/disconnect events waiting to reach the registry.",
            registry=r,
        )
        self.snapshot_age = Gauge(
            "iotistic_gateway_snapshot_age_seconds",
            "Age of the registry snapshot connects are decided on.",
            registry=r,
        )
        self.snapshot_devices = Gauge(
            "iotistic_gateway_snapshot_devices",
            "Devices in the registry snapshot.",
            registry=r,
        )
        self.snapshot_reads = Counter(
            "iotistic_gateway_snapshot_reads",
            "Registry reads of the snapshot: the changes since the last (changes) or all (full).",
            ["kind"], registry=r,
        )  # fmt: skip
        self.change_feed_listening = Gauge(
            "iotistic_gateway_change_feed_listening",
            "1 while the agent listens for the registry's change notifications.",
            registry=r,
        )
        self.registry_up = Gauge(
            "iotistic_gateway_registry_up",
            "1 if the last registry call succeeded.",
            registry=r,
        )
        self.events_flushed = Counter(
            "iotistic_gateway_events_flushed",
            "Spooled events the registry committed.",
            registry=r,
        )
        self.events_dropped = Counter(
            "iotistic_gateway_events_dropped",
            "Spooled events the registry refused for good (device removed or revoked).",
            registry=r,
        )
        self.revoked_serials = Gauge(
            "iotistic_gateway_revoked_serials",
            "Files in the crl-verify directory.",
            registry=r,
        )
        self.connected_by_customer = Gauge(
            "iotistic_gateway_customer_connected_devices",
            "Devices with an established tunnel, per customer.",
            ["customer"], registry=r,
        )  # fmt: skip
        self.tunnels_open = Gauge(
            "iotistic_gateway_tunnels_open", "Tunnels from the cloud API open now.", registry=r
        )
        self.tunnels_opened = Counter(
            "iotistic_gateway_tunnels_opened", "Tunnels the cloud API opened to devices.",
            registry=r,
        )  # fmt: skip
        self.tunnels_refused = Counter(
            "iotistic_gateway_tunnels_refused", "Tunnel requests refused, by status.",
            ["status"], registry=r,
        )  # fmt: skip
        self.certificate_not_after = Gauge(
            "iotistic_gateway_certificate_not_after_timestamp_seconds",
            "When the gateway's certificate and its CA chain end (earliest of the chain).",
            ["what"], registry=r,
        )  # fmt: skip
        self.crl_next_update = Gauge(
            "iotistic_gateway_crl_next_update_timestamp_seconds",
            "The nextUpdate of the CRL this gateway serves.",
            registry=r,
        )

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)


def health_problems(
    held: dict[str, bool], spool_error: str | None, draining: bool,
    snapshot_age_s: float | None, max_age_s: float, snapshot_refused: str | None = None,
) -> list[str]:  # fmt: skip
    """Why the load balancer should send this gateway no new device now; none: healthy (200).

    held: each instance's management socket held. A gateway is unhealthy while it cannot decide
    (a socket not held), cannot keep what happened (the spool), is leaving (draining), has never
    read the registry, or has not for max_age_s (revocations since are not enforced here), or
    refused the registry's last snapshot as implausible (snapshot_guard: the reason).
    """
    problems = [
        f"instance {name}: management socket not held" for name, ok in held.items() if not ok
    ]
    if spool_error is not None:
        problems.append(spool_error)
    if draining:
        problems.append("draining")
    if snapshot_age_s is None:
        problems.append("no registry snapshot yet")
    elif snapshot_age_s > max_age_s:
        problems.append(f"registry snapshot {snapshot_age_s:.0f} s old (limit {max_age_s:g} s)")
    if snapshot_refused is not None:
        problems.append(f"{snapshot_refused}: keeping the held one")
    return problems
