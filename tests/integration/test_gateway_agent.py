"""The gateway agent against real OpenVPN 2.6 and the suite's real PostgreSQL.

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
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from psycopg.conninfo import conninfo_to_dict

from iotistic_vpn import pki
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

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.skipif(shutil.which("openvpn") is None, reason="openvpn not installed"),
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
]

REPO = Path(__file__).resolve().parents[2]
GATEWAY = "gw-1"
# name -> customer; ghost has a certificate but is not in the registry, dev-s presents a
# second certificate the registry never recorded.
DEVICES = {
    "dev-a": "acme", "dev-b": "acme", "dev-r": "acme", "dev-s": "acme", "dev-z": "acme",
    "ghost": "acme", "dev-g": "globex",
}  # fmt: skip
UP = "Initialization Sequence Completed"


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
    stale: pki.DeviceResult  # dev-s's second certificate, never recorded
    tls_crypt: dict[str, Path]

    def client_files(self, name: str, *, stale: bool = False) -> tuple[Path, Path, Path]:
        cert = self.stale if stale else self.certs[name]
        return Path(cert.cert_path), Path(str(cert.key_path)), self.tls_crypt[name]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory) -> Fleet:
    root = tmp_path_factory.mktemp("gwfleet")
    ca = pki.ensure_ca(pki.CaFiles.at(root / "ca")).ca
    gw = root / "gateway"
    result = pki.ensure_gateway_cert(ca, GATEWAY, gw)
    shutil.copy(result.cert_path, gw / "server.crt")
    shutil.copy(result.key_path, gw / "server.key")
    shutil.copy(root / "ca" / pki.CA_CHAIN, gw / "ca.pem")
    server_key = tlscrypt.generate_server_key()
    (gw / "tls-crypt-v2.key").write_bytes(server_key)
    requests = [pki.DeviceRequest(c, d, generate_key=True) for d, c in DEVICES.items()]
    certs = {r.device: r for r in pki.ensure_device_certs(ca, requests, root / "devices")}
    stale = pki.ensure_device_certs(
        ca, [pki.DeviceRequest("acme", "dev-s", generate_key=True)], root / "stale"
    )[0]
    tls_crypt = {}
    for name in DEVICES:
        tls_crypt[name] = root / f"{name}.tc"
        tls_crypt[name].write_bytes(tlscrypt.generate_client_key(server_key))
    return Fleet(root, root / "ca" / pki.CA_CHAIN, gw, certs, stale, tls_crypt)


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

    def __init__(self, fleet: Fleet, ul: Underlay, work: Path, dsn: str, pg, reconcile: float):
        self.fleet, self.ul, self.work, self.pg = fleet, ul, work, pg
        self.registry = Registry(dsn)
        self.dbname = conninfo_to_dict(dsn)["dbname"]
        _register(self.registry, fleet)
        self.ns = ul.namespace("gw")
        self.crl_dir = work / "crl.d"
        self.crl_dir.mkdir(mode=0o755)  # the role makes it, empty: OpenVPN needs it to start
        self.config = work / "gateway-agent.toml"
        self.config.write_text(self._agent_toml(self.dbname, reconcile))
        self.instances = []
        for i in range(2):
            conf = work / f"iotistic-{i}.conf"
            conf.write_text(openvpn_gateway_config(
                i, pki_dir=fleet.gateway_dir, crl_dir=self.crl_dir,
                management=work / f"iotistic-{i}.sock", status=work / f"iotistic-{i}.status",
            ))  # fmt: skip
            self.instances.append(self.ns.start(["openvpn", "--config", str(conf)],
                                                work / f"iotistic-{i}.log"))  # fmt: skip
        for proc in self.instances:
            proc.wait_for(UP)
        self.agent: Process | None = None
        self._restarts = 0
        self._agents = 0
        self._devices = 0
        self.start_agent()

    def _agent_toml(self, dbname: str, reconcile: float) -> str:
        sockets = "".join(
            f'[[instances]]\nname = "iotistic-{i}"\n'
            f'management = "{self.work}/iotistic-{i}.sock"\ntun = "tun{i}"\n'
            for i in range(2)
        )
        return (
            f'gateway = "{GATEWAY}"\nhttp_listen = "127.0.0.1:8089"\n'
            f'state_path = "{self.work}/state/agent.db"\ncrl_dir = "{self.crl_dir}"\n'
            f'netmask = "255.192.0.0"\nsnapshot_interval_s = 0.5\n'
            f"reconcile_interval_s = {reconcile}\ndrain_rate_per_s = 20\n"
            f'[registry]\nhost = "{self.pg.socket_dir}"\nport = {self.pg.port}\n'
            f'dbname = "{dbname}"\nuser = "postgres"\npassword = "{self.pg.password}"\n'
            f'sslmode = "disable"\nconnect_timeout_s = 2\n{sockets}'
        )

    def restart_instance(self, i: int) -> None:
        self.instances[i].stop()
        self._restarts += 1
        conf = self.work / f"iotistic-{i}.conf"
        log = self.work / f"iotistic-{i}-restart-{self._restarts}.log"
        self.instances[i] = self.ns.start(["openvpn", "--config", str(conf)], log)
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
        assert self.agent.wait_exit(5) == 0

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

    def device(self, name: str, instance: int, *, stale: bool = False) -> Device:
        """Start a device's client against one instance (and its :48484 stand-in)."""
        self._devices += 1
        ns = self.ul.namespace(f"d{self._devices}")
        cert, key, tc = self.fleet.client_files(name, stale=stale)
        conf = self.work / f"{name}-{self._devices}.conf"
        conf.write_text(openvpn_client_config(
            str(self.ns.address), [11940 + instance], ca=self.fleet.chain, cert=cert, key=key,
            tls_crypt=tc,
        ))  # fmt: skip
        standin = ns.start(
            [sys.executable, str(STANDIN), "--device-id", name,
             "--customer-id", DEVICES[name]],
            self.work / f"{name}-{self._devices}-standin.log",
        )  # fmt: skip
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

    def routes(self) -> dict[str, str]:
        out = self.ns.run(["ip", "-4", "-o", "route", "show"]).stdout
        return dict(re.findall(r"^(100\.\S+) dev (tun\d)", out, re.M))

    def close(self) -> None:
        self.registry.close()


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


