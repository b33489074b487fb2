"""A gateway in network namespaces for the agent's integration tests.

A gateway namespace runs two OpenVPN instances configured as the openvpn_gateway role does
(management-client-auth, crl-verify dir, tls-crypt-v2, topology subnet, dropped to nobody)
and the agent as its own process (`python3 -m iotistic_vpn.gateway`, Debian's python3 with
python3-psycopg 3.1 when the host has them, as on the gateways). Devices are namespaces on a
private bridge (198.18.0.0/24). The agent reaches the registry over PostgreSQL's unix socket,
the one path into the suite's cluster that crosses network namespaces.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import jinja2
import pytest
from psycopg.conninfo import conninfo_to_dict

from iotistic_vpn import conventions, pki, tlsverify
from iotistic_vpn.errors import RegistryUnavailable
from iotistic_vpn.pki import tlscrypt
from iotistic_vpn.registry import Certificate, Registry
from tests.support.netns import (
    Namespace,
    Process,
    Underlay,
    openvpn_client_config,
    openvpn_gateway_config,
    wait_until,
)
from tests.support.standin import STANDIN

REPO = Path(__file__).resolve().parents[2]
GATEWAY = "gw-1"
# name -> customer; ghost has a certificate but is not in the registry, dev-s presents a
# second certificate the registry never recorded.
DEVICES = {
    "dev-a": "acme", "dev-b": "acme", "dev-r": "acme", "dev-s": "acme", "dev-z": "acme",
    "ghost": "acme", "dev-g": "globex",
}  # fmt: skip
UP = "Initialization Sequence Completed"
# An instance's management socket is there: with management-hold it waits for the agent, and
# says UP only once the agent has released it.
LISTENING = "MANAGEMENT: unix domain socket listening on"


def _agent_python() -> str:
    """Debian's python3 when it has the gateway's packages (as on a gateway), else the venv's.

    IOTISTIC_AGENT_PYTHON picks one explicitly.
    """
    if os.environ.get("IOTISTIC_AGENT_PYTHON"):
        return os.environ["IOTISTIC_AGENT_PYTHON"]
    probe = subprocess.run(
        ["/usr/bin/python3", "-c", "import psycopg, prometheus_client"],
        capture_output=True, check=False,
    )  # fmt: skip
    return "/usr/bin/python3" if probe.returncode == 0 else sys.executable


AGENT_PYTHON = _agent_python()
AGENT_ENV = {**os.environ, "PYTHONPATH": str(REPO / "python_plugins"), "PYTHONUNBUFFERED": "1"}


@dataclass
class Fleet:
    root: Path
    chain: Path
    gateway_dir: Path  # ca.pem, server.crt, server.key, tls-crypt-v2.key
    certs: dict[str, pki.DeviceResult]
    stale: pki.DeviceResult | None  # dev-s's second certificate, never recorded
    tls_crypt: dict[str, Path]
    api: pki.GatewayResult  # the cloud API's tunnel client certificate

    def client_files(self, name: str, *, stale: bool = False) -> tuple[Path, Path, Path]:
        cert = self.stale if stale else self.certs[name]
        return Path(cert.cert_path), Path(str(cert.key_path)), self.tls_crypt[name]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory) -> Fleet:
    return make_fleet(tmp_path_factory.mktemp("gwfleet"))


def make_gateway_pki(root: Path) -> tuple[pki.IssuingCA, Fleet]:
    """The CA, the gateway's files and the API's certificate under root; no devices yet."""
    ca = pki.ensure_ca(pki.CaFiles.at(root / "ca")).ca
    gw = root / "gateway"
    result = pki.ensure_gateway_cert(ca, GATEWAY, gw)
    shutil.copy(result.cert_path, gw / "server.crt")
    shutil.copy(result.key_path, gw / "server.key")
    shutil.copy(root / "ca" / pki.CA_CHAIN, gw / "ca.pem")
    pki.ensure_crl(ca, gw / "crl.pem", [])
    (gw / "tls-crypt-v2.key").write_bytes(tlscrypt.generate_server_key())
    api = pki.ensure_gateway_cert(ca, "cloud-api", root / "api", purpose="tunnel-client")
    return ca, Fleet(root, root / "ca" / pki.CA_CHAIN, gw, {}, None, {}, api)


def make_fleet(root: Path) -> Fleet:
    """The CA, gateway, device and API certificates under root (the fixture's, or a bench's)."""
    ca, fleet = make_gateway_pki(root)
    server_key = (fleet.gateway_dir / "tls-crypt-v2.key").read_bytes()
    requests = [pki.DeviceRequest(c, d, generate_key=True) for d, c in DEVICES.items()]
    fleet.certs.update(
        (r.device, r) for r in pki.ensure_device_certs(ca, requests, root / "devices")
    )
    fleet.stale = pki.ensure_device_certs(
        ca, [pki.DeviceRequest("acme", "dev-s", generate_key=True)], root / "stale"
    )[0]
    for name in DEVICES:
        fleet.tls_crypt[name] = root / f"{name}.tc"
        identity = tlsverify.identity(DEVICES[name], name)  # as vpn_pki makes them
        fleet.tls_crypt[name].write_bytes(tlscrypt.generate_client_key(server_key, identity))
    return fleet


def _register(registry: Registry, fleet: Fleet) -> None:
    for customer in sorted(set(DEVICES.values())):
        devices = [d for d, c in DEVICES.items() if c == customer and d != "ghost"]
        registry.ensure_customer(customer, actor="test")
        registry.provision_devices(customer, devices, actor="test")
        registry.record_certificates(
            customer,
            [
                Certificate(
                    int(fleet.certs[d].serial),
                    d,
                    fleet.certs[d].fingerprint,
                    dt.datetime.fromisoformat(fleet.certs[d].not_before),
                    dt.datetime.fromisoformat(fleet.certs[d].not_after),
                )
                for d in devices
            ],
            actor="test",
        )


class Device:
    """One device: a namespace, its OpenVPN client and the stand-in agent on :48484."""

    def __init__(self, ns: Namespace, name: str, client: Process, standin: Process) -> None:
        self.ns, self.name, self.client, self.standin = ns, name, client, standin

    def address(self) -> str | None:
        out = self.ns.run(["ip", "-4", "-o", "addr", "show", "dev", "tun0"], check=False).stdout
        match = re.search(r"inet (\S+)/10", out)
        return match.group(1) if match else None


class Gateway:
    """The gateway namespace: two OpenVPN instances and the agent, plus device helpers."""

    def __init__(
        self, fleet: Fleet, ul: Underlay, work: Path, dsn: str, pg, reconcile: float,
        *, register: bool = True, name: str = GATEWAY, api_ns: Namespace | None = None,
    ) -> None:  # fmt: skip
        """register: record the harness's DEVICES (off when the caller provisioned its own).
        name: the agent's gateway name; another gateway of the same fleet (its own namespace,
        work dir and agent, the same registry and certificate) shares the first one's api_ns."""
        self.fleet, self.ul, self.work, self.pg = fleet, ul, work, pg
        self.name = name
        self.registry = Registry(dsn)
        self.dbname = conninfo_to_dict(dsn)["dbname"]
        if register:
            _register(self.registry, fleet)
        self.ns = ul.namespace("gw" if name == GATEWAY else name)
        # Where the cloud API's side of the tunnel runs.
        self.api_ns = api_ns if api_ns is not None else ul.namespace("api")
        self.crl_dir = work / "crl.d"
        self.crl_dir.mkdir(mode=0o755)  # the role makes it, empty: OpenVPN needs it to start
        # tlsverify.sh as openvpn_gateway installs it, reading the directory the agent keeps.
        self.revoked_dir = work / Path(conventions.REVOKED_DEVICES_DIR).name
        self.revoked_dir.mkdir(mode=0o755)
        (work / "tlsverify").mkdir(mode=0o755)
        shutil.copy(Path(tlsverify.__file__).with_suffix(".sh"), work / "tlsverify")
        self.verify = f"/bin/sh {work}/tlsverify/tlsverify.sh {self.revoked_dir}"
        self.config = work / "gateway-agent.toml"
        self.config.write_text(self._agent_toml(self.dbname, reconcile))
        self.instances = []
        for i in range(2):
            (work / f"iotistic-{i}.conf").write_text(self.instance_config(i))
            self.instances.append(self.start_instance(i, work / f"iotistic-{i}.log"))
        self.agent: Process | None = None
        self._restarts = 0
        self._agents = 0
        self._devices = 0
        # As at boot: the instances hold until the agent holds their sockets and releases them.
        self.start_agent()
        for proc in self.instances:
            proc.wait_for(UP)

    def instance_config(self, i: int) -> str:
        return openvpn_gateway_config(
            i, pki_dir=self.fleet.gateway_dir, crl_dir=self.crl_dir,
            management=self.work / f"iotistic-{i}.sock",
            status=self.work / f"iotistic-{i}.status", verify=self.verify, hold=True,
        )  # fmt: skip

    def start_instance(self, i: int, log: Path) -> Process:
        """Start instance i from its config file and wait for its management socket only:
        it holds (management-hold) until the agent releases it."""
        (self.work / f"iotistic-{i}.sock").unlink(missing_ok=True)  # a killed run's
        proc = self.ns.start(["openvpn", "--config", str(self.work / f"iotistic-{i}.conf")], log)
        proc.wait_for(LISTENING)
        return proc

    def _agent_toml(self, dbname: str, reconcile: float) -> str:
        gw = self.fleet.gateway_dir
        sockets = "".join(
            f'[[instances]]\nname = "iotistic-{i}"\n'
            f'management = "{self.work}/iotistic-{i}.sock"\ntun = "tun{i}"\n'
            for i in range(2)
        )
        return (
            f'gateway = "{self.name}"\nhttp_listen = "127.0.0.1:8089"\n'
            f'state_path = "{self.work}/state/agent.db"\ncrl_dir = "{self.crl_dir}"\n'
            f'netmask = "255.192.0.0"\nsnapshot_interval_s = 0.5\n'
            f"reconcile_interval_s = {reconcile}\ndrain_rate_per_s = 20\n"
            f'certificate_file = "{gw}/server.crt"\nca_file = "{gw}/ca.pem"\n'
            f'crl_file = "{gw}/crl.pem"\n'
            f'[registry]\nhost = "{self.pg.socket_dir}"\nport = {self.pg.port}\n'
            f'dbname = "{dbname}"\nuser = "postgres"\npassword = "{self.pg.password}"\n'
            f'sslmode = "disable"\nconnect_timeout_s = 2\n{sockets}'
            f'[tunnel]\nlisten = "{self.ns.address}:8443"\ncert = "{gw}/server.crt"\n'
            f'key = "{gw}/server.key"\nca = "{gw}/ca.pem"\ndevice_ports = [48484]\n'
            "connect_timeout_s = 2\nhead_timeout_s = 2\n"
        )

    def restart_instance(self, i: int) -> None:
        """Stop instance i and start it again (as `systemctl restart`); wait until it is up
        when the agent runs to release it."""
        self.instances[i].stop()
        self._restarts += 1
        log = self.work / f"iotistic-{i}-restart-{self._restarts}.log"
        self.instances[i] = self.start_instance(i, log)
        if self.agent is not None and self.agent.running():
            self.instances[i].wait_for(UP)

    def start_agent(self) -> None:
        self._agents += 1
        self.agent = self.ns.start(
            [AGENT_PYTHON, "-m", "iotistic_vpn.gateway", "--config", str(self.config)],
            self.work / f"agent-{self._agents}.log", AGENT_ENV,
        )  # fmt: skip
        wait_until(lambda: self.health()[0] == 200, 10, "the agent to hold both sockets")

    def stop_agent(self) -> None:
        assert self.agent is not None
        self.agent.signal(signal.SIGTERM)
        # A stop writes the spool and closes links and threads first: once in CI, beside
        # molecule's containers, 5 s were not enough (the agent logs how long its stop took).
        assert self.agent.wait_exit(15) == 0

    def curl(self, url: str) -> tuple[int, str]:
        """GET from inside the gateway namespace: (status, body); status 0 if unreachable."""
        out = self.ns.run(
            ["curl", "-sS", "--max-time", "3", "-w", "\n%{http_code}", url], check=False
        ).stdout
        body, _, code = out.rpartition("\n")
        return int(code or 0), body

    def http(self, path: str) -> tuple[int, str]:
        return self.curl(f"http://127.0.0.1:8089{path}")

    def health(self) -> tuple[int, dict]:
        code, body = self.http("/healthz")
        return code, json.loads(body) if code in (200, 503) else {}

    def log(self) -> str:
        return "".join(p.read_text() for p in sorted(self.work.glob("agent-*.log")))

    def device(
        self, name: str, instance: int, *, stale: bool = False, agent_key: str | None = None,
        files: tuple[Path, Path, Path, str] | None = None, then: tuple[int, ...] = (),
        extra: tuple[str, ...] = (),
    ) -> Device:  # fmt: skip
        """Start a device's client against one instance (and its :48484 stand-in, which asks
        for agent_key when one is given). files: (cert, key, tls-crypt-v2 key, customer) of a
        device not in the fleet (one that enrolled itself). then: the instances of its next
        remotes; extra: more client config lines."""
        self._devices += 1
        ns = self.ul.namespace(f"d{self._devices}")
        if files is None:
            cert, key, tc = self.fleet.client_files(name, stale=stale)
            customer = DEVICES[name]
        else:
            cert, key, tc, customer = files
        conf = self.work / f"{name}-{self._devices}.conf"
        conf.write_text(openvpn_client_config(
            str(self.ns.address), [11940 + i for i in (instance, *then)], ca=self.fleet.chain,
            cert=cert, key=key, tls_crypt=tc, extra=extra,
        ))  # fmt: skip
        key_args = []
        if agent_key is not None:
            key_file = self.work / f"{name}-{self._devices}.agent-key"
            key_file.write_text(agent_key + "\n")
            key_args = ["--api-key-file", str(key_file)]
        standin = ns.start(
            [sys.executable, str(STANDIN), "--device-id", name,
             "--customer-id", customer, *key_args],
            self.work / f"{name}-{self._devices}-standin.log",
        )  # fmt: skip
        standin.wait_for("listening on")
        client = ns.start(["openvpn", "--config", str(conf)],
                          self.work / f"{name}-{self._devices}.log")  # fmt: skip
        return Device(ns, name, client, standin)

    def connected(self, name: str) -> Device:
        device = self.device(name, 0)
        device.client.wait_for(UP)
        return device

    def db(self, name: str) -> tuple[bool, str | None, str] | None:
        """(connected, gateway, state) in the registry; None while it is unreachable."""
        try:
            d = self.registry.find_device(name)
        except RegistryUnavailable:
            return None  # e.g. the first call after a restart of the server
        return d.connected, d.gateway, d.state

    def load_firewall(self) -> str:
        """Apply openvpn_gateway's own nftables table in the gateway namespace (rendered from
        the role's template with the harness's layout); return what nft lists."""
        table = self.work / "nftables.nft"
        table.write_text(render_gateway_nftables(len(self.instances), device_ports=[48484]))
        self.ns.run(["nft", "-f", str(table)])
        return self.ns.run(["nft", "list", "table", "inet", "iotistic_vpn"]).stdout

    def routes(self) -> dict[str, str]:
        out = self.ns.run(["ip", "-4", "-o", "route", "show"]).stdout
        return dict(re.findall(r"^(100\.\S+) dev (tun\d)", out, re.M))

    def close(self) -> None:
        self.registry.close()


