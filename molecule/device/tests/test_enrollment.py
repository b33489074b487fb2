"""A device that enrolls itself (openvpn_device_enrollment): molecule-device-3, whose API is
not there (https://127.0.0.1:9), so it must keep trying, with its own key made, no tunnel
started, and its settings and token where the client reads them."""

import time

import pytest
import testinfra

DIR = "/etc/openvpn/client/iotistic"
CLIENT = "/usr/local/sbin/iotistic-vpn-enroll"
TOKEN_FILE = "/etc/iotistic-vpn/provisioning-token"  # noqa: S105 - a path, not a secret
UNIT = "iotistic-vpn-enroll.service"


@pytest.fixture(scope="module")
def device():
    return testinfra.get_host("podman://molecule-device-3")


def test_the_client_and_its_settings_are_installed_and_the_token_is_private(device):
    client = device.file(CLIENT)
    assert (client.user, client.mode) == ("root", 0o755)
    assert "iotistic-vpn-enroll: a device enrolls itself" in device.check_output(f"{CLIENT} --help")
    token = device.file(TOKEN_FILE)
    assert (token.user, token.mode) == ("root", 0o600)
    assert token.content_string.strip() == "ivpp_molecule_not-a-real-token"
    conf = dict(
        line.split("=", 1)
        for line in device.file("/etc/iotistic-vpn/enroll.conf").content_string.splitlines()
        if line and not line.startswith("#")
    )
    assert conf["API_URL"] == "https://127.0.0.1:9"
    assert conf["TOKEN_FILE"] == TOKEN_FILE
    assert conf["DEVICE_ID"] == "molecule-device-3"
    assert conf["PKI_DIR"] == DIR
    assert "ivpp_" not in device.file("/etc/iotistic-vpn/enroll.conf").content_string


def test_the_device_keeps_trying_with_its_own_key_while_the_api_is_away(device):
    deadline = time.monotonic() + 60
    log = ""
    while time.monotonic() < deadline:
        log = device.run(f"journalctl -u {UNIT} --no-pager -o cat").stdout
        if "attempt 1 failed" in log:
            break
        time.sleep(1)
    assert "cannot reach https://127.0.0.1:9/v1/enroll" in log, log
    assert device.service(UNIT).is_enabled
    state = device.check_output(f"systemctl show -p ActiveState --value {UNIT}")
    assert state == "activating", f"{UNIT} is {state}: it should still be retrying"
    # The key is the device's own, made before the first request and kept for the next.
    key = device.file(f"{DIR}/device.key")
    assert (key.user, key.mode) == ("root", 0o600)
    assert "PRIVATE KEY" in key.content_string
    assert not device.file(f"{DIR}/device.crt").exists


def test_the_tunnel_waits_for_the_enrollment_and_reads_its_remotes(device):
    tunnel = device.service("openvpn-client@iotistic")
    assert tunnel.is_enabled
    assert not tunnel.is_running
    condition = device.check_output(
        "systemctl show -p ConditionResult --value openvpn-client@iotistic"
    )
    assert condition in {"no", ""}, condition  # skipped by its condition, or never asked
    config = device.file("/etc/openvpn/client/iotistic.conf").content_string
    assert f"config {DIR}/remotes.conf" in config
    assert "\nremote " not in config
    timer = device.service("iotistic-vpn-enroll.timer")
    assert timer.is_enabled and timer.is_running
    # Scheduled although its service never ran ("infinity": a timer that would never fire).
    next_run = device.check_output(
        "systemctl show -p NextElapseUSecMonotonic --value iotistic-vpn-enroll.timer"
    )
    assert next_run not in {"", "infinity"}, next_run


def test_a_token_others_may_read_is_refused_naming_the_file(device):
    device.check_output(f"install -m 0644 {TOKEN_FILE} /tmp/readable-token")
    run = device.run(f"IOTISTIC_ENROLL_TOKEN_FILE=/tmp/readable-token {CLIENT}")
    assert run.rc == 3, run
    assert "TOKEN_FILE /tmp/readable-token is mode 644: make it 0600" in run.stderr
