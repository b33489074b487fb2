"""tls-crypt-v2 keys: made in Python, checked against OpenVPN 2.6's own --genkey both ways."""

from __future__ import annotations

import base64
import shutil
import subprocess
import time

import pytest

from iotistic_vpn.errors import InvalidValue
from iotistic_vpn.pki import tlscrypt

needs_openvpn = pytest.mark.skipif(shutil.which("openvpn") is None, reason="openvpn not installed")


def openvpn_genkey(*args: str) -> None:
    subprocess.run(["openvpn", *args], capture_output=True, text=True, check=True, timeout=10)


def body(pem: bytes) -> bytes:
    lines = pem.decode().strip().splitlines()
    assert all(len(line) <= 64 for line in lines[1:-1])
    return base64.b64decode("".join(lines[1:-1]))


def test_formats_match_openvpn_sizes_and_headers():
    server = tlscrypt.generate_server_key()
    assert server.startswith(b"-----BEGIN OpenVPN tls-crypt-v2 server key-----\n")
    assert server.endswith(b"-----END OpenVPN tls-crypt-v2 server key-----\n")
    assert len(body(server)) == 128
    client = tlscrypt.generate_client_key(server, timestamp=1_700_000_000)
    assert client.startswith(b"-----BEGIN OpenVPN tls-crypt-v2 client key-----\n")
    # Kc (256) + tag (32) + encrypted Kc and metadata (256 + 1 + 8) + length (2)
    assert len(body(client)) == 256 + 32 + 256 + 9 + 2
    unwrapped = tlscrypt.unwrap_client_key(server, client)
    assert unwrapped.kc == body(client)[:256]
    assert (unwrapped.metadata_type, unwrapped.timestamp) == (
        tlscrypt.METADATA_TIMESTAMP,
        1_700_000_000,
    )


def test_user_metadata_round_trips():
    server = tlscrypt.generate_server_key()
    client = tlscrypt.generate_client_key(server, b"acme/dev-1")
    key = tlscrypt.unwrap_client_key(server, client)
    assert (key.metadata_type, key.metadata, key.timestamp) == (0, b"acme/dev-1", None)


@needs_openvpn
def test_openvpn_wraps_a_client_key_under_our_server_key_and_we_unwrap_it(tmp_path):
    server = tmp_path / "server.key"
    server.write_bytes(tlscrypt.generate_server_key())
    client = tmp_path / "client.key"
    before = int(time.time())
    # openvpn also unwraps the key it just made with our server key (its own self-test).
    openvpn_genkey("--tls-crypt-v2", str(server), "--genkey", "tls-crypt-v2-client", str(client))
    key = tlscrypt.unwrap_client_key(server.read_bytes(), client.read_bytes())
    assert key.metadata_type == tlscrypt.METADATA_TIMESTAMP
    assert before <= key.timestamp <= int(time.time())


@needs_openvpn
def test_we_unwrap_keys_made_entirely_by_openvpn(tmp_path):
    server, client = tmp_path / "server.key", tmp_path / "client.key"
    openvpn_genkey("--genkey", "tls-crypt-v2-server", str(server))
    openvpn_genkey("--tls-crypt-v2", str(server), "--genkey", "tls-crypt-v2-client", str(client))
    assert tlscrypt.unwrap_client_key(server.read_text(), client.read_text()).kc
    # And a client key of ours under OpenVPN's server key unwraps with our code too.
    ours = tlscrypt.generate_client_key(server.read_bytes(), b"x")
    assert tlscrypt.unwrap_client_key(server.read_bytes(), ours).metadata == b"x"


def test_a_key_of_another_fleet_is_refused():
    client = tlscrypt.generate_client_key(tlscrypt.generate_server_key())
    with pytest.raises(InvalidValue, match="does not authenticate under this server key"):
        tlscrypt.unwrap_client_key(tlscrypt.generate_server_key(), client)


def test_bad_inputs_are_named_without_echoing_key_material():
    server = tlscrypt.generate_server_key()
    with pytest.raises(InvalidValue) as err:
        tlscrypt.unwrap_client_key(server, server)
    assert str(err.value).startswith(
        "invalid tls-crypt-v2 client key '-----BEGIN OpenVPN tls-crypt-v2 server key-----': no"
    )
    name = tlscrypt.SERVER_PEM_NAME
    short = f"-----BEGIN {name}-----\nAAAA\n-----END {name}-----\n"
    with pytest.raises(
        InvalidValue, match=r"invalid tls-crypt-v2 server key '3 bytes': must hold 128"
    ):
        tlscrypt.generate_client_key(short)
    with pytest.raises(
        InvalidValue, match=r"invalid tls-crypt-v2 metadata '734 bytes': at most 733"
    ):
        tlscrypt.generate_client_key(server, b"m" * 734)
    assert tlscrypt.generate_client_key(server, b"m" * 733)  # the largest OpenVPN accepts


def test_keys_are_fresh_each_time():
    server = tlscrypt.generate_server_key()
    assert server != tlscrypt.generate_server_key()
    assert tlscrypt.generate_client_key(server) != tlscrypt.generate_client_key(server)


def test_a_key_without_its_header_is_named_by_size_not_content():
    body = tlscrypt.generate_server_key().decode().splitlines()[1]
    with pytest.raises(InvalidValue) as err:
        tlscrypt.unwrap_client_key(tlscrypt.generate_server_key(), body)
    assert body not in str(err.value)
    assert f"'<{len(body)} bytes>'" in str(err.value)
