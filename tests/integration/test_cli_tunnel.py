"""`iotistic-vpn device tunnel`: a device port on stdin/stdout through the API's CONNECT tunnel,
what SSH's ProxyCommand runs for a rollout that reaches devices only through the VPN.

Against the namespaced gateway with real OpenVPN devices and the API as its own process
(tests/support/api_harness.py); the CLI is the installed entry point, run as SSH would run it.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.support.ansible_run import REPO
from tests.support.api_harness import gateway_with_api

pytestmark = pytest.mark.postgres
CLI = str(Path(sys.executable).with_name("iotistic-vpn"))
REQUEST = b"GET /v1/device HTTP/1.1\r\nHost: device\r\nConnection: close\r\n\r\n"


@pytest.fixture
def lab(start_gateway, pg_server):
    gw, api, _ = gateway_with_api(start_gateway, pg_server)
    yield gw, api
    print(api.log()[-4000:])  # shown by pytest when the test failed


def _tunnel(
    gw, token: str, device: str, port: int, *, customer: str = "acme", proxy: str | None = None
) -> subprocess.CompletedProcess:
    """The CLI as SSH runs a ProxyCommand: the token and the listener from its environment."""
    env = {**os.environ, "IOTISTIC_VPN_TOKEN": token,
           "IOTISTIC_VPN_TUNNEL_PROXY": proxy or f"unix:{gw.work / 'connect.sock'}"}  # fmt: skip
    argv = [CLI, "device", "tunnel", device, str(port), "--customer", customer]
    return subprocess.run(argv, input=REQUEST, capture_output=True, timeout=30, env=env,
                          check=False)  # fmt: skip


def test_the_tunnel_carries_stdin_to_the_device_port_and_its_answer_to_stdout(lab):
    gw, api = lab
    token = api.token("ssh-rollout", "acme", ports=[48484])

    run = _tunnel(gw, token, "dev-a", 48484)

    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith(b"HTTP/1.1 200"), run.stdout[:200]
    assert b'"device_id": "dev-a"' in run.stdout
    assert run.stderr == b""


def test_refusals_fail_at_once_naming_the_target_and_the_apis_reason(lab):
    gw, api = lab
    token = api.token("ssh-only", "acme", ports=[22])
    cases = [
        ("dev-b", 22, "acme", token, "503"),  # ours, offline: a rollout fails, never hangs
        ("dev-a", 48484, "acme", token, "403"),  # a port the token does not allow
        ("dev-g", 22, "globex", token, "404"),  # another customer's device
        ("dev-a", 22, "acme", "not-a-token", "407"),
    ]
    for device, port, customer, value, status in cases:
        started = time.monotonic()
        run = _tunnel(gw, value, device, port, customer=customer)
        took = time.monotonic() - started
        message = run.stderr.decode()
        assert run.returncode == 1, (device, port, message)
        assert f"{device}.{customer}:{port}" in message and f" {status} " in message, message
        assert run.stdout == b""
        assert took < 10, f"{device}: refused after {took:.1f} s"  # a CLI start, never a hang


def test_an_api_that_is_not_there_is_named(lab, tmp_path):
    gw, api = lab
    token = api.token("ssh-away", "acme", ports=[48484])

    run = _tunnel(gw, token, "dev-a", 48484, proxy=f"unix:{tmp_path / 'nothing.sock'}")

    assert run.returncode == 1
    assert "cannot reach the API's tunnel" in run.stderr.decode()
    assert "nothing.sock" in run.stderr.decode()


def test_the_inventorys_proxy_command_reaches_the_device_as_ssh_runs_it(lab, tmp_path):
    """The registry inventory plugin's ProxyCommand, run the way SSH runs one (%p replaced by
    the port, through the shell), carries a connection to the device: no route needed."""
    gw, api = lab
    source = tmp_path / "fleet.iotistic_vpn.yml"
    source.write_text(yaml.safe_dump({"plugin": "iotistic_vpn_registry", "dsn": api.dsn,
                                      "tunnel_proxy": f"unix:{gw.work / 'connect.sock'}",
                                      "tunnel_command": CLI}))  # fmt: skip
    listed = subprocess.run(
        [str(Path(sys.executable).with_name("ansible-inventory")), "-i", str(source), "--list"],
        capture_output=True, text=True, cwd=REPO, timeout=120, check=False,
        env={**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg")},
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    args = json.loads(listed.stdout)["_meta"]["hostvars"]["dev-a"]["ansible_ssh_common_args"]
    args = args["__ansible_unsafe"] if isinstance(args, dict) else args
    option, _, command = shlex.split(args)[1].partition("=")
    assert option == "ProxyCommand" and " %p " in command, args
    assert "-o HostKeyAlias=dev-a" in args  # known by its id, not by an address

    run = subprocess.run(
        ["/bin/sh", "-c", "exec " + command.replace("%p", "48484")], input=REQUEST,
        capture_output=True, timeout=30, check=False,
        env={**os.environ, "IOTISTIC_VPN_TOKEN": api.token("ssh", "acme", ports=[48484])},
    )  # fmt: skip

    assert run.returncode == 0, run.stderr
    assert b'"device_id": "dev-a"' in run.stdout