def render_role_template(path: str, **variables: object) -> str:
    """A role's template (path under roles/) rendered with plain Jinja2, as Ansible would."""
    env = jinja2.Environment(  # noqa: S701 - configuration files, not HTML
        undefined=jinja2.StrictUndefined, keep_trailing_newline=True
    )
    env.filters["comment"] = lambda text: f"# {text}"
    template = env.from_string((REPO / "roles" / path).read_text())
    return template.render(ansible_managed="rendered by tests/support", **variables)


def render_gateway_nftables(count: int, device_ports: list[int]) -> str:
    """roles/openvpn_gateway/templates/nftables.nft.j2 as the role renders it, with plain
    Jinja2 and the role's inputs taken from iotistic_vpn.conventions."""
    return render_role_template(
        "openvpn_gateway/templates/nftables.nft.j2",
        _openvpn_gateway_layout=conventions.instance_dicts(count),
        _openvpn_gateway_public_port=conventions.OPENVPN_PORT,
        _openvpn_gateway_tunnel_mark=conventions.TUNNEL_SERVICE_MARK,
        _openvpn_gateway_renew_port=conventions.RENEW_PORT,
        openvpn_gateway_device_ports=device_ports,
    )


@pytest.fixture
def start_gateway(fleet, registry_dsn, pg_server):
    """Factory: a gateway with its agent; everything stopped and deleted afterwards."""
    made: list[tuple[Underlay, Gateway | None, Path]] = []

    def start(reconcile: float = 60) -> Gateway:
        # World-readable: OpenVPN reads crl.d per handshake after dropping to nobody.
        work = Path(tempfile.mkdtemp(prefix="iotistic-gw-"))
        work.chmod(0o755)
        ul = Underlay(work)
        made.append((ul, None, work))
        gw = Gateway(fleet, ul, work, registry_dsn, pg_server, reconcile)
        made[-1] = (ul, gw, work)
        return gw

    yield start
    for ul, gw, work in made:
        try:
            if gw is not None:
                gw.close()
            ul.close()
        finally:
            shutil.rmtree(work, ignore_errors=True)


