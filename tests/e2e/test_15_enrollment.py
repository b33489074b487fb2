"""Devices in the field: built without credentials, enrolled by themselves, reached only through
their tunnel.

The field is the lab's second network (lab_field_network): its devices reach the gateways and
lab-api through the host's masquerade, as a device behind NAT does, and the control node has no
route to them (lab_up.yml). Two fresh containers there, from the lab's base image:

1. The image build: `playbooks/devices.yml` with `openvpn_device_enrollment` and no token, over
   `podman exec` (the build's channel, not a network), installs the enroll client, its unit and
   settings; the factory then writes a provisioning token of a new customer (initech, two uses,
   ids `field-*`).
2. First boot: each device makes its own key, enrolls over lab-api's HTTPS listener (checked
   against the lab API's CA, by name) and starts its tunnel with what the answer gave it: its
   certificate, the CA chain, a tls-crypt-v2 key naming it and the gateways' remotes. Timed from
   the boot to every device online in the registry and answering through the API.
3. A rollout: the same playbook, its hosts from the registry inventory plugin, SSH through the
   API's CONNECT tunnel (tests/e2e/lab.py `tunnel_inventory`), changes a setting on every device
   of initech in serial batches, every login from a gateway's tunnel address; a second run
   changes nothing. With one device's tunnel down, the same playbook fails for it at once,
   with the API's 503 in the audit log, instead of hanging.

Last, because it adds a customer and two devices to the fleet that the other tests count.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import socket
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
import yaml

from iotistic_vpn import conventions
from tests.e2e.lab import (
    API,
    CLIENT_UNIT,
    LAB_LABEL,
    REPO,
    agent_answers,
    ansible_playbook,
    in_container,
    lab_address,
    lab_devices,
    lab_vars,
    podman,
    registry,
    ssh_logins_from,
    tunnel_inventory,
    unreachable_messages,
    wait_for,
    wait_system_running,
)

CUSTOMER = "initech"
# Ids of this run's own (a rerun on the same lab makes new devices: an enrolled id with another
# key is refused, as it should be); the token admits field-*.
RUN = uuid.uuid4().hex[:6]
DEVICES = (f"field-{RUN}-1", f"field-{RUN}-2")
WORK = REPO / "build/e2e/field"
PKI_DIR = "/etc/openvpn/client/iotistic"  # roles/openvpn_device's
ONE_BATCH = json.dumps({"rollout_batches": ["100%"]})  # a new device: no tunnel to keep
IN_BATCHES = json.dumps({"rollout_batches": [1, "100%"]})
# The setting rolled out: one more port the device takes on its tunnel.
OPENED = json.dumps({"openvpn_device_firewall_ports": [48484, 22, 1880]})


def _lab() -> dict:
    """The lab's settings this test builds on (inventory/lab/group_vars/all.yml)."""
    return lab_vars("lab_field_network", "lab_api_https_port", "lab_api_ca", "lab_ssh_key",
                    "lab_secrets_dir")  # fmt: skip


def _container(device: str) -> str:
    return f"lab-{device}"


def _field_address(device: str) -> str:
    fmt = f'{{{{(index .NetworkSettings.Networks "{_lab()["lab_field_network"]}").IPAddress}}}}'
    return podman("inspect", _container(device), "--format", fmt, check=True).stdout.strip()


def _device_settings() -> dict:
    """What every initech device is built and rolled out with (no token: the factory's)."""
    return {
        "ansible_python_interpreter": "/usr/bin/python3",
        "customer": CUSTOMER,
        "openvpn_device_enrollment": True,
        "openvpn_device_enroll_api_url": f"https://{API}:{_lab()['lab_api_https_port']}",
        "openvpn_device_enroll_ca_bundle": _lab()["lab_api_ca"],
        "openvpn_device_standin_agent": True,
        "openvpn_device_start_jitter_s": 3,
    }