def _eventually(check, what: str, timeout: float = 8.0):
    return wait_until(check, timeout, what, interval=0.1)


# -- admitted devices ----------------------------------------------------------------------------


def test_admitted_devices_get_their_registry_address_and_answer_through_the_tunnel(start_gateway):
    gw = start_gateway()
    acme = gw.device("dev-a", 0)
    globex = gw.device("dev-g", 1)
    for dev in (acme, globex):
        dev.client.wait_for(UP)
    expected = {d: gw.registry.find_device(d).vpn_address for d in ("dev-a", "dev-g")}
    assert acme.address() == expected["dev-a"]
    assert globex.address() == expected["dev-g"]
    # Both tuns carry the whole pool; the /32s send each device's traffic to its instance.
    _eventually(lambda: gw.routes().get(expected["dev-g"]) == "tun1", "dev-g's host route")
    assert gw.routes()[expected["dev-a"]] == "tun0"
    for dev, peer in ((acme, "100.127.255.1"), (globex, "100.127.255.2")):
        code, body = gw.curl(f"http://{expected[dev.name]}:48484/v1/device")
        assert code == 200, body
        answer = json.loads(body)
        assert (answer["device_id"], answer["customer_id"], answer["peer"]) == (
            dev.name, DEVICES[dev.name], peer,
        )  # fmt: skip
    _eventually(lambda: gw.db("dev-a") == (True, GATEWAY, "active"), "dev-a online in registry")
    _eventually(lambda: gw.db("dev-g") == (True, GATEWAY, "active"), "dev-g online in registry")
    code, health = gw.health()
    assert code == 200
    assert health["instances"] == {
        "iotistic-0": {"management": True, "clients": 1},
        "iotistic-1": {"management": True, "clients": 1},
    }
    assert health["registry_reachable"] is True
    assert health["snapshot_devices"] == 6
    _eventually(lambda: gw.health()[1]["spool_depth"] == 0, "an empty spool")
    code, metrics = gw.http("/metrics")
    assert code == 200
    assert 'iotistic_gateway_connected_devices{instance="iotistic-1"} 1.0' in metrics
    assert "iotistic_gateway_connects_accepted_total 2.0" in metrics
    assert "iotistic_gateway_registry_up 1.0" in metrics
    assert re.search(r"^iotistic_gateway_snapshot_age_seconds \d", metrics, re.M)
    assert gw.pg.password not in gw.log()


# -- refusals ------------------------------------------------------------------------------------


