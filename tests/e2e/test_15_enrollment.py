"""Devices that enroll themselves: new containers, no credentials from the control node.

A provisioning token of a new customer (initech, two uses, ids `field-*`), and two fresh
containers from the lab's base image that no playbook has provisioned. `playbooks/devices.yml`
with `openvpn_device_enrollment` (what a device image build runs, here with the token) installs
the enroll client, its unit and the token; the device makes its own key, enrolls over lab-api's
HTTPS listener (its certificate checked against the lab API's CA, by name), and starts its
tunnel with what the answer gave it: its certificate, the CA chain, a tls-crypt-v2 key naming it
and the gateways' remotes. Timed from the playbook's start to every device online in the
registry with its agent answering through the API; a second run changes nothing.

Last, because it adds a customer and two devices to the fleet that the other tests count.
"""

from __future__ import annotations

import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
import yaml

from tests.e2e.lab import (
    API,
    LAB_LABEL,
    NETWORK,
    REPO,
    agent_answers,
    ansible_playbook,
    in_container,
    lab_address,
    lab_devices,
    podman,
    registry,
    wait_for,
    wait_system_running,
)

CUSTOMER = "initech"
# Ids of this run's own (a rerun on the same lab makes new devices: an enrolled id with another
# key is refused, as it should be); the token admits field-*.
RUN = uuid.uuid4().hex[:6]
DEVICES = (f"field-{RUN}-1", f"field-{RUN}-2")
HTTPS_PORT = 8443  # inventory/lab/group_vars/all.yml lab_api_https_port
WORK = REPO / "build/e2e/enroll"
PKI_DIR = "/etc/openvpn/client/iotistic"
ONE_BATCH = "@playbooks/vars/new_fleet.yml"  # new devices: no tunnel to keep


def _container(device: str) -> str:
    return f"lab-{device}"


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
def containers():
    """Fresh systemd containers on the lab network, labelled so `lab.sh down` removes them;
    lab-api by name in /etc/hosts (its certificate's name)."""
    api = lab_address(API)
    for device in DEVICES:
        podman("rm", "-f", "-t", "0", _container(device))
        podman("run", "-d", "--name", _container(device), "--hostname", device,
               "--label", LAB_LABEL, "--network", NETWORK,
               "--add-host", f"{API}:{api}", "--cap-add", "NET_ADMIN", "--device", "/dev/net/tun",
               "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024",
               "--systemd", "always", "localhost/lab-base:12", "/sbin/init",
               check=True)  # fmt: skip
    for device in DEVICES:
        wait_system_running(_container(device))
    return DEVICES


@pytest.fixture(scope="module")
def inventory(token, containers):
    """The new devices over `podman exec` (no SSH, no address the control node configured),
    enrolling with the token: written 0600, never on a command line. Their own inventory only:
    inventory/lab's group variables are for the devices the control node provisions."""
    WORK.mkdir(parents=True, exist_ok=True)
    path = WORK / "field.yml"
    path.touch(mode=0o600)
    path.write_text(yaml.safe_dump({"all": {"children": {"devices": {
        "hosts": {d: {"ansible_host": _container(d)} for d in containers},
        "vars": {
            "ansible_connection": "containers.podman.podman",
            "ansible_python_interpreter": "/usr/bin/python3",
            "customer": CUSTOMER,
            "openvpn_device_enrollment": True,
            "openvpn_device_enroll_api_url": f"https://{API}:{HTTPS_PORT}",
            "openvpn_device_enroll_token": token.value,
            "openvpn_device_enroll_ca_bundle": str(REPO / "build/lab/api-tls/ca/ca-chain.crt"),
            "openvpn_device_standin_agent": True,
            "openvpn_device_start_jitter_s": 3,
        },
    }}}}))  # fmt: skip
    return path


def _enrolled_and_answering(device: str) -> bool:
    found = lab_devices().get(device)
    return (
        found is not None
        and found.customer_id == CUSTOMER
        and found.connected
        and agent_answers(found, timeout=3)
    )


def test_new_devices_enroll_themselves_come_up_and_a_second_run_changes_nothing(
    inventory, record_property
):
    started = time.monotonic()
    run = ansible_playbook("devices.yml", "-e", ONE_BATCH, inventory=inventory)
    assert run.returncode == 0, run.messages()
    assert sorted(run.stats) == sorted(DEVICES), sorted(run.stats)

    def up(device: str) -> None:
        wait_for(lambda: _enrolled_and_answering(device), 120, f"{device} enrolled and answering")

    with ThreadPoolExecutor(len(DEVICES)) as pool:
        list(pool.map(up, DEVICES))
    took = time.monotonic() - started
    record_property("enroll_to_answering_s", round(took, 1))
    print(f"\n{len(DEVICES)} devices: devices.yml to enrolled and answering through the API "
          f"{took:.1f} s (playbook {run.seconds:.1f} s)")  # fmt: skip

    for device in DEVICES:
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
            assert f"remote {lab_address(gateway)} 1194 udp" in remotes, remotes
        state = json.loads(in_container(container, "cat", f"{PKI_DIR}/enrollment.json").stdout)
        assert (state["device"], state["customer"]) == (device, CUSTOMER)
        assert state["address"] == lab_devices()[device].vpn_address
    with registry() as reg:
        entries = reg.audit_log(action="enroll", customer_id=CUSTOMER, limit=50)
    enrolled = {e.device_id for e in entries}
    assert set(DEVICES) <= enrolled, enrolled

    again = ansible_playbook("devices.yml", "-e", ONE_BATCH, inventory=inventory)
    assert again.returncode == 0, again.messages()
    assert again.changed_hosts() == {}, again.changed_tasks()
