"""revoke_device.yml on the lab's dedicated device: a dry run first, then the real thing.

Revocation is final (ids are never reused), so this uses REVOKE_DEVICE, which nothing else
needs; on a lab where an earlier run revoked it already, the live part cannot run again. The
playbook revokes by id from the registry alone: the live revoke runs with an inventory that
lists no devices, and a device that exists only in the registry is revoked too.
"""

from __future__ import annotations

import secrets
import time
from datetime import UTC, datetime, timedelta

import pytest
import yaml

from iotistic_vpn import conventions
from iotistic_vpn.registry import Certificate
from tests.e2e.lab import (
    GATEWAY_CRL,
    GATEWAYS,
    REPO,
    REVOKE_DEVICE,
    agent_answers,
    ansible_playbook,
    gateway_crl,
    in_container,
    lab_devices,
    registry,
    through_api,
    wait_for,
)

CRL_DIR = "/var/lib/iotistic-vpn/crl.d"
REVOKED_DIR = conventions.REVOKED_DEVICES_DIR
DEVICE_UNIT = "openvpn-client@iotistic"
STAYS_DOWN_S = 10  # well past RestartSec (5 s), when a restart would show as auto-restart
# The change feed ends the session and its tunnels milliseconds after the revocation commits,
# which is before the playbook (CRL steps) ends: the bound is slack for the API's own check.
CUT_BOUND_S = 3
# OpenVPN keeps a halted client's instance 5 s (so the HALT reaches it) before the disconnect.
DELAYED_EXIT_S = 5


@pytest.fixture
def live_device():
    """REVOKE_DEVICE, connected and not yet revoked."""
    device = lab_devices().get(REVOKE_DEVICE)
    assert device is not None, f"{REVOKE_DEVICE} is not in the lab registry (inventory/lab)"
    if device.state == "revoked":
        pytest.skip(
            f"{REVOKE_DEVICE} was revoked by an earlier run; for a fresh lab: "
            "scripts/lab.sh down && scripts/lab.sh up"
        )
    assert device.connected, f"{REVOKE_DEVICE} is not connected: {device}"
    return device


@pytest.fixture
def inventory_without_devices(tmp_path):
    """inventory/lab without its devices group: the registry and the gateways only."""
    hosts = yaml.safe_load((REPO / "inventory/lab/hosts.yml").read_text())
    groups = hosts["all"]["children"]
    del groups["devices"]
    del groups["lab_containers"]["children"]["devices"]
    inventory = tmp_path / "inventory"
    inventory.mkdir()
    (inventory / "hosts.yml").write_text(yaml.safe_dump(hosts, sort_keys=False))
    (inventory / "group_vars").symlink_to(REPO / "inventory/lab/group_vars")
    return inventory


def _crls() -> tuple[bytes, dict[str, str]]:
    """The CRL on the control node and on every gateway, to show a run changed neither."""
    control = (REPO / "build/pki/crl.pem").read_bytes()
    return control, {g: in_container(g, "cat", GATEWAY_CRL).stdout for g in GATEWAYS}


def _journal(gateway: str, since: float, *units: str) -> str:
    args = [a for u in units for a in ("-u", u)]
    return in_container(
        gateway, "journalctl", "--no-pager", "-o", "cat", f"--since=@{int(since)}", *args
    ).stdout


def _client_unit(device: str) -> dict[str, str]:
    props = "ActiveState,SubState,ExecMainStatus,NRestarts"
    out = in_container(device, "systemctl", "show", "-p", props, DEVICE_UNIT).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def test_revoke_names_a_missing_or_unknown_device():
    missing = ansible_playbook("revoke_device.yml")
    assert missing.returncode != 0
    assert "device_id is required" in " ".join(missing.messages()), missing.messages()
    states = {d.id: d.state for d in lab_devices().values()}
    crls = _crls()
    unknown = ansible_playbook("revoke_device.yml", "-e", "device_id=no-such-device")
    assert unknown.returncode != 0
    assert "device 'no-such-device' is not in the registry" in " ".join(unknown.messages()), (
        unknown.messages()
    )
    assert {d.id: d.state for d in lab_devices().values()} == states
    assert _crls() == crls


