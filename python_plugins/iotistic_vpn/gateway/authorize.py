"""The gateway's connect decision: may this certificate connect, and with which address?

Pure logic over a snapshot of the registry, so the same rule serves a live registry and the
last good snapshot the agent keeps while the database is unreachable.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import InvalidValue
from ..registry.models import DeviceGrant, Snapshot
from ..validation import device_id as _valid_device_id
from .management import HALT, NEXT_REMOTE

__all__ = [
    "DENY_CODES", "FINAL_CODES", "Accept", "Deny", "DeviceGrant", "Snapshot", "client_reason",
    "decide", "decision_env", "kill_message",
]  # fmt: skip

ALLOWED_STATES = frozenset({"provisioned", "active"})
# The client variables decide() reads: all a live session needs to be judged again later.
# X509_0_CN, not common_name: the agent asks for `env-filter 1` (management.ENV_FILTER), which
# sends the certificate fields and a short list, and common_name is not on it.
DECISION_KEYS = ("X509_0_CN", "X509_0_O", "tls_serial_0")


@dataclass(frozen=True)
class Accept:
    device: DeviceGrant


# Why a connect or a live session is refused, as a fixed code: the label of the agent's metrics
# and the key of its logs (the reason text names the device, so it cannot be a label).
DENY_CODES = (
    "bad_name",
    "unknown_device",
    "wrong_customer",
    "device_revoked",
    "no_serial",
    "serial_not_current",
    "no_current_certificate",
    "draining",
    "repeated_field",
)


@dataclass(frozen=True)
class Deny:
    code: str  # one of DENY_CODES
    reason: str  # logged on the gateway, never sent to the device

    def __post_init__(self) -> None:
        if self.code not in DENY_CODES:
            raise ValueError(f"unknown deny code {self.code!r}")


# A refusal that stands for good: the device is told plainly (AUTH_FAILED, a kill with HALT),
# its OpenVPN exits with status 0 and the openvpn_device unit does not start it again. Any other
# refusal may pass later (a snapshot that does not hold a new device or certificate yet, a
# drain): AUTH_FAILED,TEMP[...] and RESTART,[N] keep the device's OpenVPN up, trying the next
# gateway after the backoff (OpenVPN's parse_auth_failed_temp).
FINAL_CODES = frozenset({"device_revoked"})
CLIENT_REASON = "not authorised"  # all a refused device is told; the reason stays in the log
TEMP_BACKOFF_S = 30  # a refused device knocks about as often as a systemd restart did (5 + 0-30 s)


def client_reason(deny: Deny) -> str:
    """What client-deny tells the device: final, or TEMP with a backoff and the next gateway."""
    if deny.code in FINAL_CODES:
        return CLIENT_REASON
    backoff = 1 if deny.code == "draining" else TEMP_BACKOFF_S  # a drain sends it on at once
    return f"TEMP[backoff {backoff},advance remote]{CLIENT_REASON}"


def kill_message(deny: Deny) -> str:
    """How a live session refused by a new snapshot ends: HALT only when it is final."""
    return HALT if deny.code in FINAL_CODES else NEXT_REMOTE


def refuse_state(name: str, state: str) -> Deny | None:
    """The refusal of a device the registry holds in a state that may not connect, or None."""
    if state in ALLOWED_STATES:
        return None
    return Deny(f"device_{state}", f"device {name!r} is {state}")


def decision_env(env: dict[str, str]) -> dict[str, str]:
    """The part of a client's environment decide() reads."""
    return {key: env[key] for key in DECISION_KEYS if key in env}


def decide(
    env: dict[str, str], snapshot: Snapshot, repeated: frozenset[str] = frozenset()
) -> Accept | Deny:
    """Decide a CONNECT/REAUTH from OpenVPN's client environment.

    repeated: names that came more than once in it. A client can send its own lines (peer
    info) before the certificate's: one of DECISION_KEYS twice is a refusal, whichever value
    came last.
    """
    twice = sorted(repeated.intersection(DECISION_KEYS))
    if twice:
        return Deny("repeated_field", f"the connect carries {', '.join(twice)} more than once")
    name = env.get("X509_0_CN", "")  # the certificate's own CN
    try:
        _valid_device_id(name)
    except InvalidValue as exc:
        return Deny("bad_name", str(exc))
    grant = snapshot.devices.get(name)
    if grant is None:
        return Deny("unknown_device", f"device {name!r} is not in the registry")
    # The certificate's O is the customer the CA bound; it must match the registry's owner.
    cert_customer = env.get("X509_0_O")
    if cert_customer != grant.customer_id:
        return Deny(
            "wrong_customer",
            f"device {name!r}: certificate customer {cert_customer!r} "
            f"is not the registry's {grant.customer_id!r}",
        )
    refusal = refuse_state(name, grant.state)
    if refusal is not None:
        return refusal
    try:
        serial = int(env.get("tls_serial_0", ""))
    except ValueError:
        return Deny("no_serial", f"device {name!r}: no certificate serial in the connect")
    if serial not in grant.serials:
        return Deny(
            "serial_not_current", f"device {name!r}: certificate serial {serial} is not current"
        )
    return Accept(grant)