@pytest.fixture(scope="module")
def token():
    with registry() as reg:
        reg.ensure_customer(CUSTOMER, actor="e2e")  # as `iotistic-vpn customers add` would
        _, issued = reg.ensure_provisioning_token(
            CUSTOMER, f"e2e-factory-{uuid.uuid4().hex[:8]}", actor="e2e",
            expires_at=datetime.now(UTC) + timedelta(hours=1), max_uses=len(DEVICES),
            device_pattern="field-*",
        )  # fmt: skip
    assert issued is not None
    return issued


@pytest.fixture(scope="module")
def built(token):
    """Fresh systemd containers on the field network, labelled so `lab.sh down` removes them,
    lab-api by name in /etc/hosts (its certificate's name), the lab's SSH key authorised (the
    operator's key in the image); built by devices.yml over podman exec, the token then
    written by the factory."""
    api = lab_address(API)
    for device in DEVICES:
        podman("rm", "-f", "-t", "0", _container(device))
        podman("run", "-d", "--name", _container(device), "--hostname", device,
               "--label", LAB_LABEL, "--network", _lab()["lab_field_network"],
               "--add-host", f"{API}:{api}", "--cap-add", "NET_ADMIN", "--device", "/dev/net/tun",
               "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024",
               "-v", f"{_lab()['lab_ssh_key']}.pub:/root/.ssh/authorized_keys:ro",
               "--systemd", "always", "localhost/lab-base:12", "/sbin/init",
               check=True)  # fmt: skip
    for device in DEVICES:
        wait_system_running(_container(device))
    WORK.mkdir(parents=True, exist_ok=True)
    image_build = WORK / "image-build.yml"
    image_build.write_text(yaml.safe_dump({"all": {"children": {"devices": {
        "hosts": {d: {"ansible_host": _container(d)} for d in DEVICES},
        "vars": {"ansible_connection": "containers.podman.podman", **_device_settings()},
    }}}}))  # fmt: skip
    run = ansible_playbook("devices.yml", "-e", ONE_BATCH, inventory=image_build)
    assert run.returncode == 0, run.messages()
    assert sorted(run.stats) == sorted(DEVICES), sorted(run.stats)
    for device in DEVICES:
        container = _container(device)
        # Built, not enrolled: no certificate, the tunnel not started, the unit waiting for boot.
        assert in_container(container, "test", "-e", f"{PKI_DIR}/device.crt").returncode == 1
        assert in_container(container, "systemctl", "is-active", CLIENT_UNIT).stdout.strip() \
            != "active"  # fmt: skip
        conf = in_container(container, "cat", "/etc/iotistic-vpn/enroll.conf").stdout
        token_file = dict(line.split("=", 1) for line in conf.splitlines()
                          if "=" in line and not line.startswith("#"))["TOKEN_FILE"]  # fmt: skip
        # The factory's step: the token into the device's 0600 file, never on a command line.
        written = podman("exec", "-i", container, "sh", "-c",
                         f"umask 077 && cat > {token_file}", input=f"{token.value}\n")  # fmt: skip
        assert written.returncode == 0, written.stderr
    return DEVICES


def test_the_control_node_has_no_route_to_the_field(built):
    for device in built:
        address = _field_address(device)
        with pytest.raises(OSError) as refused:
            socket.create_connection((address, 22), timeout=3)
        assert refused.value.errno == errno.ENETUNREACH, (device, address, refused.value)


def _enrolled_and_answering(device: str) -> bool:
    found = lab_devices().get(device)
    return (
        found is not None
        and found.customer_id == CUSTOMER
        and found.connected
        and agent_answers(found, timeout=3)
    )


@pytest.fixture(scope="module")
def enrolled(built, record_testsuite_property):
    """First boot in the field: every device enrolled and answering through the API."""
    started = time.monotonic()
    for device in built:
        podman("restart", "-t", "5", _container(device), check=True)

    def up(device: str) -> None:
        wait_for(lambda: _enrolled_and_answering(device), 120, f"{device} enrolled and answering")

    with ThreadPoolExecutor(len(built)) as pool:
        list(pool.map(up, built))
    took = time.monotonic() - started
    record_testsuite_property("boot_to_answering_s", round(took, 1))
    print(f"\n{len(built)} devices: first boot to enrolled and answering through the API "
          f"{took:.1f} s")  # fmt: skip
    return built