def test_revoke_dry_run_reports_the_revocation_and_changes_nothing(live_device):
    crl_before = (REPO / "build/pki/crl.pem").read_bytes()
    gateway_crls = {g: in_container(g, "cat", GATEWAY_CRL).stdout for g in GATEWAYS}

    run = ansible_playbook("revoke_device.yml", "-e", f"device_id={REVOKE_DEVICE}", "--check")

    assert run.returncode == 0, run.messages()
    assert run.stats["localhost"]["changed"] >= 1, "the dry run did not report the revocation"
    after = lab_devices()[REVOKE_DEVICE]
    assert (after.state, after.connected) == (live_device.state, True)
    with registry() as reg:
        certs = reg.certificates(live_device.customer_id, REVOKE_DEVICE)
    assert all(c.revoked_at is None for c in certs), f"a certificate was revoked: {certs}"
    assert (REPO / "build/pki/crl.pem").read_bytes() == crl_before
    assert {g: in_container(g, "cat", GATEWAY_CRL).stdout for g in GATEWAYS} == gateway_crls
    assert agent_answers(live_device), f"{REVOKE_DEVICE} does not answer through the API"


def test_revoke_cuts_the_live_tunnel_and_refuses_the_device_from_then_on(
    live_device, inventory_without_devices, record_property
):
    device = live_device
    with registry() as reg:
        serials = [c.serial for c in reg.certificates(device.customer_id, device.id)]
    assert serials, f"{device.id} has no recorded certificate"
    assert device.id not in (inventory_without_devices / "hosts.yml").read_text()
    started = time.time()

    # Nothing but its id: the inventory does not list the device, nor any device.
    run = ansible_playbook(
        "revoke_device.yml",
        "-e",
        f"device_id={device.id}",
        "-e",
        "reason=key_compromise",
        inventory=inventory_without_devices,
    )
    assert run.returncode == 0, run.messages()
    assert run.stats["localhost"]["changed"] >= 1
    t_done = time.monotonic()

    # Both bounds count from the playbook's end; the revocation committed a few seconds before.
    # Cut: the API (the only way to a device) no longer reaches it through its gateway.
    wait_for(
        lambda: not through_api(device.id, timeout=1).ok,
        CUT_BOUND_S,
        f"{device.id}'s tunnel via {device.gateway} to be cut",
        interval=0.2,
    )
    cut_s = time.monotonic() - t_done
    wait_for(
        lambda: not lab_devices()[device.id].connected,
        CUT_BOUND_S + DELAYED_EXIT_S,
        f"the registry to show {device.id} disconnected",
    )
    gone_s = time.monotonic() - t_done
    record_property("revoke_cut_s", round(cut_s, 1))
    print(
        f"\nrevoke: tunnel cut {cut_s:.1f} s and the registry updated {gone_s:.1f} s after the"
        f" playbook ended ({run.seconds:.1f} s run)"
    )

    # The registry: revoked, every certificate with the reason given.
    with registry() as reg:
        certs = reg.certificates(device.customer_id, device.id)
    assert lab_devices()[device.id].state == "revoked"
    assert {(c.serial, c.revocation_reason) for c in certs} == {
        (s, "key_compromise") for s in serials
    }

    # The published CRL on every gateway lists the serials; the agents' crl.d has them.
    for gateway in GATEWAYS:
        crl = gateway_crl(gateway)
        listed = [s for s in serials if crl.get_revoked_certificate_by_serial_number(s)]
        assert listed == serials, f"{gateway}'s CRL lacks {set(serials) - set(listed)}"
        for serial in serials:
            wait_for(
                lambda g=gateway, s=serial: (
                    in_container(g, "test", "-e", f"{CRL_DIR}/{s}").returncode == 0
                ),
                10,
                f"{CRL_DIR}/{serial} on {gateway}",
            )

    # The agent ended the session (HALT): the device's OpenVPN exits with status 0 and its
    # unit stays down (RestartPreventExitStatus=0), saying why in its journal.
    agent_log = "\n".join(_journal(g, started, "iotistic-gateway-agent") for g in GATEWAYS)
    assert f"ended the session of {device.id} (client" in agent_log, agent_log[-2000:]
    assert "HALT): device" in agent_log, agent_log[-2000:]
    wait_for(lambda: _client_unit(device.id)["ActiveState"] == "inactive", 15,
             f"{device.id}'s {DEVICE_UNIT} to stop")  # fmt: skip
    # Restarted, it would be "activating (auto-restart)" within RestartSec (5 s) + jitter (30 s).
    time.sleep(STAYS_DOWN_S)
    unit = _client_unit(device.id)
    assert (unit["ActiveState"], unit["SubState"], unit["ExecMainStatus"]) == (
        "inactive", "dead", "0"), unit  # fmt: skip
    assert unit["NRestarts"] == "0", unit
    journal = _journal(device.id, started, DEVICE_UNIT)
    assert "Halt command was pushed by server" in journal, journal[-2000:]
    assert "halted by a gateway (revoked" in journal, journal[-2000:]

    # The device started by hand (a reboot would do the same): every attempt is dropped by the
    # gateway's tls-crypt-v2-verify before any TLS, from the agent's revoked-devices.d.
    for gateway in GATEWAYS:
        wait_for(lambda g=gateway: in_container(g, "test", "-e", f"{REVOKED_DIR}/{device.id}")
                 .returncode == 0, 10, f"{REVOKED_DIR}/{device.id} on {gateway}")  # fmt: skip
    restarted = time.time()
    in_container(device.id, "systemctl", "start", "--no-block", DEVICE_UNIT)
    refused = f"tls-crypt-v2-verify: refused: device {device.customer_id}/{device.id} is revoked"
    wait_for(
        lambda: any(refused in _journal(g, restarted, "openvpn-server@iotistic-*")
                    for g in GATEWAYS),
        60,
        f"a gateway to drop {device.id}'s attempt at tls-crypt-v2-verify",
    )  # fmt: skip
    servers = "\n".join(_journal(g, restarted, "openvpn-server@iotistic-*") for g in GATEWAYS)
    assert not any(f"serial={s} is revoked" in servers for s in serials), "TLS was reached"
    assert not lab_devices()[device.id].connected
    in_container(device.id, "systemctl", "stop", DEVICE_UNIT)

    again = ansible_playbook(
        "revoke_device.yml", "-e", f"device_id={device.id}", "-e", "reason=key_compromise"
    )
    assert again.returncode == 0, again.messages()
    assert again.changed_hosts() == {}, again.changed_tasks()


