"""tlsverify.sh, run as OpenVPN runs it on a gateway (`/bin/sh tlsverify.sh DIR`, as nobody).

The real handshakes (OpenVPN calling it, a refused key never reaching TLS) are in
tests/integration/test_openvpn_handshake.py; here each kind of metadata, the identifier rules
it shares with identifiers.py (through tlsverify.parse_identity), and the time a run takes.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import time
from pathlib import Path

import pytest

from iotistic_vpn import conventions, tlsverify
from iotistic_vpn.pki import tlscrypt

PACKAGE = Path(tlsverify.__file__).parent


@pytest.fixture
def installed(tmp_path):
    """The script as the openvpn_gateway role installs it, and a revoked-devices directory."""
    lib = tmp_path / "lib"
    lib.mkdir()
    shutil.copy(PACKAGE / "tlsverify.sh", lib / "tlsverify.sh")
    revoked = tmp_path / "revoked-devices.d"
    revoked.mkdir()
    (revoked / "dev-r").touch()
    return lib / "tlsverify.sh", revoked


def run(installed, metadata_type, metadata: bytes, *args, revoked_dir=None):
    script, revoked = installed
    meta = script.parent.parent / "metadata"
    meta.write_bytes(metadata)
    env = {"script_type": "tls-crypt-v2-verify", "metadata_type": str(metadata_type),
           "metadata_file": str(meta), "PATH": os.environ.get("PATH", "")}  # fmt: skip
    argv = ["/bin/sh", str(script), str(revoked_dir or revoked), *args]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=10)


def test_a_key_naming_a_good_device_is_admitted_silently(installed):
    proc = run(installed, 0, tlsverify.identity("acme", "dev-a"))
    assert (proc.returncode, proc.stderr) == (0, "")


def test_a_key_naming_a_revoked_device_is_refused_naming_it(installed):
    proc = run(installed, 0, tlsverify.identity("acme", "dev-r"))
    assert proc.returncode == 1
    assert proc.stderr == "tls-crypt-v2-verify: refused: device acme/dev-r is revoked\n"


@pytest.mark.parametrize(
    ("metadata_type", "metadata", "why"),
    [
        (0, b"", "USER metadata '' is not urn:iotistic"),
        (0, b"urn:iotistic:acme:../dev-r", "is not urn:iotistic:<customer>:<device>"),
        (0, b"urn:iotistic:acme:dev-r\n", "is not urn:iotistic:<customer>:<device>"),
        (0, b"urn:iotistic:acme:dev-a:x", "is not urn:iotistic:<customer>:<device>"),
        (0, b"urn:iotistic:ACME:dev-a", "is not urn:iotistic:<customer>:<device>"),
        (0, b"urn:other:acme:dev-a", "is not urn:iotistic:<customer>:<device>"),
        (0, "urn:iotistic:acme:dév".encode(), "is not urn:iotistic:<customer>:<device>"),
        (0, b"urn:iotistic:acme:dev\x00-r", "USER metadata of 24 bytes is not urn:iotistic"),
        (0, b"urn:iotistic:acme:" + b"d" * 800, "USER metadata of 818 bytes is too long"),
        (1, b"\x00" * 7, "TIMESTAMP metadata of 7 bytes, not 8"),
        (1, struct.pack(">q", 1_700_000_000), "a TIMESTAMP key names no device"),
        (2, b"urn:iotistic:acme:dev-a", "metadata type '2' is neither 0 (USER) nor 1"),
        ("", b"urn:iotistic:acme:dev-a", "metadata type '' is neither"),
    ],
)
def test_malformed_or_unnamed_metadata_is_refused(installed, metadata_type, metadata, why):
    proc = run(installed, metadata_type, metadata)
    assert proc.returncode == 1, proc.stderr
    assert why in proc.stderr


def test_timestamp_keys_from_before_identity_keys_are_admitted_only_when_asked(installed):
    stamp = struct.pack(">q", 1_700_000_000)
    assert run(installed, 1, stamp, "--timestamp-keys", "admit").returncode == 0
    assert run(installed, 1, stamp, "--timestamp-keys", "refuse").returncode == 1
    bad = run(installed, 1, stamp, "--timestamp-keys", "yes")
    assert bad.returncode == 2 and "usage" in bad.stderr


def test_without_its_directory_every_named_key_is_refused(installed, tmp_path):
    proc = run(installed, 0, tlsverify.identity("acme", "dev-a"), revoked_dir=tmp_path / "none")
    assert proc.returncode == 1
    assert "none is not a directory" in proc.stderr


IDS = [
    "a",
    "ab",
    "a-b",
    "a--b",
    "-ab",
    "ab-",
    "0",
    "9a",
    "A",
    "a_b",
    "a.b",
    "a b",
    "é",
    "a" * 31,
    "a" * 32,
    "a" * 33,
    "a" * 63,
    "a" * 64,
    "",
]


@pytest.mark.parametrize("customer", IDS)
def test_the_script_admits_exactly_the_ids_the_identifier_rules_admit(installed, customer):
    """Each customer id against every device id: the script's verdict is parse_identity's."""
    for device in IDS:
        metadata = f"urn:iotistic:{customer}:{device}".encode()
        try:
            tlsverify.parse_identity(metadata)
            expected = 0
        except tlsverify.Refused:
            expected = 1
        proc = run(installed, 0, metadata)
        assert proc.returncode == expected, (customer, device, proc.stderr)


def test_the_key_vpn_tls_crypt_makes_carries_what_the_script_reads(tmp_path):
    server = tmp_path / "server.key"
    tlscrypt.ensure_keys(server, dest=tmp_path, metadata="identity",
                         clients=[{"customer": "acme", "device": "dev-a"}])  # fmt: skip
    key = tlscrypt.unwrap_client_key(
        server.read_bytes(), (tmp_path / "acme" / "dev-a.tls-crypt-v2.key").read_bytes()
    )
    assert key.metadata_type == tlsverify.METADATA_USER
    assert tlsverify.parse_identity(key.metadata) == ("acme", "dev-a")
    assert key.metadata.startswith(conventions.DEVICE_URN_PREFIX.encode())


def test_a_run_is_short(installed, capsys):
    # OpenVPN waits for the script on every connection attempt: this is the gateway's price.
    runs = 20
    start = time.perf_counter()
    for _ in range(runs):
        assert run(installed, 0, tlsverify.identity("acme", "dev-a")).returncode == 0
    per_run = (time.perf_counter() - start) / runs
    with capsys.disabled():
        print(f"\ntlsverify.sh: {per_run * 1000:.1f} ms a run ({runs} runs)")
    assert per_run < 0.5
