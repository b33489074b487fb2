"""OpenVPN tls-crypt-v2 keys, made in Python in OpenVPN 2.6's exact formats.

A server key per gateway fleet and a client key per device. The client key carries its own
tls-crypt key Kc plus Kc wrapped (WKc) under the server key, so a gateway learns Kc from the
first packet without any per-device state, and drops packets from anyone without a key before
any TLS parsing. Format (OpenVPN doc/tls-crypt-v2.txt, src/openvpn/tls_crypt.c):

- server key: 128 bytes = struct key {cipher[64], hmac[64]}; Ke = cipher[:32] (AES-256-CTR),
  Ka = hmac[:32] (HMAC-SHA256).
- client key: Kc (256 random bytes = struct key2) || WKc, where
  len = len(WKc) as 16-bit big-endian, T = HMAC-SHA256(Ka, len || Kc || metadata),
  WKc = T || AES-256-CTR(Ke, IV = T[:16], Kc || metadata) || len.
- metadata: one type byte, then 0x00 USER data, or 0x01 TIMESTAMP (64-bit big-endian unix
  time, OpenVPN's default, which --tls-crypt-v2-max-age checks).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import stat
import struct
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from .. import tlsverify, validation
from ..errors import InvalidValue
from .keys import write_atomic

__all__ = [
    "CLIENT_PEM_NAME",
    "METADATA_TIMESTAMP",
    "METADATA_USER",
    "SERVER_PEM_NAME",
    "ClientKey",
    "KeysResult",
    "ensure_keys",
    "generate_client_key",
    "generate_server_key",
    "unwrap_client_key",
]

SERVER_PEM_NAME = "OpenVPN tls-crypt-v2 server key"
CLIENT_PEM_NAME = "OpenVPN tls-crypt-v2 client key"
METADATA_USER = 0x00
METADATA_TIMESTAMP = 0x01

_SERVER_KEY_LEN = 128  # struct key: cipher[64] + hmac[64]
_CLIENT_KEY_LEN = 256  # struct key2: two struct key
_TAG_LEN = 32
_MAX_WKC_LEN = 1024  # TLS_CRYPT_V2_MAX_WKC_LEN
MAX_METADATA_LEN = _MAX_WKC_LEN - _CLIENT_KEY_LEN - _TAG_LEN - 2  # 734, type byte included


def _pem(name: str, data: bytes) -> bytes:
    """PEM as OpenSSL's PEM_write_bio writes it (64-column base64), which OpenVPN reads."""
    b64 = base64.b64encode(data).decode()
    lines = [b64[i : i + 64] for i in range(0, len(b64), 64)]
    text = f"-----BEGIN {name}-----\n" + "\n".join(lines) + f"\n-----END {name}-----\n"
    return text.encode()


def _unpem(name: str, data: str | bytes, what: str) -> bytes:
    text = data.decode("ascii", "replace") if isinstance(data, bytes) else str(data)
    begin, end = f"-----BEGIN {name}-----", f"-----END {name}-----"
    start, stop = text.find(begin), text.find(end)
    if start < 0 or stop < start:
        raise InvalidValue(what, _short(text), f"no {begin} ... {end} block")
    body = "".join(text[start + len(begin) : stop].split())
    try:
        return base64.b64decode(body, validate=True)
    except ValueError:
        raise InvalidValue(what, _short(text), "the PEM body is not valid base64") from None


def _short(text: str) -> str:
    # Name the input by its PEM header if it has one, else by its size: any other line of it
    # may be key material.
    first = text.strip().splitlines()[0] if text.strip() else ""
    return first if first.startswith("-----BEGIN ") else f"<{len(text.encode())} bytes>"


def _server_parts(server_key: str | bytes) -> tuple[bytes, bytes]:
    raw = _unpem(SERVER_PEM_NAME, server_key, "tls-crypt-v2 server key")
    if len(raw) != _SERVER_KEY_LEN:
        raise InvalidValue(
            "tls-crypt-v2 server key", f"{len(raw)} bytes", f"must hold {_SERVER_KEY_LEN} bytes"
        )
    return raw[:32], raw[64:96]  # Ke = cipher[:32], Ka = hmac[:32]


