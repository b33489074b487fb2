"""OpenVPN's --tls-crypt-v2-verify script: a revoked device's packets are dropped before TLS.

OpenVPN runs it on a gateway for the first packet of every connection attempt that carries a
tls-crypt-v2 client key (src/openvpn/tls_crypt.c, tls_crypt_v2_verify_metadata), with
`metadata_type` (0 USER, 1 TIMESTAMP) and `metadata_file` (the metadata after its type byte)
in its environment. Exit 0 admits the packet; anything else drops it, before any TLS and
without an answer to the device.

A device's key carries USER metadata `urn:iotistic:<customer>:<device>` (pki.tlscrypt,
metadata="identity"); the gateway agent keeps one empty file per revoked device id in
REVOKED_DEVICES_DIR (crldir.RevokedDevices). Fail closed: metadata that is not exactly that
form, or a directory that cannot be read, is refused. A TIMESTAMP key (OpenVPN's default, made
before keys named their device) names no device: admitted only with --timestamp-keys admit,
its certificate is then checked as before (crl-verify, the agent).

Standard library only, run as a file by OpenVPN as nobody (`python3 -E -s -S tlsverify.py
DIR`): the openvpn_gateway role installs it with identifiers.py beside it.
"""

from __future__ import annotations

import os
import re
import sys

if __package__:
    from . import identifiers
else:  # run as a file: identifiers.py is installed beside it
    import identifiers

__all__ = ["METADATA_TIMESTAMP", "METADATA_USER", "Refused", "check", "identity", "main"]

METADATA_USER, METADATA_TIMESTAMP = 0, 1
MAX_METADATA = 733  # tls_crypt.c: TLS_CRYPT_V2_MAX_METADATA_LEN less the type byte

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


def check(metadata_type: str, metadata: bytes, revoked_dir: str, *, timestamp_keys: bool) -> str:
    """What an admitted key is (its customer/device, or a timestamp key); Refused otherwise."""
    if metadata_type == str(METADATA_USER):
        customer, device = parse_identity(metadata)
        label = f"{customer}/{device}"
        try:
            revoked = os.path.exists(os.path.join(revoked_dir, device))
            if not revoked and not os.path.isdir(revoked_dir):
                raise Refused(f"device {label}: {revoked_dir} is not a directory")
        except OSError as exc:  # e.g. no search permission: nothing can be known
            raise Refused(f"device {label}: {revoked_dir}: {exc.strerror}") from None
        if revoked:
            raise Refused(f"device {label} is revoked")
        return label
    if metadata_type == str(METADATA_TIMESTAMP):
        if len(metadata) != 8:
            raise Refused(f"TIMESTAMP metadata of {len(metadata)} bytes, not 8")
        if not timestamp_keys:
            raise Refused("a TIMESTAMP key names no device (--timestamp-keys refuse)")
        return "a timestamp key"
    raise Refused(f"metadata type {metadata_type!r} is neither 0 (USER) nor 1 (TIMESTAMP)")


def main(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    env = os.environ if environ is None else environ
    if len(args) not in (1, 3) or (
        len(args) == 3 and (args[1] != "--timestamp-keys" or args[2] not in ("admit", "refuse"))
    ):
        print("usage: tlsverify.py REVOKED_DIR [--timestamp-keys admit|refuse]", file=sys.stderr)
        return 2
    timestamp_keys = len(args) == 3 and args[2] == "admit"
    try:
        try:
            with open(env["metadata_file"], "rb") as handle:
                metadata = handle.read(MAX_METADATA + 1)
        except KeyError:
            raise Refused("no metadata_file in the environment") from None
        except OSError as exc:
            raise Refused(f"metadata file: {exc.strerror}") from None
        check(env.get("metadata_type", ""), metadata, args[0], timestamp_keys=timestamp_keys)
    except Refused as exc:
        # One line in the gateway's journal (OpenVPN's stderr) per refused attempt.
        print(f"tls-crypt-v2-verify: refused: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
