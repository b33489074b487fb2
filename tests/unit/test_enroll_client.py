"""iotistic-vpn-enroll's rules that need no API: standard library only, settings, backoff."""

from __future__ import annotations

import ast
import select
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from iotistic_vpn import enroll_client as ec

CLIENT = Path(ec.__file__)


def test_the_client_imports_only_the_standard_library():
    # It is copied alone onto devices: no package, no third-party module.
    tops = set()
    for node in ast.walk(ast.parse(CLIENT.read_text())):
        if isinstance(node, ast.Import):
            tops.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "a relative import ties the client to the package"
            tops.add(node.module.split(".")[0])
    assert tops - set(sys.stdlib_module_names) == set()


def test_backoff_grows_is_capped_jittered_and_honours_retry_after():
    waits = [[ec.backoff(n, 1.0, 8.0) for _ in range(200)] for n in range(1, 7)]
    assert [max(w) <= cap for w, cap in zip(waits, (1, 2, 4, 8, 8, 8), strict=True)] == [True] * 6
    assert len({round(w, 3) for w in waits[3]}) > 100  # jittered, not in lockstep
    assert ec.backoff(1, 1.0, 8.0, retry_after=20.0) == 20.0


def test_settings_come_from_the_file_then_the_environment(tmp_path):
    conf = tmp_path / "enroll.conf"
    conf.write_text("# a comment\nAPI_URL=https://api.example.net\nTOKEN_FILE=/x\nSERIAL=A1\n")
    got = ec.load_settings(str(conf), {"IOTISTIC_ENROLL_SERIAL": "B2"})
    assert (got["API_URL"], got["SERIAL"], got["MAX_ATTEMPTS"]) == (
        "https://api.example.net", "B2", "10",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ("TOKEN_FILE=/x\n", "API_URL is not set"),
        ("API_URL=http://api.example.net\nTOKEN_FILE=/x\n", "use https://"),
        ("API_URL https://a\n", "not KEY=VALUE"),
    ],
)
def test_a_bad_setting_is_named(tmp_path, lines, message):
    conf = tmp_path / "enroll.conf"
    conf.write_text(lines)
    with pytest.raises(ec.SetupError, match=message):
        ec.load_settings(str(conf), {})


def test_a_token_file_others_can_read_is_refused(tmp_path):
    token = tmp_path / "token"
    token.write_text("ivpp_x\n")
    token.chmod(0o644)
    with pytest.raises(ec.SetupError, match="is mode 644: make it 0600"):
        ec.read_token(str(token))
    token.chmod(0o600)
    assert ec.read_token(str(token)) == "ivpp_x"


def test_a_serial_file_with_a_trailing_nul_names_the_device(tmp_path):
    serial = tmp_path / "serial-number"
    serial.write_bytes(b"10000000abcdef\x00")
    assert ec.identity({"SERIAL_FILE": str(serial)}) == {"device": None,
                                                         "serial": "10000000abcdef"}  # fmt: skip


def test_the_client_writes_where_the_device_role_reads():
    # The client cannot import the package (it is copied alone): its names are held to the
    # role's here.
    role = yaml.safe_load((CLIENT.parents[2] / "roles/openvpn_device/vars/main.yml").read_text())
    assert ec.DEFAULTS["PKI_DIR"] == role["_openvpn_device_pki_dir"]
    assert {ec.KEY, ec.CERT, ec.CHAIN, ec.TLS_CRYPT} == set(role["_openvpn_device_credentials"])


def test_each_retry_reaches_a_pipe_while_the_client_still_waits(tmp_path):
    """Under systemd stdout is a pipe to the journal: the operator sees a retry when it happens,
    not when the client gives up minutes later."""
    token = tmp_path / "token"
    token.write_text("ivpp_x\n")
    token.chmod(0o600)
    conf = tmp_path / "enroll.conf"
    conf.write_text(
        # Nothing listens on loopback's discard port; the wait after attempt 1 is 60 s or more.
        f"API_URL=https://127.0.0.1:9\nTOKEN_FILE={token}\nDEVICE_ID=pipe-1\n"
        f"PKI_DIR={tmp_path / 'pki'}\nBACKOFF_BASE_S=60\nBACKOFF_CAP_S=60\nTIMEOUT_S=2\n"
    )
    client = subprocess.Popen(
        [sys.executable, "-I", str(CLIENT), str(conf)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        ready, _, _ = select.select([client.stdout], [], [], 30)
        assert ready, "no line reached the pipe within 30 s"
        line = client.stdout.readline()
        assert client.poll() is None, "the client exited: this proves nothing about buffering"
    finally:
        client.kill()
        client.wait(10)
    assert line.startswith("attempt 1 failed (cannot reach https://127.0.0.1:9/v1/enroll"), line
