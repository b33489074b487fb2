"""When the gateway's own PKI files run out: its certificate, the CA chain, the CRL it serves.

Read for /metrics with `cryptography` when it is installed (Debian 12's python3-cryptography is
38.0: only the API that version has is used); the agent itself does not need it, so without it
these series are absent and said so once. Each file is parsed again only when it changed (a
CRL of 100,000 entries is a few MB).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
from pathlib import Path

__all__ = ["ExpiryWatch"]

log = logging.getLogger("iotistic_vpn.gateway.expiry")
_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)


def _ends(obj, name: str) -> float | None:
    """obj.<name>_utc where cryptography has it (42 on), else its naive-UTC obj.<name>."""
    value = getattr(obj, f"{name}_utc", None) if hasattr(obj, f"{name}_utc") else None
    if value is None:
        naive = getattr(obj, name)
        value = None if naive is None else naive.replace(tzinfo=dt.UTC)
    return None if value is None else value.timestamp()


class ExpiryWatch:
    """When things end (unix times) for the files given; cached by each file's mtime."""

    def __init__(self, certificate: Path, ca_chain: Path, crl: Path | None) -> None:
        self._files = {"gateway": certificate, "ca": ca_chain}
        self._crl = crl
        self._cache: dict[Path, tuple[float, list[tuple[str, float]]]] = {}
        self._x509 = None
        try:
            from cryptography import x509

            self._x509 = x509
        except ImportError:
            log.warning("python3-cryptography is not installed: no certificate/CRL expiry metrics")

    def certificates(self) -> dict[str, float]:
        """notAfter of the gateway's certificate and of the chain's issuing and root CA."""
        out: dict[str, float] = {}
        for name, path in self._files.items():
            for what, ends in self._read(path, self._chain_ends):
                label = "gateway" if name == "gateway" else what
                out[label] = min(ends, out.get(label, ends))
        return out

    def crl_next_update(self) -> float | None:
        if self._crl is None:
            return None
        found = self._read(self._crl, self._crl_next_update)
        return found[0][1] if found else None

    def _read(self, path: Path, parse) -> list[tuple[str, float]]:
        if self._x509 is None:
            return []
        try:
            mtime = os.stat(path).st_mtime
        except OSError:
            return []
        cached = self._cache.get(path)
        if cached is None or cached[0] != mtime:
            try:
                cached = (mtime, parse(path.read_bytes()))
            except Exception as exc:  # a metric must never fail the scrape
                log.warning("%s: cannot read its expiry: %s", path, exc)
                cached = (mtime, [])
            self._cache[path] = cached
        return cached[1]

    def _chain_ends(self, data: bytes) -> list[tuple[str, float]]:
        certs = [self._x509.load_pem_x509_certificate(b) for b in _PEM_CERT.findall(data)]
        # A self-signed certificate in the chain is the root; the other one the issuing CA.
        kinds = ["root_ca" if c.subject == c.issuer else "issuing_ca" for c in certs]
        return [(k, _ends(c, "not_valid_after")) for k, c in zip(kinds, certs, strict=True)]

    def _crl_next_update(self, data: bytes) -> list[tuple[str, float]]:
        crl = self._x509.load_pem_x509_crl(data)
        next_update = _ends(crl, "next_update")
        return [] if next_update is None else [("crl", next_update)]
