"""Input validation, in one place: identifiers, networks, serials and names (no cryptography).

Identifiers follow the DNS label rules (RFC 1123) in lower case, because a device id becomes
an inventory host name, a certificate subject and a file name on the gateway: it must be safe
in all three. Every check raises InvalidValue naming the bad value and changes nothing.
"""

from __future__ import annotations

import ipaddress
import re
from datetime import datetime

from .conventions import CUSTOMER_ID_PATTERN, DEVICE_ID_PATTERN, REVOCATION_REASONS
from .errors import InvalidValue

__all__ = [
    "CUSTOMER_ID_PATTERN",
    "DEVICE_ID_PATTERN",
    "actor",
    "aware_time",
    "customer_id",
    "device_glob",
    "device_id",
    "gateway_name",
    "ip_network",
    "revocation_reason",
    "serial_number",
]

# Customers are shorter (2-32) than devices so "customer/device" stays well inside X.509
# name limits (conventions.py holds both patterns).
_DEVICE_ID_RE = re.compile(DEVICE_ID_PATTERN)
_CUSTOMER_ID_RE = re.compile(CUSTOMER_ID_PATTERN)
# A gateway's name is its host name in the inventory: looser than a device id.
_GATEWAY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


def _identifier(field: str, value: object, regex: re.Pattern[str], rule: str) -> str:
    if not isinstance(value, str):
        raise InvalidValue(field, value, f"must be a string ({rule})")
    # fullmatch, not match: with match, "$" would also accept a trailing newline.
    if not regex.fullmatch(value):
        raise InvalidValue(field, value, rule)
    return value


def device_id(value: object) -> str:
    """Return value if it is a valid device id, else raise InvalidValue."""
    return _identifier(
        "device id",
        value,
        _DEVICE_ID_RE,
        "use 1-63 lower-case letters, digits and inner hyphens (a DNS label)",
    )


# A provisioning token's device-id pattern: a glob, never a regex (a regex given by a customer
# could be made to backtrack for seconds on every enrollment). Device-id characters, * and ?.
_DEVICE_GLOB_RE = re.compile(r"[a-z0-9*?-]{1,63}")


def device_glob(value: object) -> str:
    """Return value if it is a device-id glob (device-id characters with * and ?)."""
    return _identifier(
        "device pattern",
        value,
        _DEVICE_GLOB_RE,
        "use 1-63 lower-case letters, digits, hyphens and the wildcards * and ? (a glob)",
    )


def customer_id(value: object) -> str:
    """Return value if it is a valid customer id, else raise InvalidValue."""
    return _identifier(
        "customer id",
        value,
        _CUSTOMER_ID_RE,
        "use 2-32 lower-case letters, digits and inner hyphens",
    )


def ip_network(value: object, field: str = "network") -> ipaddress.IPv4Network:
    """Parse a strict IPv4 CIDR (host bits clear), else raise InvalidValue."""
    if not isinstance(value, str | ipaddress.IPv4Network):
        raise InvalidValue(field, value, "must be an IPv4 CIDR such as 100.64.0.0/10")
    try:
        net = ipaddress.ip_network(value, strict=True)
    except ValueError as exc:
        raise InvalidValue(field, value, f"not an IPv4 CIDR with host bits clear ({exc})") from None
    if not isinstance(net, ipaddress.IPv4Network):
        raise InvalidValue(field, value, "only IPv4 networks are supported")
    return net


def serial_number(value: object, field: str = "serial") -> int:
    """Parse a certificate serial: an int, decimal text, 0x-hex or colon hex (openssl's form)."""
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str):
        text = value.strip()
        try:
            if text.lower().startswith("0x"):
                number = int(text[2:], 16)
            elif ":" in text:
                number = int(text.replace(":", ""), 16)
            elif text.isdigit():
                number = int(text)
        except ValueError:
            number = None
    # RFC 5280 4.1.2.2: positive, at most 20 octets.
    if number is None or number <= 0 or number.bit_length() > 159:
        raise InvalidValue(
            field,
            value,
            "use a positive integer of at most 20 bytes (decimal, 0x-hex or aa:bb hex)",
        )
    return number


def gateway_name(value: object) -> str:
    """Return value if it is a valid gateway name, else raise InvalidValue."""
    if not isinstance(value, str) or not _GATEWAY_RE.fullmatch(value):
        raise InvalidValue("gateway", value, "use 1-63 letters, digits, dots, hyphens, underscores")
    return value


def revocation_reason(value: object) -> str:
    """Return value if it is one of REVOCATION_REASONS, else raise InvalidValue."""
    if value not in REVOCATION_REASONS:
        raise InvalidValue(
            "revocation reason", value, f"use one of {', '.join(REVOCATION_REASONS)}"
        )
    return value


def actor(value: object) -> str:
    """Return value if it names who makes a change (the audit log's actor)."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidValue("actor", value, "name who makes the change (a non-empty string)")
    return value


def aware_time(value: object, field: str = "time") -> datetime:
    """Parse ISO 8601 text with a time zone (an expiry, a cut-off), else raise InvalidValue."""
    try:
        when = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        when = None
    if when is None:
        raise InvalidValue(field, value, "use ISO 8601, e.g. 2027-01-31T00:00:00+00:00")
    if when.tzinfo is None:
        raise InvalidValue(field, value, "give a time zone (e.g. +00:00)")
    return when
