"""When the PKI's pieces run out: the CA pair's certificates and the CRL's nextUpdate."""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import InvalidValue
from . import pem
from .ca import CaFiles
from .crl import crl_number

__all__ = ["Expiry", "ca_status", "crl_status"]


@dataclass(frozen=True)
class Expiry:
    """One thing that ends: a certificate's notAfter or a CRL's nextUpdate."""

    what: str
    path: str
    ends: dt.datetime
    detail: str = ""

    def days_left(self, now: dt.datetime | None = None) -> float:
        now = now or dt.datetime.now(dt.UTC)
        return (self.ends - now).total_seconds() / 86400

    def state(self, warn_within: dt.timedelta, now: dt.datetime | None = None) -> str:
        """expired, warning (inside the window) or ok."""
        left = self.days_left(now)
        if left <= 0:
            return "expired"
        return "warning" if left <= warn_within.total_seconds() / 86400 else "ok"


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InvalidValue(what, str(path), f"cannot be read ({exc.strerror})") from None


def ca_status(directory: str | os.PathLike) -> list[Expiry]:
    """The root and issuing CA certificates of a CA directory, with their ends."""
    files = CaFiles.at(directory)
    out = []
    for what, path in (("root CA", files.root_cert), ("issuing CA", files.cert)):
        cert = pem.pem_certificate(_read(path, f"{what} certificate"), str(path))
        subject = cert.subject.rfc4514_string()
        out.append(Expiry(what, str(path), cert.not_valid_after_utc, subject))
    return out


def crl_status(path: str | os.PathLike) -> Expiry:
    """A CRL's nextUpdate, with its number and entry count."""
    path = Path(path)
    crl = pem.pem_crl(_read(path, "CRL"), str(path))
    if crl.next_update_utc is None:
        raise InvalidValue("CRL", str(path), "has no nextUpdate")
    detail = f"number {crl_number(crl)}, {len(crl)} revoked"
    return Expiry("CRL", str(path), crl.next_update_utc, detail)