def test_unknown_device_and_stale_serial_are_refused_with_the_reason_logged(start_gateway):
    gw = start_gateway()
    ghost = gw.device("ghost", 0)
    stale = gw.device("dev-s", 1, stale=True)
    for dev in (ghost, stale):
        dev.client.wait_exit(10)  # AUTH_FAILED ends a certificate-only client
        assert UP not in dev.client.text()
        assert "AUTH_FAILED" in dev.client.text()
    log = gw.log()
    assert re.search(
        r"instance iotistic-0: refused client \d+ from 198\.18\.0\.\d+: "
        r"device 'ghost' is not in the registry", log,
    ), log  # fmt: skip
    serial = gw.fleet.stale.serial
    assert f"refused client 0 from {stale.ns.address}: device 'dev-s': certificate serial " \
        f"{serial} is not current" in log  # fmt: skip
    # The device is told nothing about why.
    assert "registry" not in ghost.client.text() and serial not in stale.client.text()
    metrics = gw.http("/metrics")[1]
    assert 'iotistic_gateway_connects_denied_total{reason="unknown_device"} 1.0' in metrics
    assert 'iotistic_gateway_connects_denied_total{reason="serial_not_current"} 1.0' in metrics
    assert gw.db("dev-s") == (False, None, "provisioned")


def test_revoking_a_device_ends_its_session_and_refuses_the_next_connect(start_gateway):
    gw = start_gateway()
    dev = gw.connected("dev-r")
    _eventually(lambda: gw.db("dev-r")[0], "dev-r online")
    revoked_at = time.monotonic()
    gw.registry.revoke_device("acme", "dev-r", actor="test", reason="key_compromise")
    dev.client.wait_exit(5)  # HALT: the client stops instead of reconnecting
    assert time.monotonic() - revoked_at < 5
    assert "Halt command was pushed by server" in dev.client.text()
    assert re.search(r"ended the session of dev-r \(client \d+, HALT\): device 'dev-r' is revoked",
                     gw.log())  # fmt: skip
    serial = gw.fleet.certs["dev-r"].serial
    crl_file = gw.crl_dir / serial
    _eventually(crl_file.exists, "the serial in crl.d")
    assert crl_file.stat().st_mode & 0o777 == 0o644 and crl_file.stat().st_size == 0
    assert gw.crl_dir.stat().st_mode & 0o777 == 0o755
    # The next connect is refused by OpenVPN itself (as nobody), before the agent is asked.
    mark = gw.instances[0].mark()
    again = gw.device("dev-r", 0)
    gw.instances[0].wait_for(rf"VERIFY CRL: depth=0, O=acme, CN=dev-r, serial={serial} is revoked",
                             start=mark)  # fmt: skip
    _eventually(lambda: gw.db("dev-r") == (False, GATEWAY, "revoked"), "dev-r offline")
    assert UP not in again.client.text()


# -- registry outage -----------------------------------------------------------------------------


def test_registry_outage_admits_from_the_snapshot_and_replays_in_order(start_gateway, pg_server):
    gw = start_gateway()
    dev_a = gw.connected("dev-a")
    _eventually(lambda: gw.db("dev-a")[0], "dev-a online")
    pg_server.stop()
    try:
        # The agent restarts while the registry is away: the stored snapshot carries it.
        gw.stop_agent()
        gw.start_agent()
        _eventually(lambda: gw.health()[1]["registry_reachable"] is False, "registry down")
        dev_b = gw.device("dev-b", 1)
        dev_b.client.wait_for(UP)
        connected_b = time.time()
        dev_a.client.stop()
        _eventually(lambda: gw.health()[1]["spool_depth"] == 2, "two spooled events")
        assert "INFO instance iotistic-1: accepted dev-b of acme" in gw.log()
    finally:
        pg_server.start()
    back = time.time()
    _eventually(lambda: gw.health()[1]["spool_depth"] == 0, "the spool replayed", timeout=12)
    _eventually(lambda: gw.db("dev-b") == (True, GATEWAY, "active"), "dev-b online")
    assert gw.db("dev-a") == (False, GATEWAY, "active")
    with gw.pg.connect(gw.dbname) as conn:
        rows = conn.execute(
            "SELECT device_id, event, extract(epoch FROM at) FROM connection_events ORDER BY id"
        ).fetchall()
    replayed = [(d, e) for d, e, _ in rows]
    assert replayed == [("dev-a", "connect"), ("dev-b", "connect"), ("dev-a", "disconnect")]
    # The events keep the times they happened, not the time of the replay.
    at_b, at_a = float(rows[1][2]), float(rows[2][2])
    assert at_b <= connected_b + 0.5 < back and at_b <= at_a < back


