"""A fleet rollout that reaches devices only through the VPN: SSH through the API's CONNECT tunnel.

The registry inventory plugin, given `tunnel_proxy` (lab-api's CONNECT listener), gives every
device of one customer a ProxyCommand of `iotistic-vpn device tunnel`, run with a token of that
customer that allows port 22 only: control node -> lab-api -> the gateway holding the device ->
its tunnel -> the device's sshd, which its own firewall takes only on the tunnel interface.
Host keys are checked strictly, under each device's id (HostKeyAlias).

`playbooks/devices.yml` rolls a setting out to acme's devices that way in serial batches, runs
again with changed=0, is timed against the same playbook over the lab network in the same run
(these devices have both ways in, so the two can be compared), and rolls the setting back.
test_15 does the same for devices the control node has no route to, and a device offline.
"""

from __future__ import annotations

import ipaddress
import json
import time

import pytest

from iotistic_vpn import conventions
from tests.e2e.lab import (
    CLIENT_UNIT,
    REPO,
    ansible_playbook,
    fleet,
    in_container,
    ssh_logins_from,
    tunnel_inventory,
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
    """The inventory sources of a rollout through the tunnel: the lab's (the role's lab
    settings), then the registry source, whose host variables win."""
    with tunnel_inventory(WORK, CUSTOMER, {d: d for d in devices}) as source:
        yield ("-i", str(source))


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
        sources = ssh_logins_from(device, started)
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