def eventually(check, what: str, timeout: float = 8.0):
    return wait_until(check, timeout, what, interval=0.1)


TUNNEL_CLIENT = """
import asyncio, json, sys, time
from iotistic_vpn.api.dialer import DialError, TunnelDialer

async def main(gateway, address, device, port, cert, key, ca, request, hold):
    dialer = TunnelDialer(cert, key, ca, connect_timeout_s=3)
    try:
        reader, writer = await dialer.open(gateway, device, int(port), address=address)
    except DialError as exc:
        print(json.dumps({"dial": exc.status, "reason": exc.reason}), flush=True)
        return
    writer.write(request.encode())
    await writer.drain()
    if hold == "hold":  # read the first answer, then wait for the tunnel to end
        first = await asyncio.wait_for(reader.read(65536), 5)
        print(json.dumps({"dial": 200, "answer": first.decode(errors="replace")}), flush=True)
        start = time.monotonic()
        while await asyncio.wait_for(reader.read(65536), 30):
            pass
        print(json.dumps({"closed_after": time.monotonic() - start}), flush=True)
        return
    data = await asyncio.wait_for(reader.read(), 5)
    print(json.dumps({"dial": 200, "answer": data.decode(errors="replace")}), flush=True)

asyncio.run(main(*sys.argv[1:]))
"""


