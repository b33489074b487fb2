"""The identity a device's tls-crypt-v2 client key carries, which the gateways check before TLS.

A device's key carries USER metadata `urn:iotistic:<customer>:<device>` (pki.tlscrypt,
metadata="identity", and enrollment). On a gateway, OpenVPN's --tls-crypt-v2-verify command is
tlsverify.sh beside this file (POSIX sh: OpenVPN waits for it on every connection attempt, and a
Python interpreter's start would cost 13-25 ms of that): it refuses a key whose metadata is not
exactly this form or that names a device the agent marked revoked (crldir.RevokedDevices).
parse_identity is the same rule in Python; tests/unit/test_tlsverify.py holds the two to it.
"""

from __future__ import annotations

import re

from . import identifiers

__all__ = ["METADATA_TIMESTAMP", "METADATA_USER", "Refused", "identity", "parse_identity"]

METADATA_USER, METADATA_TIMESTAMP = 0, 1

_IDENTITY_RE = re.compile(
    re.escape(identifiers.DEVICE_URN_PREFIX)
    + "(" + identifiers.CUSTOMER_ID_PATTERN.strip("^$") + ")"
    + ":(" + identifiers.DEVICE_ID_PATTERN.strip("^$") + ")"
)  # fmt: skip


class Refused(Exception):
    """Why a client key is refused; the message names the key's device when it has one."""


def identity(customer: str, device: str) -> bytes:
    """The USER metadata of a device's client key (after the type byte)."""
    return f"{identifiers.DEVICE_URN_PREFIX}{customer}:{device}".encode("ascii")


def parse_identity(metadata: bytes) -> tuple[str, str]:
    """(customer, device) of USER metadata; Refused unless it is exactly identity()'s form."""
    try:
        text = metadata.decode("ascii")
    except UnicodeDecodeError:
        raise Refused(f"USER metadata of {len(metadata)} bytes is not ASCII") from None
    match = _IDENTITY_RE.fullmatch(text)
    if match is None:
        raise Refused(f"USER metadata {text[:80]!r} is not urn:iotistic:<customer>:<device>")
    return match.group(1), match.group(2)
