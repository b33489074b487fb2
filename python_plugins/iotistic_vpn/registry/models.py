"""The registry's rows as frozen dataclasses, and the gateways' snapshot of it."""

from __future__ import annotations

import fnmatch
from dataclasses import asdict, dataclass, field
from datetime import datetime
from decimal import Decimal
from ipaddress import IPv4Address
from typing import Any


@dataclass(frozen=True)
class Customer:
    id: str
    name: str
    block: str
    created_at: datetime

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (timestamps as ISO 8601)."""
        return _jsonable(asdict(self))


@dataclass(frozen=True)
class Device:
    id: str
    customer_id: str
    state: str
    vpn_address: str
    connected: bool
    gateway: str | None
    last_seen: datetime | None
    created_at: datetime
    updated_at: datetime

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (timestamps as ISO 8601)."""
        return _jsonable(asdict(self))


@dataclass(frozen=True)
class DeviceStatus:
    """A device as its owner sees it: the row, plus when its current certificate ends."""

    device: Device
    certificate_expires: datetime | None  # the latest current certificate's not_after

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (timestamps as ISO 8601)."""
        return {
            **self.device.as_dict(),
            **_jsonable({"certificate_expires": self.certificate_expires}),
        }


@dataclass(frozen=True)
class Certificate:
    serial: int
    device_id: str
    fingerprint: str
    not_before: datetime
    not_after: datetime
    revoked_at: datetime | None = None
    revocation_reason: str | None = None

    def __post_init__(self) -> None:
        # PostgreSQL numeric arrives as Decimal; serials are integers everywhere else.
        if isinstance(self.serial, Decimal):
            object.__setattr__(self, "serial", int(self.serial))

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (serial as a decimal string: it may exceed 2**63)."""
        return _jsonable({**asdict(self), "serial": str(self.serial)})


@dataclass(frozen=True)
class EnrollmentTarget:
    """A device id as enrollment finds it: the device (None: not registered) and, when it is
    the enrolling customer's, its current certificate with the PEM the registry keeps of it
    (None: recorded without one, as the Ansible modules do)."""

    device: Device | None
    certificate: Certificate | None = None
    pem: str | None = field(default=None, repr=False)


READ_METHODS = frozenset({"GET", "HEAD"})


@dataclass(frozen=True)
class ApiToken:
    """An API token's scope (never its secret): whose devices, which ports, which methods."""

    id: str
    name: str
    customer_id: str | None  # None: an operator token, every customer
    devices: tuple[str, ...] | None  # None: every device of the customer
    ports: tuple[int, ...]
    read_only: bool
    expires_at: datetime | None
    created_at: datetime
    revoked_at: datetime | None = None

    def __post_init__(self) -> None:
        # PostgreSQL arrays arrive as lists; keep the dataclass hashable and immutable.
        if isinstance(self.devices, list):
            object.__setattr__(self, "devices", tuple(self.devices))
        if isinstance(self.ports, list):
            object.__setattr__(self, "ports", tuple(self.ports))

    @property
    def operator(self) -> bool:
        return self.customer_id is None

    def live(self, now: datetime) -> bool:
        """Neither revoked nor expired at now."""
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)

    def may_reach(self, customer_id: str, device_id: str) -> bool:
        """Whether this token's scope covers that device of that customer."""
        if self.operator:
            return True
        return customer_id == self.customer_id and (
            self.devices is None or device_id in self.devices
        )

    def may(self, method: str, port: int) -> bool:
        """Whether a request with this method to this device port is allowed."""
        return port in self.ports and (not self.read_only or method.upper() in READ_METHODS)

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (timestamps as ISO 8601); the secret is never held here."""
        return _jsonable({**asdict(self), "devices": self.devices and list(self.devices),
                          "ports": list(self.ports), "operator": self.operator})  # fmt: skip


@dataclass(frozen=True)
class ProvisioningToken:
    """A provisioning token's scope and count (never its secret): what a device enrolls with."""

    id: str
    customer_id: str
    name: str
    expires_at: datetime
    max_uses: int
    uses: int
    device_pattern: str | None  # a glob of device-id characters with * and ?; None: any id
    created_at: datetime
    revoked_at: datetime | None = None

    def usable(self, now: datetime) -> bool:
        """Neither revoked, expired nor used up at now."""
        return self.revoked_at is None and now < self.expires_at and self.uses < self.max_uses

    def admits(self, device_id: str) -> bool:
        """Whether the token's device-id glob (if any) covers device_id."""
        return self.device_pattern is None or fnmatch.fnmatchcase(device_id, self.device_pattern)

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (timestamps as ISO 8601)."""
        return _jsonable(asdict(self))


@dataclass(frozen=True)
class AuditEntry:
    at: datetime
    actor: str
    action: str
    target: str
    detail: dict[str, Any]
    id: int = 0
    customer_id: str | None = None
    device_id: str | None = None
    token_id: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (timestamps as ISO 8601)."""
        return _jsonable(asdict(self))