def test_devices_enroll_themselves_at_first_boot(enrolled):
    for device in enrolled:
        container = _container(device)
        # Its own key (made on the device, 0600), a certificate naming it, and the remotes the
        # enrollment answer gave: the lab's gateways.
        mode = in_container(container, "stat", "-c", "%a", f"{PKI_DIR}/device.key").stdout.strip()
        assert mode == "600", f"{device}: device.key mode {mode}"
        subject = in_container(container, "openssl", "x509", "-noout", "-subject", "-in",
                               f"{PKI_DIR}/device.crt").stdout  # fmt: skip
        assert f"CN = {device}" in subject, subject
        remotes = in_container(container, "cat", f"{PKI_DIR}/remotes.conf").stdout
        for gateway in ("lab-gw-1", "lab-gw-2"):
            assert f"remote {lab_address(gateway)} {conventions.OPENVPN_PORT} udp" in remotes, \
                remotes  # fmt: skip
        state = json.loads(in_container(container, "cat", f"{PKI_DIR}/enrollment.json").stdout)
        assert (state["device"], state["customer"]) == (device, CUSTOMER)
        assert state["address"] == lab_devices()[device].vpn_address
    with registry() as reg:
        entries = reg.audit_log(action="enroll", customer_id=CUSTOMER, limit=50)
    assert set(enrolled) <= {e.device_id for e in entries}


@pytest.fixture(scope="module")
def rollout(enrolled):
    """devices.yml on initech's devices of this run, through the tunnel, in batches."""
    group_vars = {
        **_device_settings(),
        "ansible_user": "root",
        "ansible_ssh_private_key_file": _lab()["lab_ssh_key"],
        "ansible_ssh_args": "-o ControlMaster=auto -o ControlPersist=60s"
                            " -o ServerAliveInterval=5 -o ServerAliveCountMax=3",
        "ansible_control_path_dir": f"{_lab()['lab_secrets_dir']}/cm",
    }  # fmt: skip
    containers = {d: _container(d) for d in enrolled}
    with tunnel_inventory(WORK / "tunnel", CUSTOMER, containers, group_vars) as source:

        def run(devices, *extra: str):
            return ansible_playbook("devices.yml", "--limit", ",".join(devices), "-e",
                                    IN_BATCHES, *extra, inventory=source)  # fmt: skip

        yield run


def test_a_rollout_reaches_the_field_only_through_the_tunnel_and_runs_again_unchanged(
    enrolled, rollout
):
    started = time.time()
    changed = rollout(enrolled, "-e", OPENED)
    assert changed.returncode == 0, changed.messages()
    assert sorted(changed.stats) == sorted(enrolled), sorted(changed.stats)
    assert set(changed.changed_hosts()) == set(enrolled), changed.changed_tasks()
    gateways = conventions.gateway_network()
    for device in enrolled:
        container = _container(device)
        ports = in_container(container, "nft", "list", "set", "inet", "iotistic_device",
                             "service_ports").stdout  # fmt: skip
        assert "1880" in ports, f"{device}: {ports}"
        sources = ssh_logins_from(container, started)
        assert sources, f"{device}: no SSH login in its journal"
        assert all(ipaddress.ip_address(a) in gateways for a in sources), (device, sources)
    # Nothing left to change: one batch (the run above showed the batches).
    again = rollout(enrolled, "-e", OPENED, "-e", ONE_BATCH)
    assert again.returncode == 0, again.messages()
    assert again.changed_hosts() == {}, again.changed_tasks()
    print(f"\ndevices.yml through the tunnel on {len(enrolled)} field devices: a change "
          f"{changed.seconds:.1f} s, nothing to change {again.seconds:.1f} s")  # fmt: skip


