"""A fleet rollout that reaches devices only through the VPN: SSH through the API's CONNECT tunnel.

The registry inventory plugin, given `tunnel_proxy` (lab-api's CONNECT listener), gives every
device of one customer a ProxyCommand of `iotistic-vpn device tunnel`, run with a token of that
customer that allows port 22 only: control node -> lab-api -> the gateway holding the device ->
its tunnel -> the device's sshd, which its own firewall takes only on the tunnel interface.
Host keys are checked strictly, under each device's id (HostKeyAlias).

`playbooks/devices.yml` rolls a setting out to acme's devices that way in serial batches, runs
again with changed=0, is timed against the same playbook over the lab network in the same run,
and rolls the setting back. A device that is offline fails the same playbook at once with the
API's 503 (in its audit log), instead of hanging.
"""

from __future__ import annotations

import ipaddress
import json
import re
import time
from datetime import UTC, datetime

import pytest
import yaml

from iotistic_vpn import conventions
from tests.e2e.lab import (
    API,
    CLIENT_UNIT,
    CONNECT_PORT,
    REPO,
    agent_answers,
    ansible_playbook,
    fleet,
    in_container,
    lab_address,
    lab_devices,
    new_token,
    registry,
    registry_dsn,
    wait_for,
)

CUSTOMER = "acme"
# The setting rolled out: one more port the device takes on its tunnel (the firewall reloads;
# the tunnel carrying the rollout stays up).
OPENED = json.dumps({"openvpn_device_firewall_ports": [48484, 22, 1880]})
WORK = REPO / "build/e2e/tunnel"


@pytest.fixture(scope="module")
def devices():
    found = sorted(d.id for d in fleet() if d.customer_id == CUSTOMER and d.connected)
    assert len(found) >= 2, f"the lab needs two connected {CUSTOMER} devices: {found}"
    return found


@pytest.fixture(scope="module")
def through_tunnel(devices):
    """The inventory sources and environment of a rollout through the tunnel."""
    WORK.mkdir(parents=True, exist_ok=True)
    known_hosts = WORK / "known_hosts"
    # podman exec is a channel the control node already trusts: keys read through it can be
    # checked strictly, filed under each device's id.
    lines = []
    for device in devices:
        key = in_container(device, "cat", "/etc/ssh/ssh_host_ed25519_key.pub").stdout.split()
        lines.append(f"{device} {key[0]} {key[1]}\n")
    known_hosts.write_text("".join(lines))
    known_hosts.chmod(0o600)
    source = WORK / "registry.iotistic_vpn.yml"
    source.write_text(yaml.safe_dump({
        "plugin": "iotistic_vpn_registry",
        "customers": [CUSTOMER],
        "tunnel_proxy": f"{lab_address(API)}:{CONNECT_PORT}",
        "tunnel_ssh_common_args":
            f"-o StrictHostKeyChecking=yes -o UserKnownHostsFile={known_hosts}",
    }))  # fmt: skip
    token = new_token(CUSTOMER, read_only=False, ports=(22,))
    mp = pytest.MonkeyPatch()
    # The DSN and the token reach the plugin and the ProxyCommand from the environment only.
    mp.setenv("IOTISTIC_VPN_REGISTRY_DSN", registry_dsn())
    mp.setenv("IOTISTIC_VPN_TOKEN", token.value)
    yield ("-i", str(source))
    mp.undo()


def _devices_yml(devices: list[str], inventory: tuple[str, ...], *extra: str):
    """devices.yml on these devices, one first, then the rest: the lab's inventory (the role's
    lab settings), with the registry source after it when `inventory` names it (its host
    variables win)."""
    batches = json.dumps({"rollout_batches": [1, "100%"]})
    return ansible_playbook("devices.yml", *inventory, "--limit", ",".join(devices),
                            "-e", batches, *extra)  # fmt: skip


def _reached_through_tunnel(run, devices: list[str]) -> None:
    assert run.returncode == 0, run.messages()
    assert sorted(run.stats) == devices, sorted(run.stats)


def _ssh_logins_from(device: str, since: float) -> set[str]:
    """The addresses root logged in to the device's sshd from since then (its journal)."""
    log = in_container(device, "journalctl", "-u", "ssh", "--since", f"@{int(since)}",
                       "--no-pager", "-o", "cat").stdout  # fmt: skip
    return set(re.findall(r"Accepted publickey for root from (\S+)", log))