def _ctr(ke: bytes, iv: bytes, data: bytes) -> bytes:
    cipher = Cipher(algorithms.AES(ke), modes.CTR(iv)).encryptor()
    return cipher.update(data) + cipher.finalize()


def generate_server_key() -> bytes:
    """A new tls-crypt-v2 server key (PEM), like `openvpn --genkey tls-crypt-v2-server`."""
    return _pem(SERVER_PEM_NAME, os.urandom(_SERVER_KEY_LEN))


def generate_client_key(
    server_key: str | bytes, metadata: bytes | None = None, *, timestamp: int | None = None
) -> bytes:
    """A new client key (PEM) wrapped under server_key.

    With metadata, it is USER metadata (OpenVPN's --genkey with a metadata argument);
    without, a TIMESTAMP of now (or `timestamp`), as OpenVPN does by default.
    """
    ke, ka = _server_parts(server_key)
    if metadata is None:
        when = int(time.time()) if timestamp is None else timestamp
        meta = bytes([METADATA_TIMESTAMP]) + struct.pack(">q", when)
    else:
        meta = bytes([METADATA_USER]) + bytes(metadata)
    if len(meta) > MAX_METADATA_LEN:
        raise InvalidValue(
            "tls-crypt-v2 metadata", f"{len(meta) - 1} bytes", f"at most {MAX_METADATA_LEN - 1}"
        )
    kc = os.urandom(_CLIENT_KEY_LEN)
    net_len = struct.pack(">H", _TAG_LEN + len(kc) + len(meta) + 2)
    tag = hmac.new(ka, net_len + kc + meta, hashlib.sha256).digest()
    wkc = tag + _ctr(ke, tag[:16], kc + meta) + net_len
    return _pem(CLIENT_PEM_NAME, kc + wkc)


@dataclass(frozen=True)
class ClientKey:
    """An unwrapped client key: what a gateway learns from WKc."""

    kc: bytes
    metadata_type: int
    metadata: bytes  # without the type byte

    @property
    def timestamp(self) -> int | None:
        """Unix time the key was made, for TIMESTAMP metadata."""
        if self.metadata_type != METADATA_TIMESTAMP or len(self.metadata) < 8:
            return None
        return struct.unpack(">q", self.metadata[:8])[0]


def unwrap_client_key(server_key: str | bytes, client_key: str | bytes) -> ClientKey:
    """Unwrap a client key's WKc with server_key, checking it against the Kc it carries."""
    ke, ka = _server_parts(server_key)
    raw = _unpem(CLIENT_PEM_NAME, client_key, "tls-crypt-v2 client key")
    kc, wkc = raw[:_CLIENT_KEY_LEN], raw[_CLIENT_KEY_LEN:]
    min_len = _TAG_LEN + _CLIENT_KEY_LEN + 1 + 2
    if len(wkc) < min_len or len(wkc) > _MAX_WKC_LEN:
        raise InvalidValue("tls-crypt-v2 client key", f"{len(raw)} bytes", "has no valid WKc")
    net_len = wkc[-2:]
    if struct.unpack(">H", net_len)[0] != len(wkc):
        raise InvalidValue("tls-crypt-v2 client key", f"{len(raw)} bytes", "WKc length mismatch")
    tag = wkc[:_TAG_LEN]
    plain = _ctr(ke, tag[:16], wkc[_TAG_LEN:-2])
    expected = hmac.new(ka, net_len + plain, hashlib.sha256).digest()
    if not hmac.compare_digest(tag, expected):
        raise InvalidValue(
            "tls-crypt-v2 client key", f"{len(raw)} bytes",
            "does not authenticate under this server key (made for another fleet?)",
        )  # fmt: skip
    if plain[:_CLIENT_KEY_LEN] != kc:
        raise InvalidValue("tls-crypt-v2 client key", f"{len(raw)} bytes", "Kc differs from WKc")
    meta = plain[_CLIENT_KEY_LEN:]
    return ClientKey(kc, meta[0], meta[1:])


# -------------------------------------------------------------------- key files (vpn_tls_crypt)

KEY_MODE = 0o600
METADATA_CHOICES = ("timestamp", "identity")


