"""Input validation, in one place: identifiers, networks and PEM material.

Identifiers follow the DNS label rules (RFC 1123) in lower case, because a device id becomes
an inventory host name, a certificate subject and a file name on the gateway: it must be safe
in all three. Every check raises InvalidValue naming the bad value and changes nothing.
"""

from __future__ import annotations

import ipaddress
import re

from .errors import InvalidValue

__all__ = [
    "CUSTOMER_ID_PATTERN",
    "DEVICE_ID_PATTERN",
    "customer_id",
    "device_id",
    "ip_network",
]

# 1-63 characters, lower-case letters, digits and inner hyphens: a DNS label.
DEVICE_ID_PATTERN = r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$"
# Customers are shorter (2-32) so "customer/device" stays well inside X.509 name limits.
CUSTOMER_ID_PATTERN = r"^[a-z0-9][a-z0-9-]{0,30}[a-z0-9]$"

_DEVICE_ID_RE = re.compile(DEVICE_ID_PATTERN)
_CUSTOMER_ID_RE = re.compile(CUSTOMER_ID_PATTERN)


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