def test_revoke_a_device_only_the_registry_knows():
    """A device provisioned in the registry alone (no inventory, no container) is revoked by id."""
    device_id = f"globex-ghost-{secrets.token_hex(3)}"  # ids are never reused: one per run
    serial = secrets.randbits(63) | 1 << 62
    now = datetime.now(UTC)
    with registry() as reg:
        reg.provision_devices("globex", [device_id], actor="e2e")
        reg.record_certificates(
            "globex",
            [Certificate(serial, device_id, secrets.token_hex(32), now, now + timedelta(days=1))],
            actor="e2e",
        )
    try:
        run = ansible_playbook(
            "revoke_device.yml",
            "-e",
            f"device_id={device_id}",
            "-e",
            "reason=cessation_of_operation",
        )
        assert run.returncode == 0, run.messages()
        assert run.stats["localhost"]["changed"] >= 1
    finally:
        # Whatever happened, it must not stay in the fleet as a device that never connects.
        with registry() as reg:
            reg.revoke_devices("globex", [device_id], actor="e2e", reason="cessation_of_operation")

    assert lab_devices()[device_id].state == "revoked"
    with registry() as reg:
        certs = reg.certificates("globex", device_id)
    assert [(c.serial, c.revocation_reason) for c in certs] == [(serial, "cessation_of_operation")]
    for gateway in GATEWAYS:
        assert gateway_crl(gateway).get_revoked_certificate_by_serial_number(serial), (
            f"{gateway}'s CRL lacks {serial}"
        )

    again = ansible_playbook("revoke_device.yml", "-e", f"device_id={device_id}")
    assert again.returncode == 0, again.messages()
    assert again.changed_hosts() == {}, again.changed_tasks()