def _tunnel_argv(gw: Gateway, device: str, port: int, cert, key, hold: bool) -> list[str]:
    keep = "keep-alive" if hold else "close"
    request = f"GET /v1/device HTTP/1.1\r\nHost: {device}\r\nConnection: {keep}\r\n\r\n"
    return [sys.executable, "-c", TUNNEL_CLIENT, GATEWAY, str(gw.ns.address), device, str(port),
            str(cert or gw.fleet.api.cert_path), str(key or gw.fleet.api.key_path),
            str(gw.fleet.chain), request, "hold" if hold else "once"]  # fmt: skip


def through_tunnel(gw: Gateway, device: str, port: int = 48484, *, cert=None, key=None) -> dict:
    """Dial the gateway's tunnel service from the API namespace, send one HTTP request."""
    argv = _tunnel_argv(gw, device, port, cert, key, hold=False)
    out = gw.api_ns.run(argv, env=AGENT_ENV, check=False).stdout.strip()
    return json.loads(out.splitlines()[-1]) if out else {"dial": -1}


def hold_tunnel(gw: Gateway, device: str, log: Path) -> Process:
    """A tunnel kept open after one keep-alive request; its log says when it ended."""
    return gw.api_ns.start(_tunnel_argv(gw, device, 48484, None, None, hold=True), log, AGENT_ENV)