@dataclass
class KeysResult:
    """What ensure_keys found and changed; `before` holds non-secret states for a diff."""

    server_key_path: str
    server_key_created: bool
    server_mode_fixed: bool
    clients: list[dict] = field(default_factory=list)  # customer, device, path, status
    before: dict[str, str] = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        return self.server_key_created or self.server_mode_fixed or bool(self.before)

    def labels(self, status: str) -> list[str]:
        return [f"{c['customer']}/{c['device']}" for c in self.clients if c["status"] == status]


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _mode_is_wrong(path: Path) -> bool:
    return stat.S_IMODE(path.stat().st_mode) != KEY_MODE


def _client_state(server_key: bytes | None, data: bytes | None, identity: bytes | None) -> str:
    """absent, present (unwraps and matches the wanted identity) or foreign."""
    if data is None:
        return "absent"
    if server_key is None:
        return "foreign"  # a new server key will not unwrap it
    try:
        key = unwrap_client_key(server_key, data)
    except InvalidValue:
        return "foreign"
    if identity is not None and (key.metadata_type, key.metadata) != (METADATA_USER, identity):
        return "foreign"
    return "present"


def _check_server_key(path: Path, data: bytes) -> None:
    """Fail on a damaged server key, naming its file: it is never replaced."""
    try:
        # Wrapping a throwaway client key parses the server key exactly as every later use will.
        generate_client_key(data)
    except InvalidValue as exc:
        raise InvalidValue("tls-crypt-v2 server key", str(path), exc.reason) from None


def _client_paths(clients: Iterable[Mapping[str, str]], dest: Path) -> list[tuple[str, str, Path]]:
    """Validate the batch (ids, no device twice) and give each client its key path."""
    seen: set[str] = set()
    out = []
    for item in clients:
        customer = validation.customer_id(item["customer"])
        device = validation.device_id(item["device"])
        if device in seen:
            raise InvalidValue("device id", device, "is listed twice in clients")
        seen.add(device)
        out.append((customer, device, dest / customer / f"{device}.tls-crypt-v2.key"))
    return out


def ensure_keys(
    server_key_path: str | os.PathLike,
    *,
    create_server_key: bool = True,
    dest: str | os.PathLike | None = None,
    clients: Iterable[Mapping[str, str]] = (),
    metadata: str = "timestamp",
    write: bool = True,
) -> KeysResult:
    """Keep the fleet's server key and each client's key file (0600); write only if write.

    A client key is made when absent, and made again when it no longer unwraps under the
    server key (or names another device with metadata="identity"). The server key is never
    replaced: a damaged one fails, naming its file.
    """
    if metadata not in METADATA_CHOICES:
        raise InvalidValue("metadata", metadata, f"use one of {', '.join(METADATA_CHOICES)}")
    server_path = Path(server_key_path)
    wanted = _client_paths(clients, Path(dest or "."))
    server_key = _read(server_path)
    created = server_key is None
    if server_key is not None:
        _check_server_key(server_path, server_key)
    elif not create_server_key:
        raise InvalidValue(
            "tls-crypt-v2 server key",
            str(server_path),
            "does not exist and create_server_key is false (make it with the CA first)",
        )
    result = KeysResult(str(server_path), created, not created and _mode_is_wrong(server_path))
    if created:
        server_key = generate_server_key()
        if write:
            write_atomic(server_path, server_key, mode=KEY_MODE)
    elif result.server_mode_fixed and write:
        os.chmod(server_path, KEY_MODE)
    for customer, device, path in wanted:
        identity = tlsverify.identity(customer, device) if metadata == "identity" else None
        state = _client_state(None if created else server_key, _read(path), identity)
        status = {"absent": "created", "foreign": "replaced"}.get(state, "unchanged")
        label = f"{customer}/{device}"
        if status != "unchanged":
            result.before[label] = state
            if write:
                write_atomic(path, generate_client_key(server_key, identity), mode=KEY_MODE)
        elif _mode_is_wrong(path):
            result.before[label] = "present, mode not 0600"
            if write:
                os.chmod(path, KEY_MODE)
        result.clients.append(
            {"customer": customer, "device": device, "path": str(path), "status": status}
        )
    return result
