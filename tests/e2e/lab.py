"""The running lab (scripts/lab.sh up) as the end-to-end tests see it, and how to poke it.

Every helper talks to the real thing: the registry database in lab-registry, `podman exec` into
the gateways and devices, the cloud API in lab-api over HTTP, ansible-playbook with
inventory/lab. Waits poll with a deadline.

A device's agent is reached the one way there is: through the cloud API (`through_api`, an
operator's read-only token), which dials the tunnel service of the gateway the registry names.
No other process on a gateway can open a connection to a device: the gateway's firewall lets
only the tunnel service's marked sockets out (test_2_isolation checks that it is so).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import httpx
import pytest
import yaml
from cryptography import x509

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))

from lab_status import registry_dsn  # noqa: E402

from iotistic_vpn import conventions  # noqa: E402
from iotistic_vpn.errors import RegistryUnavailable  # noqa: E402
from iotistic_vpn.registry import Device, Registry  # noqa: E402

GATEWAYS = ("lab-gw-1", "lab-gw-2")
REGISTRY = "lab-registry"
# Revoked by test_3_revoke.py; a revoked id is never provisioned again, so nothing else uses it.
REVOKE_DEVICE = "globex-revoke-1"
AGENT_PORT = 48484
GATEWAY_HTTP_PORT = 8089
LAB_LABEL = "io.iotistic-vpn.lab=true"
NETWORK = "iotistic-lab"

T = TypeVar("T")


# -- podman ------------------------------------------------------------------------------------


def podman(
    *args: str, timeout: float = 30, check: bool = False, input: str | None = None
) -> subprocess.CompletedProcess:
    """Run podman with the lab's containers.conf; output as text, input given to its stdin."""
    env = {**os.environ, "CONTAINERS_CONF": str(REPO / "molecule/containers.conf")}
    return subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout,
                          check=check, env=env, input=input)  # fmt: skip