def test_an_offline_device_fails_the_rollout_at_once_with_the_apis_answer(enrolled, rollout):
    device = enrolled[-1]
    container = _container(device)
    in_container(container, "systemctl", "stop", CLIENT_UNIT)
    try:
        wait_for(lambda: not lab_devices()[device].connected, 30, f"{device} offline")
        since = datetime.now(UTC)
        started = time.monotonic()
        run = rollout([device], "-e", OPENED)
        took = time.monotonic() - started
        assert run.returncode != 0
        assert run.failed_hosts() == [device], run.stats
        unreachable = unreachable_messages(run)
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
        in_container(container, "systemctl", "start", "--no-block", CLIENT_UNIT)
    wait_for(lambda: _enrolled_and_answering(device), 60, f"{device} back and answering")


def _serial(container: str) -> int:
    out = in_container(container, "openssl", "x509", "-noout", "-serial", "-in",
                       f"{PKI_DIR}/device.crt").stdout  # fmt: skip
    return int(out.strip().partition("=")[2], 16)


def _public_key(container: str) -> str:
    return in_container(container, "openssl", "pkey", "-pubout", "-in",
                        f"{PKI_DIR}/device.key").stdout  # fmt: skip


def _renew(container: str, *settings: str):
    """The enroll client, as its timer runs it, with a renewal window covering the whole
    validity (what a device sees near its certificate's end) and these settings."""
    env = ["-e", "IOTISTIC_ENROLL_RENEW_WITHIN_DAYS=731"]
    for setting in settings:
        env += ["-e", f"IOTISTIC_ENROLL_{setting}"]
    return podman("exec", *env, container, "/usr/local/sbin/iotistic-vpn-enroll")


def test_a_device_renews_its_certificate_through_its_tunnel(enrolled):
    """Through the gateway's renewal endpoint, never the token: on its key, the API keeps a
    certificate that is not inside its own window; on a new key it signs, the tunnel comes back
    with the new certificate, and that connect supersedes the old serial."""
    device = enrolled[0]
    container = _container(device)
    old_serial, old_key = _serial(container), _public_key(container)
    since = datetime.now(UTC)

    kept = _renew(container)
    assert kept.returncode == 0, kept.stdout + kept.stderr
    assert f"the API kept certificate {old_serial}" in kept.stdout, kept.stdout
    assert _serial(container) == old_serial

    started = time.monotonic()
    renewed = _renew(container, "RENEW_NEW_KEY=1")
    took = time.monotonic() - started
    assert renewed.returncode == 0, renewed.stdout + renewed.stderr
    new_serial = _serial(container)
    assert new_serial != old_serial
    assert f"the tunnel is up with certificate {new_serial}" in renewed.stdout, renewed.stdout
    assert _public_key(container) != old_key
    mode = in_container(container, "stat", "-c", "%a", f"{PKI_DIR}/device.key").stdout.strip()
    assert mode == "600", f"device.key mode {mode}"
    leftovers = in_container(container, "sh", "-c", f"ls {PKI_DIR}/*.old {PKI_DIR}/*.new")
    assert leftovers.stdout.strip() == "", leftovers.stdout

    def superseded() -> bool:
        with registry() as reg:
            return reg.current_serials([device]).get(device) == frozenset({new_serial})

    # The trigger revokes the old serial when the gateway's connect event (spooled, flushed
    # each second) with the new one lands.
    wait_for(superseded, 20, f"{device}'s certificate {old_serial} superseded by {new_serial}")
    with registry() as reg:
        renewals = reg.audit_log(action="renew", device_id=device, since=since, limit=10)
    assert [(e.detail["session_serial"], e.detail["serial"]) for e in renewals] == [
        (str(old_serial), str(new_serial))
    ], [e.detail for e in renewals]
    assert renewals[0].actor in {f"gateway:{g}" for g in ("lab-gw-1", "lab-gw-2")}, renewals[0]
    wait_for(lambda: _enrolled_and_answering(device), 60, f"{device} answering after renewal")
    print(f"\nrenewal through the tunnel on a new key, to the tunnel up with it: {took:.1f} s")
