"""PEM parsing with errors that name the file or device, never the PEM (it may be a secret)."""

from __future__ import annotations

import re

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from ..errors import InvalidValue

__all__ = [
    "csr_signature",
    "pem_certificate",
    "pem_certificates",
    "pem_crl",
    "pem_csr",
    "pem_private_key",
]

# PEM material. `name` is what the message shows (a path, or "customer/device"): never the
# PEM itself, which is long and may be a secret.

_PEM_CERT_RE = re.compile(
    rb"-----BEGIN CERTIFICATE-----\r?\n.+?-----END CERTIFICATE-----", re.DOTALL
)


def _pem_bytes(data: object, field: str, name: str) -> bytes:
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogateescape")
    if not isinstance(data, bytes) or b"-----BEGIN " not in data:
        raise InvalidValue(field, name, "not PEM text (no -----BEGIN line)")
    return data


def pem_certificate(data: object, name: str, field: str = "certificate") -> x509.Certificate:
    """Parse the first PEM certificate in data, else raise InvalidValue naming `name`."""
    return pem_certificates(data, name, field)[0]


def pem_certificates(data: object, name: str, field: str = "certificate") -> list[x509.Certificate]:
    """Parse every PEM certificate in data (a chain file), else raise InvalidValue."""
    blob = _pem_bytes(data, field, name)
    blocks = _PEM_CERT_RE.findall(blob)
    if not blocks:
        raise InvalidValue(field, name, "no -----BEGIN CERTIFICATE----- block")
    try:
        return [x509.load_pem_x509_certificate(block) for block in blocks]
    except ValueError as exc:
        raise InvalidValue(field, name, f"malformed certificate ({exc})") from None


def pem_csr(
    data: object, name: str, field: str = "CSR", *, verify: bool = True
) -> x509.CertificateSigningRequest:
    """Parse a PEM CSR and (unless verify=False) check its self-signature, else InvalidValue."""
    blob = _pem_bytes(data, field, name)
    try:
        csr = x509.load_pem_x509_csr(blob)
    except ValueError as exc:
        raise InvalidValue(field, name, f"malformed certificate request ({exc})") from None
    if verify:
        csr_signature(csr, name, field)
    return csr


def csr_signature(csr: x509.CertificateSigningRequest, name: str, field: str = "CSR") -> None:
    """Check a CSR's self-signature: it proves the requester holds the private key."""
    try:
        valid = csr.is_signature_valid
    except Exception as exc:  # an unsupported key or algorithm surfaces here
        raise InvalidValue(field, name, f"signature cannot be checked ({exc})") from None
    if not valid:
        raise InvalidValue(field, name, "its signature does not verify (altered or corrupt)")


def pem_crl(data: object, name: str, field: str = "CRL") -> x509.CertificateRevocationList:
    """Parse a PEM CRL, else raise InvalidValue naming `name`."""
    blob = _pem_bytes(data, field, name)
    try:
        return x509.load_pem_x509_crl(blob)
    except ValueError as exc:
        raise InvalidValue(field, name, f"malformed CRL ({exc})") from None


def pem_private_key(data: object, name: str, passphrase: str | bytes | None = None):
    """Load a PEM private key (decrypting it with passphrase), else raise InvalidValue."""
    blob = _pem_bytes(data, "private key", name)
    if isinstance(passphrase, str):
        passphrase = passphrase.encode()
    # PKCS#8 ("ENCRYPTED PRIVATE KEY" header) or traditional OpenSSL (a Proc-Type header).
    encrypted = b"BEGIN ENCRYPTED PRIVATE" in blob or b"Proc-Type: 4,ENCRYPTED" in blob
    if encrypted and not passphrase:
        raise InvalidValue("private key", name, "it is encrypted: give its passphrase")
    if not encrypted and passphrase:
        raise InvalidValue("private key", name, "a passphrase was given but it is not encrypted")
    try:
        return serialization.load_pem_private_key(blob, passphrase or None)
    except ValueError as exc:
        if encrypted:
            # The message must not echo the passphrase; naming the key is enough.
            raise InvalidValue(
                "passphrase for private key", name, "wrong passphrase, or the key is corrupt"
            ) from None
        raise InvalidValue("private key", name, f"malformed private key ({exc})") from None
    except (TypeError, UnsupportedAlgorithm) as exc:
        raise InvalidValue("private key", name, f"unsupported private key ({exc})") from None