def in_container(name: str, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess:
    """Run a command inside a lab container."""
    return podman("exec", name, *argv, timeout=timeout)


@dataclass(frozen=True)
class Http:
    ok: bool
    code: int  # curl's exit status: 0 answered, 7 refused, 28 timed out
    body: str
    error: str

    def json(self) -> dict:
        return json.loads(self.body)


def curl(container: str, url: str, *, max_time: float = 3) -> Http:
    """HTTP GET from inside a container, as curl sees it."""
    proc = in_container(
        container, "curl", "-sS", "--max-time", str(max_time), url, timeout=max_time + 15
    )
    return Http(proc.returncode == 0, proc.returncode, proc.stdout, proc.stderr.strip())


def agent_url(address: str, path: str = "/v1/device") -> str:
    """A device agent's URL at its VPN address: for probes that must not get through."""
    return f"http://{address}:{AGENT_PORT}{path}"


def healthz(gateway: str) -> dict | None:
    """The gateway agent's /healthz JSON, or None when it does not answer."""
    answer = curl(gateway, f"http://127.0.0.1:{GATEWAY_HTTP_PORT}/healthz")
    if not answer.ok:
        return None
    try:
        return answer.json()
    except json.JSONDecodeError:
        return None


def lab_address(name: str) -> str:
    """A container's address on the lab network."""
    fmt = f'{{{{(index .NetworkSettings.Networks "{NETWORK}").IPAddress}}}}'
    return podman("inspect", name, "--format", fmt, check=True).stdout.strip()


def running_containers() -> set[str]:
    proc = podman("ps", "--filter", f"label={LAB_LABEL}", "--format", "{{.Names}}")
    return set(proc.stdout.split())


def wait_system_running(name: str, timeout: float = 60) -> None:
    """Wait until systemd in a (re)started container reports running."""
    wait_for(
        lambda: in_container(name, "systemctl", "is-system-running").stdout.strip() == "running",
        timeout,
        f"systemd in {name} to be running",
    )


# -- the registry ------------------------------------------------------------------------------


def registry() -> Registry:
    """A connection to the lab registry (use it in a with block)."""
    return Registry(registry_dsn(), connect_timeout=3)


def lab_devices() -> dict[str, Device]:
    """Every device in the lab registry, by id (one short connection per call)."""
    with registry() as reg:
        return {d.id: d for d in reg.list_devices()}


def fleet() -> list[Device]:
    """The devices that are part of the fleet: everything not revoked."""
    return sorted((d for d in lab_devices().values() if d.state != "revoked"), key=lambda d: d.id)


# -- waiting -----------------------------------------------------------------------------------


def wait_for(check: Callable[[], T], timeout: float, what: str, interval: float = 0.5) -> T:
    """Poll check() until it returns something truthy; fail naming what and the last value."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            last = check()
        except (RegistryUnavailable, subprocess.TimeoutExpired) as exc:
            last = exc
        else:
            if last:
                return last
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}; last: {last!r}")
        time.sleep(interval)


# -- ansible -----------------------------------------------------------------------------------


@dataclass
class PlaybookRun:
    returncode: int
    stats: dict[str, dict]  # host -> ok/changed/failures/unreachable/skipped
    stdout: str
    stderr: str
    seconds: float

    def changed_hosts(self) -> dict[str, int]:
        return {h: s["changed"] for h, s in self.stats.items() if s["changed"]}

    def failed_hosts(self) -> list[str]:
        return [h for h, s in self.stats.items() if s["failures"] or s["unreachable"]]

    def messages(self) -> list[str]:
        """The msg of every failed task result, for assertions and failure output."""
        try:
            plays = json.loads(self.stdout)["plays"]
        except (json.JSONDecodeError, KeyError):
            return [self.stdout[-2000:], self.stderr[-2000:]]
        return [
            str(result.get("msg", ""))
            for play in plays
            for task in play["tasks"]
            for result in task["hosts"].values()
            if result.get("failed")
        ]

    def changed_tasks(self) -> list[str]:
        """host: task for every change, to say what was not idempotent."""
        plays = json.loads(self.stdout)["plays"]
        return [
            f"{host}: {task['task']['name']}"
            for play in plays
            for task in play["tasks"]
            for host, result in task["hosts"].items()
            if result.get("changed")
        ]


def ansible_playbook(
    playbook: str, *args: str, timeout: float = 900, inventory: str | Path = "inventory/lab"
) -> PlaybookRun:
    """Run playbooks/<playbook> against inventory/lab (or another inventory), json callback."""
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
        "ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json",
        "CONTAINERS_CONF": str(REPO / "molecule/containers.conf"),
        "PATH": f"{REPO / '.venv/bin'}:{os.environ['PATH']}",
    }
    cmd = ["ansible-playbook", "-i", str(inventory), f"playbooks/{playbook}", *args]
    start = time.monotonic()
    proc = subprocess.run(
        cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=timeout, check=False
    )
    try:
        stats = json.loads(proc.stdout)["stats"]
    except (json.JSONDecodeError, KeyError):
        stats = {}
    return PlaybookRun(proc.returncode, stats, proc.stdout, proc.stderr, time.monotonic() - start)


# -- the session check -------------------------------------------------------------------------


def lab_problem(expected: Iterable[str]) -> str | None:
    """Why the lab cannot be tested, or None when every device answers through its tunnel."""
    missing = sorted(set(expected) - running_containers())
    if missing:
        return f"lab containers not running: {', '.join(missing)}"
    try:
        devices = fleet()
    except (RegistryUnavailable, subprocess.CalledProcessError, OSError) as exc:
        return f"cannot read the lab registry: {exc}"
    if not devices:
        return "the lab registry has no devices (was site.yml run?)"
    down = [d.id for d in devices if not d.connected]
    if down:
        return f"device(s) not connected: {', '.join(down)}"
    # The registry may still show a device on a session that a restart just ended.
    with ThreadPoolExecutor(len(devices)) as pool:
        answers = pool.map(lambda d: through_api(d.id, timeout=3), devices)
        silent = [f"{d.id} ({a.code} {a.error or a.body[:60]})"
                  for d, a in zip(devices, answers, strict=True) if not a.ok]  # fmt: skip
    if silent:
        return f"device(s) not answering through the API: {', '.join(silent)}"
    return None


GATEWAY_CRL = "/etc/openvpn/server/iotistic/crl.pem"  # where openvpn_gateway installs it


def gateway_crl(gateway: str) -> x509.CertificateRevocationList:
    """The CRL a gateway's instances read (crl.pem as published)."""
    return x509.load_pem_x509_crl(in_container(gateway, "cat", GATEWAY_CRL).stdout.encode())


# -- the cloud API (lab-api) -------------------------------------------------------------------

API = "lab-api"
API_PORT = conventions.API_CONTAINER_PORT  # as roles/cloud_api runs it
CONNECT_PORT = conventions.API_CONNECT_PORT  # the API's HTTP CONNECT tunnel
CLIENT_UNIT = "openvpn-client@iotistic.service"  # a device's OpenVPN client (openvpn_device)


def api_url(path: str = "") -> str:
    """The API at lab-api's own address: this machine routes to the lab network."""
    return f"http://{lab_address(API)}:{API_PORT}{path}"


def api_client(token: str | None = None, timeout: float = 10) -> httpx.Client:
    """An HTTP client for the lab's API, with the token as its bearer (use it in a with block)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=api_url(), headers=headers, timeout=timeout)


@dataclass(frozen=True)
class LabToken:
    id: str
    value: str


def new_token(
    customer: str | None, *, read_only: bool = True, ports: Iterable[int] = (AGENT_PORT,)
) -> LabToken:
    """A fresh API token for a customer (None: an operator's), made in the registry as
    `iotistic-vpn tokens create` makes it; a name of its own, so reruns never collide."""
    with registry() as reg:
        _, issued = reg.ensure_token(
            f"e2e-{uuid.uuid4().hex[:12]}",
            customer_id=customer,
            actor="e2e",
            ports=tuple(ports),
            read_only=read_only,
        )
    assert issued is not None
    return LabToken(issued.id, issued.value)


def revoke_token(token: LabToken) -> None:
    with registry() as reg:
        reg.revoke_token(token.id, actor="e2e")


def api_reaches(client: httpx.Client, device: Device) -> bool:
    """Whether the API answers for the device with that device's own identity."""
    try:
        answer = client.get(f"/v1/devices/{device.id}/proxy/v1/device")
    except httpx.HTTPError:
        return False
    if answer.status_code != 200:
        return False
    body = answer.json()
    return (body.get("device_id"), body.get("customer_id")) == (device.id, device.customer_id)


@functools.cache
def operator_token() -> LabToken:
    """One operator token for the session (read-only, the agent port): the tests' way to any
    device's agent, through the API."""
    return new_token(None)


def through_api(device: str, path: str = "/v1/device", *, timeout: float = 5) -> Http:
    """GET a device agent's path through the cloud API (lab-api, the tunnel service of the
    gateway the registry names, the device's tunnel). code: the HTTP status, 0 when the API
    did not answer."""
    try:
        with api_client(operator_token().value, timeout=timeout) as client:
            answer = client.get(f"/v1/devices/{device}/proxy{path}")
    except httpx.HTTPError as exc:
        return Http(False, 0, "", f"{type(exc).__name__}: {exc}")
    return Http(answer.status_code == 200, answer.status_code, answer.text, "")


def agent_answers(device: Device, *, timeout: float = 5) -> bool:
    """Whether the device's agent answers through the API with the device's own identity."""
    answer = through_api(device.id, timeout=timeout)
    if not answer.ok:
        return False
    try:
        body = answer.json()
    except json.JSONDecodeError:
        return False
    return (body.get("device_id"), body.get("customer_id")) == (device.id, device.customer_id)


def requests_seen(device: str) -> list[str]:
    """The request lines the device's stand-in agent saw last, asked inside the device itself
    (local to it: no gateway, no API)."""
    answer = curl(device, f"http://127.0.0.1:{AGENT_PORT}/debug/requests")
    assert answer.ok, f"{device}: /debug/requests: curl {answer.code} {answer.error}"
    return answer.json()["requests"]


# -- rollouts through the tunnel ---------------------------------------------------------------


@functools.cache
def lab_vars(*names: str) -> dict:
    """inventory/lab's settings for all hosts, templated as Ansible sees them (the control
    node's: the implicit localhost)."""
    wanted = "{{ {" + ", ".join(f"'{n}': {n}" for n in names) + "} }}"
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
           "PATH": f"{REPO / '.venv/bin'}:{os.environ['PATH']}"}  # fmt: skip
    proc = subprocess.run(
        # playbook_dir as a playbook's: lab_secrets_dir is relative to it.
        ["ansible", "localhost", "-i", "inventory/lab", "--playbook-dir", "playbooks",
         "-m", "ansible.builtin.debug", "-a", f"msg={wanted}", "-o"],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=60, check=True,
    )  # fmt: skip
    return json.loads(proc.stdout.split("=>", 1)[1])["msg"]


def host_key_line(alias: str, container: str) -> str:
    """A known_hosts line for the container's SSH host key, filed under alias. podman exec is a
    channel the control node already trusts: a key read through it can be checked strictly."""
    key = in_container(container, "cat", "/etc/ssh/ssh_host_ed25519_key.pub").stdout.split()
    assert len(key) >= 2, f"{container}: no SSH host key"
    return f"{alias} {key[0]} {key[1]}\n"


@contextlib.contextmanager
def tunnel_inventory(
    work: Path, customer: str, containers: dict[str, str], group_vars: dict | None = None
):
    """The inventory source of a rollout that reaches a customer's devices only through the
    VPN: the registry inventory plugin with `tunnel_proxy` (lab-api's CONNECT listener) gives
    each device a ProxyCommand of `iotistic-vpn device tunnel`, run with a token of that
    customer that allows port 22 only. Host keys (containers: device id -> container) are
    checked strictly under each device's id (HostKeyAlias). group_vars: the settings of the
    plugin's customer_<id> group, written beside the source (where Ansible reads them).
    Yields the source's path; the token is revoked afterwards."""
    work.mkdir(parents=True, exist_ok=True)
    known_hosts = work / "known_hosts"
    known_hosts.touch(mode=0o600)
    known_hosts.write_text("".join(host_key_line(d, c) for d, c in containers.items()))
    source = work / "registry.iotistic_vpn.yml"
    source.write_text(yaml.safe_dump({
        "plugin": "iotistic_vpn_registry",
        "customers": [customer],
        "tunnel_proxy": f"{lab_address(API)}:{CONNECT_PORT}",
        "tunnel_ssh_common_args":
            f"-o StrictHostKeyChecking=yes -o UserKnownHostsFile={known_hosts}",
    }))  # fmt: skip
    if group_vars is not None:
        (work / "group_vars").mkdir(exist_ok=True)
        (work / "group_vars" / f"customer_{customer}.yml").write_text(yaml.safe_dump(group_vars))
    token = new_token(customer, read_only=False, ports=(22,))
    mp = pytest.MonkeyPatch()
    # The DSN and the token reach the plugin and the ProxyCommand from the environment only.
    mp.setenv("IOTISTIC_VPN_REGISTRY_DSN", registry_dsn())
    mp.setenv("IOTISTIC_VPN_TOKEN", token.value)
    try:
        yield source
    finally:
        mp.undo()
        revoke_token(token)


def ssh_logins_from(container: str, since: float) -> set[str]:
    """The addresses root logged in from to the container's sshd since then (its journal)."""
    log = in_container(container, "journalctl", "-u", "ssh", "--since", f"@{int(since)}",
                       "--no-pager", "-o", "cat").stdout  # fmt: skip
    return set(re.findall(r"Accepted publickey for root from (\S+)", log))


def unreachable_messages(run: PlaybookRun) -> list[str]:
    """The msg of every unreachable task result."""
    plays = json.loads(run.stdout)["plays"]
    return [str(r.get("msg", "")) for play in plays for task in play["tasks"]
            for r in task["hosts"].values() if r.get("unreachable")]  # fmt: skip