# -- reconciliation ------------------------------------------------------------------------------


def test_lost_events_and_routes_heal_through_reconcile(start_gateway):
    gw = start_gateway(reconcile=1)
    dev = gw.connected("dev-a")
    address = gw.registry.find_device("dev-a").vpn_address
    _eventually(lambda: gw.db("dev-a")[0], "dev-a online")
    # Lost connect: the registry forgets dev-a; lost disconnect: it thinks dev-z is here.
    gw.registry.disconnect_gateway(GATEWAY)
    gw.registry.record_connect("dev-z", GATEWAY)
    gw.ns.run(["ip", "route", "del", f"{address}/32", "dev", "tun0"])
    _eventually(lambda: gw.db("dev-a")[0] and not gw.db("dev-z")[0], "the registry healed")
    _eventually(lambda: gw.routes().get(address) == "tun0", "the route restored")
    log = gw.log()
    assert "reconcile: dev-a is connected on iotistic-0 but not in the registry" in log
    assert "reconcile: the registry has dev-z connected here, no instance has it" in log
    assert dev.client.running()
    # An instance that restarts is unhealthy until the agent holds its new socket again.
    gw.instances[1].stop()
    _eventually(lambda: gw.health()[0] == 503, "/healthz 503")
    assert gw.health()[1]["instances"]["iotistic-1"]["management"] is False
    gw.restart_instance(1)
    _eventually(lambda: gw.health()[0] == 200, "/healthz 200 again")


def test_a_device_moving_between_instances_and_gateways_stays_online(start_gateway):
    gw = start_gateway()
    first = gw.connected("dev-a")
    address = gw.registry.find_device("dev-a").vpn_address
    _eventually(lambda: gw.db("dev-a") == (True, GATEWAY, "active"), "dev-a online")
    earlier = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    # gw-2 replays its spool after an outage: the device was there before it came here.
    gw.registry.record_connect("dev-a", "gw-2", at=earlier)
    assert gw.db("dev-a") == (True, GATEWAY, "active")
    assert gw.registry.record_disconnect("dev-a", "gw-2", at=earlier) is False
    assert gw.db("dev-a") == (True, GATEWAY, "active")
    # The device comes back through the other instance before the old session timed out:
    # its /32 moves, and the old session's end takes neither the route nor the state.
    second = gw.device("dev-a", 1)
    second.client.wait_for(UP)
    _eventually(lambda: gw.routes().get(address) == "tun1", "the route on tun1")
    first.client.stop()
    _eventually(lambda: "of dev-a ended; it is still connected on iotistic-1" in gw.log(),
                "the old session's end")  # fmt: skip
    assert gw.routes().get(address) == "tun1"
    assert gw.db("dev-a") == (True, GATEWAY, "active")
    assert gw.curl(f"http://{address}:48484/ping") == (200, "OK")
    # Its last disconnect through this gateway counts, and takes its host route away.
    second.client.stop()
    _eventually(lambda: address not in gw.routes(), "dev-a's route removed")
    _eventually(lambda: gw.db("dev-a") == (False, GATEWAY, "active"), "dev-a offline")


# -- drain ---------------------------------------------------------------------------------------


def test_drain_ends_every_session_and_refuses_new_connects(start_gateway):
    gw = start_gateway()
    devices = [gw.connected("dev-a"), gw.device("dev-g", 1)]
    devices[1].client.wait_for(UP)
    marks = [d.client.mark() for d in devices]
    drain = gw.ns.run(
        [AGENT_PYTHON, "-m", "iotistic_vpn.gateway", "drain", "--config", str(gw.config),
         "--rate", "20"],
        env=AGENT_ENV,
    )  # fmt: skip
    assert "agent: drained 2" in drain.stdout
    for dev, mark in zip(devices, marks, strict=True):
        # A plain kill: the client restarts and tries again, and is refused while draining.
        dev.client.wait_for(r"server-pushed-connection-reset|SIGUSR1", start=mark)
        dev.client.wait_exit(10)
        assert "AUTH_FAILED" in dev.client.text()
    assert "gateway is draining" in gw.log()
    assert gw.health()[1]["draining"] is True
