"""API tokens as strings: made with 256 bits of randomness, shown once, kept only as a hash.

A token reads `ivpn_<id>_<secret>`: the id (public, 16 hex characters) finds its row, the
secret (43 URL-safe characters) is compared with the stored SHA-256 in constant time.
Provisioning tokens (what a device enrolls with) are made the same way and read
`ivpp_<id>_<secret>`, so neither kind can be mistaken for the other. A slow
password hash would buy nothing here: the secret is random, not chosen by a person, so a stolen
hash cannot be guessed back. Standard library only.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from .errors import InvalidValue

__all__ = [
    "PREFIX",
    "PROVISIONING_PREFIX",
    "IssuedToken",
    "hash_secret",
    "new_token",
    "parse_token",
    "secret_matches",
]

PREFIX = "ivpn"
PROVISIONING_PREFIX = "ivpp"
_TOKEN_RES = {
    p: re.compile(rf"{p}_([0-9a-f]{{16}})_([A-Za-z0-9_-]{{43}})")
    for p in (PREFIX, PROVISIONING_PREFIX)
}
_KINDS = {PREFIX: "API token", PROVISIONING_PREFIX: "provisioning token"}


@dataclass(frozen=True)
class IssuedToken:
    """A new token: `value` is shown to its owner once and never stored."""

    id: str
    value: str = ""  # the whole token string; repr hides it
    secret_hash: bytes = b""

    def __repr__(self) -> str:
        return f"IssuedToken(id={self.id!r})"


def hash_secret(secret: str) -> bytes:
    """The stored form of a token's secret."""
    return hashlib.sha256(secret.encode()).digest()


def new_token(prefix: str = PREFIX) -> IssuedToken:
    """A fresh token id and secret."""
    token_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    return IssuedToken(token_id, f"{prefix}_{token_id}_{secret}", hash_secret(secret))


def parse_token(value: object, prefix: str = PREFIX) -> tuple[str, str]:
    """(id, secret) of a token string, else InvalidValue (never echoing the value)."""
    match = _TOKEN_RES[prefix].fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise InvalidValue(
            _KINDS[prefix], "<hidden>", f"not a token of the form {prefix}_<id>_<secret>"
        )
    return match.group(1), match.group(2)


def secret_matches(secret: str, stored_hash: bytes) -> bool:
    """Constant-time check of a presented secret against the stored hash."""
    return hmac.compare_digest(hash_secret(secret), bytes(stored_hash))
