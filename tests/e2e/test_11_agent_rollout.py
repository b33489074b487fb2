"""An agent setting rolled out across the lab's gateways: one gateway at a time, no tunnel dropped.

`playbooks/gateways.yml` with a changed `gateway_agent_reconcile_interval_s` rewrites each
agent's configuration, so the role's handler restarts the agent. Restarting the agent drains
nothing (only iotistic-gateway-drain.service does, at shutdown): the OpenVPN instances keep
every tunnel and the new agent adopts them. Asserted on the devices themselves (their OpenVPN
client never initialised a tunnel again), on the gateways (each agent adopted its clients and
drained none, the second restarted only after the first was healthy) and through the API.
The setting is then rolled back on both gateways at once, so the lab ends as it began.
"""

from __future__ import annotations

from tests.e2e.lab import (
    CLIENT_UNIT,
    GATEWAYS,
    agent_answers,
    ansible_playbook,
    fleet,
    in_container,
)

AGENT = "iotistic-gateway-agent"


def _tunnels_started(device: str) -> int:
    """How many times the device's OpenVPN client brought its tunnel up (its journal)."""
    log = in_container(device, "journalctl", "-u", CLIENT_UNIT, "--no-pager", "-o", "cat").stdout
    return log.count("Initialization Sequence Completed")


def _agent_started_at(gateway: str) -> int:
    """When the gateway's agent last started, in microseconds of the host's monotonic clock
    (one kernel: comparable across the lab's containers)."""
    out = in_container(gateway, "systemctl", "show", "-p", "ActiveEnterTimestampMonotonic",
                       "--value", AGENT).stdout  # fmt: skip
    return int(out.strip())


def _agent_log(gateway: str) -> str:
    """The log of the agent's current run (its systemd invocation)."""
    invocation = in_container(gateway, "systemctl", "show", "-p", "InvocationID", "--value",
                              AGENT).stdout.strip()  # fmt: skip
    return in_container(gateway, "journalctl", f"_SYSTEMD_INVOCATION_ID={invocation}",
                        "--no-pager", "-o", "cat").stdout  # fmt: skip


def _roll_out(record_property, label: str, *extra: str, one_by_one: bool = True) -> None:
    devices = [d for d in fleet() if d.connected]
    assert len(devices) >= 4, [d.id for d in devices]
    tunnels = {d.id: _tunnels_started(d.id) for d in devices}
    started = {gw: _agent_started_at(gw) for gw in GATEWAYS}

    run = ansible_playbook("gateways.yml", *extra)

    record_property(f"{label}_s", round(run.seconds, 1))
    print(f"\ngateways.yml ({label}): {run.seconds:.1f} s")
    assert run.returncode == 0, run.messages()
    restarted = {gw: _agent_started_at(gw) for gw in GATEWAYS}
    assert all(restarted[gw] > started[gw] for gw in GATEWAYS), (started, restarted)
    for gw in GATEWAYS:
        log = _agent_log(gw)
        assert "draining" not in log, f"{gw}: the agent drained on a restart:\n{log}"
        if any(d.gateway == gw for d in devices):
            assert "adopted" in log, f"{gw}: the restarted agent adopted no session:\n{log}"
    # One gateway at a time: the second agent restarted once the first was healthy and the
    # second gateway's roles had run, seconds later (together, both restart within a second).
    first, second = sorted(GATEWAYS, key=restarted.get)
    gap_s = (restarted[second] - restarted[first]) / 1e6
    record_property(f"{label}_restart_gap_s", round(gap_s, 1))
    if one_by_one:
        assert gap_s > 3, f"{first} and {second} restarted {gap_s:.1f} s apart"
    assert {d.id: _tunnels_started(d.id) for d in devices} == tunnels, "a tunnel was rebuilt"
    assert all(agent_answers(d) for d in devices)


def test_an_agent_setting_rolled_out_gateway_by_gateway_drops_no_tunnel(record_property):
    _roll_out(record_property, "agent_rollout", "-e", "gateway_agent_reconcile_interval_s=29")
    # The default again, so the lab ends as it began; both gateways in one batch (about half
    # the time), which must drop no tunnel either: an agent restart never drains.
    _roll_out(record_property, "agent_rollback", "-e", "gateways_rollout_batch=2",
              one_by_one=False)  # fmt: skip
