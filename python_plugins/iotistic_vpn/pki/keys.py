"""Keys, PEM files and the certificate building blocks every issuer uses."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from ..errors import InvalidValue
from . import pem

KEY_TYPES = ("ec-p256", "ec-p384", "rsa-3072", "ed25519")
DEFAULT_KEY_TYPE = "ec-p256"

# Devices boot with clocks a little off; a certificate or CRL "not yet valid" by seconds would
# lock them out, so validity starts a few minutes in the past.
CLOCK_SKEW = dt.timedelta(minutes=5)
MIN_RSA_BITS = 2048

_CURVES = {"secp256r1": "ec-p256", "secp384r1": "ec-p384", "secp521r1": "ec-p521"}
_KEY_POLICY = "use EC P-256/P-384/P-521, Ed25519 or RSA of at least 2048 bits"

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


def _now(now: dt.datetime | None) -> dt.datetime:
    return (now or dt.datetime.now(dt.UTC)).replace(microsecond=0)


# --------------------------------------------------------------------------- keys and files


def generate_key(key_type: str = DEFAULT_KEY_TYPE) -> PrivateKey:
    """Make a private key of one of KEY_TYPES."""
    if key_type == "ec-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "ec-p384":
        return ec.generate_private_key(ec.SECP384R1())
    if key_type == "rsa-3072":
        return rsa.generate_private_key(public_exponent=65537, key_size=3072)
    if key_type == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise InvalidValue("key type", key_type, f"use one of {', '.join(KEY_TYPES)}")


def key_type_of(key) -> str:
    """Name a private or public key's type the way KEY_TYPES does ("ec-p256", "rsa-2048", ...)."""
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        return _CURVES.get(key.curve.name, f"ec-{key.curve.name}")
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        return f"rsa-{key.key_size}"
    if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        return "ed25519"
    return type(key).__name__.removesuffix("PublicKey").removesuffix("PrivateKey").lower()


def check_public_key(public_key, field: str, name: str) -> None:
    """Refuse weak or unsupported keys, naming whose key it is."""
    if isinstance(public_key, rsa.RSAPublicKey):
        if public_key.key_size < MIN_RSA_BITS:
            raise InvalidValue(field, name, f"RSA-{public_key.key_size} is too weak: {_KEY_POLICY}")
    elif isinstance(public_key, ec.EllipticCurvePublicKey):
        if public_key.curve.name not in _CURVES:
            raise InvalidValue(
                field, name, f"EC curve {public_key.curve.name} is not supported: {_KEY_POLICY}"
            )
    elif not isinstance(public_key, ed25519.Ed25519PublicKey):
        raise InvalidValue(
            field, name, f"{key_type_of(public_key)} keys are not supported: {_KEY_POLICY}"
        )


def _signing_hash(key: PrivateKey) -> hashes.HashAlgorithm | None:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return None  # EdDSA hashes internally
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size >= 384:
        return hashes.SHA384()
    return hashes.SHA256()


def private_key_pem(key: PrivateKey, passphrase: str | bytes | None = None) -> bytes:
    """Serialise a private key as PKCS#8 PEM, encrypted when a passphrase is given."""
    if passphrase:
        secret = passphrase.encode() if isinstance(passphrase, str) else passphrase
        encryption = serialization.BestAvailableEncryption(secret)
    else:
        encryption = serialization.NoEncryption()
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def certificate_pem(*certs: x509.Certificate) -> bytes:
    """Serialise certificates as concatenated PEM (a chain file when given several)."""
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the DER certificate, 64 lower-case hex digits (the registry's format)."""
    return cert.fingerprint(hashes.SHA256()).hex()


def _spki(public_key) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def write_atomic(
    path: str | os.PathLike, data: bytes, mode: int = 0o644, sync: bool = True
) -> None:
    """Replace path with data in one rename, so readers never see a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # mkstemp creates the file 0600: a key is never readable by others, even for an instant.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            if mode != 0o600:
                os.fchmod(handle.fileno(), mode)
            handle.write(data)
            if sync:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_private_key(
    path: str | os.PathLike, key: PrivateKey, passphrase: str | bytes | None = None
) -> None:
    """Write a private key 0600, atomically, encrypted when a passphrase is given."""
    write_atomic(path, private_key_pem(key, passphrase), mode=0o600)


def read_private_key(path: str | os.PathLike, passphrase: str | bytes | None = None) -> PrivateKey:
    """Load a private key file; a missing file, a bad key or passphrase raise InvalidValue."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise InvalidValue("private key", str(path), f"cannot be read ({exc.strerror})") from None
    return pem.pem_private_key(data, str(path), passphrase)


def _read_cert(path: Path, field: str = "certificate") -> x509.Certificate:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidValue(field, str(path), f"cannot be read ({exc.strerror})") from None
    return pem.pem_certificate(data, str(path), field)


def _ski(public_key) -> x509.SubjectKeyIdentifier:
    return x509.SubjectKeyIdentifier.from_public_key(public_key)


def _aki_from(cert: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


_KEY_USAGE_FLAGS = (
    "digital_signature",
    "content_commitment",
    "key_encipherment",
    "data_encipherment",
    "key_agreement",
    "key_cert_sign",
    "crl_sign",
    "encipher_only",
    "decipher_only",
)


def _key_usage(*flags: str) -> x509.KeyUsage:
    return x509.KeyUsage(**{flag: flag in flags for flag in _KEY_USAGE_FLAGS})
