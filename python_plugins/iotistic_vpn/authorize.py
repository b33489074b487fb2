"""The gateway's connect decision: may this certificate connect, and with which address?

Pure logic over a snapshot of the registry, so the same rule serves a live registry and the
last good snapshot the agent keeps while the database is unreachable.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from .errors import InvalidValue
from .validation import device_id as _valid_device_id

__all__ = ["Accept", "Deny", "DeviceGrant", "Snapshot", "decide", "decision_env"]

ALLOWED_STATES = frozenset({"provisioned", "active"})
# The client variables decide() reads: all a live session needs to be judged again later.
# X509_0_CN, not common_name: the agent asks for `env-filter 1` (management.ENV_FILTER), which
# sends the certificate fields and a short list, and common_name is not on it.
DECISION_KEYS = ("X509_0_CN", "X509_0_O", "tls_serial_0")


@dataclass(frozen=True)
class DeviceGrant:
    """What the gateway needs to know of one device to let it in."""

    device_id: str
    customer_id: str
    vpn_address: ipaddress.IPv4Address
    state: str
    serials: frozenset[int]  # certificates that are current: issued, not revoked, not expired


@dataclass
class Snapshot:
    """Every device a gateway may admit, keyed by device id."""

    devices: dict[str, DeviceGrant] = field(default_factory=dict)
    taken_at: float = 0.0  # unix time the registry was read


@dataclass(frozen=True)
class Accept:
    device: DeviceGrant


@dataclass(frozen=True)
class Deny:
    reason: str  # logged on the gateway, never sent to the device


def decision_env(env: dict[str, str]) -> dict[str, str]:
    """The part of a client's environment decide() reads."""
    return {key: env[key] for key in DECISION_KEYS if key in env}


def decide(env: dict[str, str], snapshot: Snapshot) -> Accept | Deny:
    """Decide a CONNECT/REAUTH from OpenVPN's client environment."""
    name = env.get("X509_0_CN", "")  # the certificate's own CN
    try:
        _valid_device_id(name)
    except InvalidValue as exc:
        return Deny(str(exc))
    grant = snapshot.devices.get(name)
    if grant is None:
        return Deny(f"device {name!r} is not in the registry")
    # The certificate's O is the customer the CA bound; it must match the registry's owner.
    cert_customer = env.get("X509_0_O")
    if cert_customer != grant.customer_id:
        return Deny(
            f"device {name!r}: certificate customer {cert_customer!r} "
            f"is not the registry's {grant.customer_id!r}"
        )
    if grant.state not in ALLOWED_STATES:
        return Deny(f"device {name!r} is {grant.state}")
    try:
        serial = int(env.get("tls_serial_0", ""))
    except ValueError:
        return Deny(f"device {name!r}: no certificate serial in the connect")
    if serial not in grant.serials:
        return Deny(f"device {name!r}: certificate serial {serial} is not current")
    return Accept(grant)