@dataclass(frozen=True)
class RequestRecord:
    """An API request as the audit log keeps it (its path without the query: secrets hide there)."""

    at: datetime
    token_id: str | None
    token_name: str | None
    customer_id: str | None
    device_id: str | None
    method: str
    path: str
    status: int
    bytes_in: int
    bytes_out: int
    duration_ms: float
    source: str | None

    def detail(self) -> dict[str, Any]:
        return {
            "token": self.token_name, "method": self.method, "path": self.path,
            "status": self.status, "bytes_in": self.bytes_in, "bytes_out": self.bytes_out,
            "duration_ms": round(self.duration_ms, 3), "source": self.source,
        }  # fmt: skip


@dataclass(frozen=True)
class Change:
    """One thing a write did; the same facts go to the audit log."""

    action: str
    target: str
    before: Customer | Device | Certificate | ApiToken | ProvisioningToken | None
    after: Customer | Device | Certificate | ApiToken | ProvisioningToken | None


@dataclass(frozen=True)
class Result:
    """What a write leaves in place (in request order) and what it changed to get there."""

    items: list[Any]
    changes: list[Change]
    # Certificates the write changed on the way (revoking a device revokes its certificates);
    # their audit entry is the one of the change that carried them.
    certificates: list[Change] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.changes)


@dataclass(frozen=True)
class ConnectionEvent:
    """A device connected to or left a gateway, at a time (None: the server's now)."""

    device_id: str
    gateway: str
    event: str  # "connect" or "disconnect"
    at: datetime | None = None
    address: str | None = None  # where the device connected from, "ip" or "ip:port"
    # Seconds the event was old when its gateway sent it, by the gateway's own clock. Given, the
    # registry orders it by its own clock (its now less the age) and keeps `at` as history.
    age: float | None = None
    # The certificate serial the session presented (a connect): the registry supersedes the
    # device's older certificates once it connected with a newer one (migration 0010).
    serial: int | None = None
    # A gateway's reconcile found the session in its instance's status, not in an event, and
    # times it at the session's start: it mends a lost connect, but never takes a device that
    # connected through another gateway since (a session the device has left lingers in the old
    # gateway's status until its disconnect).
    repair: bool = False


@dataclass(frozen=True)
class DeviceGrant:
    """What a gateway needs to know of one device to let it in."""

    device_id: str
    customer_id: str
    vpn_address: IPv4Address
    state: str
    serials: frozenset[int]  # certificates that are current: issued, not revoked, not expired


@dataclass
class Snapshot:
    """Every device a gateway may admit, keyed by device id."""

    devices: dict[str, DeviceGrant] = field(default_factory=dict)
    taken_at: float = 0.0  # unix time the registry was read
    # The change feed's cursor at that read (registry.changes): what changed since is read next.
    cursor: str | None = None


@dataclass(frozen=True)
class GatewayChanges:
    """What changed for the gateways since a cursor (Registry.gateway_changes)."""

    cursor: str  # where the next read starts
    devices: dict[str, DeviceGrant | None]  # each changed device's grant now; None: gone
    revoked: frozenset[int]  # the changed devices' revoked serials
    taken_at: float  # unix time the registry was read


_CUSTOMER_COLS = "c.id, c.name, c.block::text AS block, c.created_at"
_DEVICE_COLS = (
    "d.id, d.customer_id, d.state, host(d.vpn_address) AS vpn_address, d.connected, "
    "d.gateway, d.last_seen, d.created_at, d.updated_at"
)
_CERT_COLS = (
    "c.serial, c.device_id, c.fingerprint, c.not_before, c.not_after, c.revoked_at, "
    "c.revocation_reason"
)


def _jsonable(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in data.items()}