def _tunnels_started(device: str) -> int:
    log = in_container(device, "journalctl", "-u", CLIENT_UNIT, "--no-pager", "-o", "cat").stdout
    return log.count("Initialization Sequence Completed")


def test_a_setting_rolls_out_through_the_tunnel_idempotently_at_about_direct_speed(
    devices, through_tunnel, record_property
):
    tunnels = {d: _tunnels_started(d) for d in devices}
    started = time.time()
    rollout = _devices_yml(devices, through_tunnel, "-e", OPENED)
    _reached_through_tunnel(rollout, devices)
    assert set(rollout.changed_hosts()) == set(devices), rollout.changed_tasks()
    for device in devices:
        rules = in_container(device, "nft", "list", "set", "inet", "iotistic_device",
                             "service_ports").stdout  # fmt: skip
        assert "1880" in rules, f"{device}: {rules}"
    # Every login came from a gateway's tunnel address (the tunnel service's side), none from
    # the control node on the lab network.
    gateways = conventions.gateway_network()
    for device in devices:
        sources = _ssh_logins_from(device, started)
        assert sources, f"{device}: no SSH login in its journal"
        assert all(ipaddress.ip_address(a) in gateways for a in sources), (device, sources)
    tunnel_again = _devices_yml(devices, through_tunnel, "-e", OPENED)
    _reached_through_tunnel(tunnel_again, devices)
    assert tunnel_again.changed_hosts() == {}, tunnel_again.changed_tasks()

    direct = _devices_yml(devices, (), "-e", OPENED)  # the same work over the lab network
    assert direct.returncode == 0 and direct.changed_hosts() == {}, direct.messages()
    ratio = tunnel_again.seconds / direct.seconds
    record_property("tunnel_rollout_s", round(tunnel_again.seconds, 1))
    record_property("direct_rollout_s", round(direct.seconds, 1))
    print(f"\ndevices.yml on {len(devices)} devices, nothing to change: through the tunnel "
          f"{tunnel_again.seconds:.1f} s, direct {direct.seconds:.1f} s: {ratio:.2f}x "
          f"(goal at most 1.5x)")  # fmt: skip

    rollback = _devices_yml(devices, through_tunnel)  # the role's default ports again
    _reached_through_tunnel(rollback, devices)
    assert set(rollback.changed_hosts()) == set(devices), rollback.changed_tasks()
    assert {d: _tunnels_started(d) for d in devices} == tunnels, "a tunnel was rebuilt"


def test_an_offline_device_fails_the_rollout_at_once_with_the_apis_answer(devices, through_tunnel):
    device = devices[-1]
    in_container(device, "systemctl", "stop", CLIENT_UNIT)
    try:
        wait_for(lambda: not lab_devices()[device].connected, 30, f"{device} offline")
        since = datetime.now(UTC)
        started = time.monotonic()
        run = _devices_yml([device], through_tunnel)
        took = time.monotonic() - started
        assert run.returncode != 0
        assert run.failed_hosts() == [device], run.stats
        plays = json.loads(run.stdout)["plays"]
        unreachable = [str(r.get("msg", "")) for play in plays for task in play["tasks"]
                       for r in task["hosts"].values() if r.get("unreachable")]  # fmt: skip
        assert unreachable and "Connection closed" in unreachable[0], run.messages()
        assert took < 60, f"the rollout took {took:.0f} s to give up on {device}"
        # With ControlPersist, SSH sends its ProxyCommand's stderr to /dev/null: the API's
        # answer is in its audit log, a CONNECT to the device's SSH port answered 503.
        target = f"{device}.{CUSTOMER}:22"

        def refused() -> bool:
            with registry() as reg:
                entries = reg.audit_log(action="request", since=since, limit=50)
            return any(e.detail.get("method") == "CONNECT" and e.detail.get("path") == target
                       and e.detail.get("status") == 503 for e in entries)  # fmt: skip

        wait_for(refused, 20, f"the API's 503 for {target} in the audit log")
    finally:
        in_container(device, "systemctl", "start", "--no-block", CLIENT_UNIT)
    wait_for(lambda: lab_devices()[device].connected, 60, f"{device} back online")
    back = next(d for d in fleet() if d.id == device)
    wait_for(lambda: agent_answers(back), 30, f"{device}'s agent through the API")
