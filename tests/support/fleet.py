"""Many devices on one gateway: the harness's gateway as the roles configure it, and a fleet.

The gateway is gateway_harness's (two OpenVPN instances, the real agent as its own process,
the real registry over its unix socket, in network namespaces, no containers), with each
instance's config rendered from roles/openvpn_gateway's own template and the role's nftables
table loaded, so devices dial the one public port and nftables spreads them over the instances.
Each device is a namespace of its own on the underlay bridge running OpenVPN with the config
roles/openvpn_device renders; a device that exits is started again after the role's
RestartSec plus its random start delay, as the device's systemd unit does. Devices are
provisioned with the project's own code (provisioning.provision_devices: registry rows,
certificates, recorded serials; tlscrypt.ensure_keys: client keys). One fleet_probe process
listens on :48484 in every device namespace; another asks each device through the gateway's
tunnel service with the cloud API's dialer.

Used by bench/bench_fleet.py (1,000 devices) and tests/e2e/test_12_fleet_storm.py (50).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import random
import re
import resource
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

from iotistic_vpn import conventions, pki, provisioning, remote_guard
from iotistic_vpn.pki import tlscrypt
from iotistic_vpn.registry import Registry
from tests.support.gateway_harness import (
    AGENT_PYTHON,
    GATEWAY,
    UP,
    Fleet,
    Gateway,
    make_gateway_pki,
    render_role_template,
)
from tests.support.netns import Namespace, Process, wait_until
from tests.support.procstat import cpu_seconds

REPO = Path(__file__).resolve().parents[2]
CUSTOMER = "fleet"
# NETWORK's 1,022 addresses (and a Linux bridge's 1,024 ports): the devices, the anchor, two
# gateways and the API.
MAX_DEVICES = 1_018
NETWORK = ipaddress.IPv4Network("198.18.0.0/22")
SECOND_GATEWAY = "gw-2"
GATHER_RATE = 500.0  # second_gateway's drain of gw-2: every device on gw-1 before a failover
PROBE_ENV = {
    **os.environ,
    "PYTHONPATH": f"{REPO}:{REPO / 'python_plugins'}",
    "PYTHONUNBUFFERED": "1",
}
# What a device's log says about its handshakes (OpenVPN 2.6, verb 3).
OUTCOMES = {
    "connected": UP,
    "tls_failed": "TLS handshake failed",
    "refused": "AUTH_FAILED",
    "told_to_reconnect": "server-pushed-connection-reset",
    "ping_restart": "Inactivity timeout",
    "halted": "Halt command was pushed by server",  # a revoked device's client-kill HALT
    # No first answer within server-poll-timeout: the device left that gateway for its next one.
    "poll_timeout": "Server poll timeout",
}


def role_defaults(role: str) -> dict:
    return yaml.safe_load((REPO / "roles" / role / "defaults/main.yml").read_text())


DEVICE_ROLE = role_defaults("openvpn_device")
GATEWAY_ROLE = role_defaults("openvpn_gateway")
AGENT_ROLE = role_defaults("gateway_agent")
DRAIN_RATE = float(AGENT_ROLE["gateway_agent_drain_rate_per_s"])


@contextlib.contextmanager
def fleet_limits(devices: int) -> Iterator[list[str]]:
    """Room for `devices` namespaces on one bridge, raised for the run and put back after:
    open files for this process; the kernel's neighbour table (one for every namespace: each
    device holds the gateway, the gateway every device); the per-CPU backlog of received
    packets (1,000 by default), which a broadcast flooded to every bridge port (the ARP for the
    gateway) overflows past some 950 ports, silently. Yields what was raised."""
    raised: list[str] = []
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 4 * devices + 1024
    if soft < need:
        if hard < need:
            raise RuntimeError(f"ulimit -n: hard limit {hard} is below the {need} needed")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
        raised.append(f"RLIMIT_NOFILE {soft} -> {need}")
    neigh = "/proc/sys/net/ipv4/neigh/default/gc_thresh"
    wanted = {
        f"{neigh}1": devices, f"{neigh}2": 2 * devices + 256, f"{neigh}3": 4 * devices + 512,
        "/proc/sys/net/core/netdev_max_backlog": 4 * devices + 1000,
    }  # fmt: skip
    old: dict[Path, str] = {}
    try:
        for name, value in wanted.items():
            path = Path(name)
            current = path.read_text().strip()
            if int(current) < value:
                old[path] = current
                path.write_text(str(value))
                raised.append(f"{path.name} {current} -> {value}")
        yield raised
    finally:
        for path, value in old.items():
            path.write_text(value)


def provision_fleet(registry: Registry, root: Path, names: list[str]) -> tuple[Fleet, dict]:
    """CA, gateway and API files, and every named device provisioned: the harness's Fleet
    (no devices of its own) and name -> (vpn_address, pki dir laid out as the role's)."""
    ca, fleet = make_gateway_pki(root)
    requests = [pki.DeviceRequest(CUSTOMER, n, generate_key=True) for n in names]
    done, _ = provisioning.provision_devices(
        registry, ca, CUSTOMER, requests, root / "certs", actor="fleet"
    )
    keys = tlscrypt.ensure_keys(
        fleet.gateway_dir / "tls-crypt-v2.key", create_server_key=False, dest=root / "tc",
        clients=[{"customer": CUSTOMER, "device": n} for n in names], metadata="identity",
    )  # fmt: skip
    key_paths = {c["device"]: Path(c["path"]) for c in keys.clients}
    devices = {}
    for item in done:
        name = item.device.id
        pki_dir = root / "devices" / name  # what roles/openvpn_device installs
        pki_dir.mkdir(parents=True)
        for link, target in (("ca.pem", fleet.chain), ("device.crt", item.certificate.cert_path),
                             ("device.key", item.certificate.key_path),
                             ("tls-crypt-v2.key", key_paths[name])):  # fmt: skip
            (pki_dir / link).symlink_to(Path(str(target)).resolve())
        devices[name] = (str(item.device.vpn_address), pki_dir)
    return fleet, devices


# OpenVPN's line when a connect-freq-initial period that dropped first packets ends.
FIRST_PACKETS_DROPPED = re.compile(r"Dropped (\d+) initial handshake packets due to --connect-freq")


class FleetGateway(Gateway):
    """The harness's gateway with the openvpn_gateway role's instance config and firewall."""

    def __init__(self, *args, **kwargs) -> None:
        self._retired: dict[str, float] = {}  # CPU seconds of the runs restart() stopped
        super().__init__(*args, **kwargs)

    def instance_config(self, i: int) -> str:
        layout = conventions.instance_dicts(2)
        for item in layout:
            item["management"] = str(self.work / f"iotistic-{item['index']}.sock")
        return render_role_template(
            "openvpn_gateway/templates/iotistic.conf.j2",
            item=layout[i], _openvpn_gateway_layout=layout,
            _openvpn_gateway_public_port=conventions.OPENVPN_PORT,
            openvpn_gateway_pool=conventions.VPN_POOL,
            _openvpn_gateway_pki_dir=self.fleet.gateway_dir,
            _openvpn_gateway_crl_dir=self.crl_dir, _openvpn_gateway_management_dir=self.work,
            _openvpn_gateway_verify_cmd=self.verify,
            **{k: v for k, v in GATEWAY_ROLE.items() if k != "openvpn_gateway_pool"},
        )  # fmt: skip

    def _agent_toml(self, dbname: str, reconcile: float) -> str:
        """The harness's agent config with the gateway_agent role's intervals and drain rate
        (the harness polls the registry every 0.5 s, for its tests' speed)."""
        text = super()._agent_toml(dbname, reconcile)
        for name in ("snapshot_interval_s", "reconcile_interval_s", "drain_rate_per_s"):
            text, count = re.subn(rf"^{name} = .*$",
                                  f"{name} = {AGENT_ROLE['gateway_agent_' + name]}", text,
                                  flags=re.M)  # fmt: skip
            assert count == 1, f"{name} not in the harness's agent config"
        return text

    def cpu(self) -> dict[str, float]:
        """CPU seconds of the agent and each instance so far, stopped runs included (as of
        their stop)."""
        return {k: self._retired.get(k, 0.0) + cpu_seconds(p) for k, p in self.pids().items()}

    def pids(self) -> dict[str, int]:
        assert self.agent is not None
        return {"agent": self.agent.pid, **{f"openvpn-{i}": p.pid for i, p in
                                             enumerate(self.instances)}}  # fmt: skip

    def udp_receive_errors(self) -> int:
        """Datagrams this gateway's kernel dropped since its namespace was made, most often for a
        full socket receive buffer (/proc/net/snmp Udp InErrors): a handshake packet dropped
        waits for the device's retransmit."""
        names, values = [line.split()[1:] for line in
                         self.ns.run(["cat", "/proc/net/snmp"]).stdout.splitlines()
                         if line.startswith("Udp:")]  # fmt: skip
        return int(values[names.index("InErrors")])

    def first_packets_dropped(self) -> int:
        """Devices' first packets this gateway's instances dropped so far for their
        connect-freq-initial limit (each instance logs how many when its period ends)."""
        logs = (log.read_text(errors="replace") for log in self.work.glob("iotistic-*.log"))
        return sum(int(n) for text in logs for n in FIRST_PACKETS_DROPPED.findall(text))

    def drain(self, rate: float = DRAIN_RATE, devices: int = 0) -> str:
        """`python3 -m iotistic_vpn.gateway drain` as the drain unit's ExecStop runs it."""
        out = self.ns.run(
            [AGENT_PYTHON, "-m", "iotistic_vpn.gateway", "drain", "--config", str(self.config),
             "--rate", str(rate)],
            env={**os.environ, "PYTHONPATH": str(REPO / "python_plugins")},
            timeout=devices / rate + 60,
        )  # fmt: skip
        return (out.stdout + out.stderr).strip().splitlines()[-1].rpartition("agent: ")[2]

    def restart(self) -> None:
        """Stop the agent and both instances, start them again (instances first, as at boot:
        they hold until the agent starts and releases them)."""
        self.stop()
        self.start()

    def stop(self) -> None:
        """Stop the agent, then both instances, as systemd stops the host's units."""
        assert self.agent is not None
        self._retired = self.cpu()
        self.agent.signal(signal.SIGTERM)
        assert self.agent.wait_exit(60) == 0
        # One SIGTERM each, both at once, and a wait: each tells its clients to reconnect
        # (explicit-exit-notify) as systemd's stop lets it; a second SIGTERM (Process.stop's)
        # makes OpenVPN exit at once, before those notifications are out.
        for proc in self.instances:
            proc.terminate()
        for proc in self.instances:
            proc.wait_exit(15)
            proc.stop()  # exited: closes its log

    def start(self) -> None:
        """Start both instances and then the agent again, after stop()."""
        self._restarts += 1
        for i in range(len(self.instances)):
            log = self.work / f"iotistic-{i}-restart-{self._restarts}.log"
            self.instances[i] = self.start_instance(i, log)
        # They hold (management-hold) until the agent holds their sockets and releases them.
        self.start_agent()
        for proc in self.instances:
            proc.wait_for(UP, timeout=30)

    def kill(self) -> None:
        """The host dies: the agent and both instances SIGKILLed (no explicit-exit-notify, no
        drain) and its underlay link down, so nothing answers the devices, not even an ICMP
        port unreachable."""
        for proc in [self.agent, *self.instances]:
            assert proc is not None
            proc.signal(signal.SIGKILL)
        self.ns.run(["ip", "link", "set", "eth0", "down"])
        for proc in [self.agent, *self.instances]:
            proc.stop()  # reaped, its log closed


@dataclass
class Outcomes:
    """How many of each OUTCOMES line the devices logged in one phase, and process restarts."""

    counts: dict[str, int]
    restarts: int

    def __getitem__(self, key: str) -> int:
        return self.counts[key]


class Device:
    """One device: its namespace, its client config and the OpenVPN runs it has had."""

    def __init__(self, name: str, ns: Namespace, conf: Path, address: str) -> None:
        self.name, self.ns, self.conf, self.address = name, ns, conf, address
        self.proc: Process | None = None
        self.logs: list[Path] = []  # one per OpenVPN run
        self.first, self.offset = 0, 0  # where the current phase starts: log index, byte
        self.restart_at: float | None = None
        # How far connected() has read since the mark, so each poll reads only what is new:
        # re-reading 1,000 whole logs 20 times a second took a quarter of a core from the
        # gateways the fleet times.
        self._scan = (0, 0)
        self._carry = b""
        self._up = False

    def start(self, work: Path) -> None:
        log = work / f"{self.name}-{len(self.logs)}.log"
        self.logs.append(log)
        self.proc = self.ns.start(["openvpn", "--config", str(self.conf)], log)

    def mark(self) -> None:
        self.first = max(len(self.logs) - 1, 0)
        self.offset = self.logs[-1].stat().st_size if self.logs else 0
        self._scan, self._carry, self._up = (self.first, self.offset), b"", False

    def connected(self) -> bool:
        """Whether its OpenVPN logged a connect since the mark, reading only the bytes logged
        since the last call."""
        up = UP.encode()
        while not self._up and self._scan[0] < len(self.logs):
            index, offset = self._scan
            try:
                with self.logs[index].open("rb") as log:
                    log.seek(offset)
                    new = log.read()
            except FileNotFoundError:  # a run being started: its log is named before it is made
                break
            text = self._carry + new
            self._up = up in text
            self._carry = text[-len(up) :]  # a line still being written
            if index == len(self.logs) - 1:
                self._scan = (index, offset + len(new))
                break
            # An earlier run's log is complete: its OpenVPN was reaped before the next started.
            self._scan, self._carry = (index + 1, 0), b""
        return self._up

    def since_mark(self) -> bytes:
        """What its OpenVPN runs logged since the phase began."""
        logs = self.logs[self.first :]
        if not logs:
            return b""
        return logs[0].read_bytes()[self.offset :] + b"".join(p.read_bytes() for p in logs[1:])


def management_socket(device: Device) -> Path:
    """Where the device's OpenVPN listens for its remote guard."""
    return device.conf.parent / "management.sock"


class DeviceFleet:
    """Device namespaces with the role's client config, supervised as systemd would."""

    def __init__(self, gw: FleetGateway, devices: dict[str, tuple[str, Path]]) -> None:
        """devices: name -> (VPN address, pki dir), as provision_fleet returns them."""
        self.gw = gw
        self.remotes = [gw]  # the gateways the devices' configs list
        self.work = gw.work / "fleet"
        self.work.mkdir(exist_ok=True)
        self.restarts = 0
        self.rng = random.Random(1)
        self.guard: Process | None = None
        self.devices = {n: self.make_device(n, *v) for n, v in devices.items()}
        self.guarded = list(self.devices.values())
        self._start_guard()
        self.listener: Process | None = None

    def make_device(self, name: str, address: str, pki_dir: Path) -> Device:
        device = Device(name, self.gw.ul.namespace(name), pki_dir / "client.conf", address)
        self._configure(device)
        if self.guard is not None:  # one made after the fleet (the anchor): answered too
            self.guarded.append(device)
            self._start_guard()
        return device

    def _start_guard(self) -> None:
        """The role's remote guard, one process answering every device's management socket
        (the role runs one per device); started again, as systemd would, to take a new one."""
        if not DEVICE_ROLE["openvpn_device_remote_guard"]:
            return
        if self.guard is not None:
            self.guard.stop()
            self.gw.ul.processes.remove(self.guard)
        sockets = [str(management_socket(d)) for d in self.guarded]
        self.guard = Process([sys.executable, "-I", remote_guard.__file__, *sockets],
                             self.work / f"guard-{len(self.guarded)}.log")  # fmt: skip
        self.gw.ul.processes.append(self.guard)

    def _configure(self, device: Device) -> None:
        """The device's client config as roles/openvpn_device renders it, dialling self.remotes
        (remote-random picks the order, as in the lab)."""
        device.conf.write_text(render_role_template(
            "openvpn_device/templates/iotistic.conf.j2",
            _openvpn_device_remote_port=conventions.OPENVPN_PORT,
            _openvpn_device_pki_dir=device.conf.parent,
            _openvpn_device_tunnel_interface=conventions.DEVICE_TUNNEL_INTERFACE,
            _openvpn_device_management_socket=management_socket(device),
            **{**DEVICE_ROLE, "openvpn_device_id": device.name,
               "openvpn_device_customer_id": CUSTOMER,
               "openvpn_device_remotes": [{"host": str(g.ns.address)} for g in self.remotes]},
        ))  # fmt: skip

    def dial(self, gateways: list[FleetGateway]) -> None:
        """Every device's config lists these gateways from its next start (the anchor's stays)."""
        self.remotes = gateways
        for d in self.devices.values():
            self._configure(d)

    def stop(self) -> None:
        """Stop every device's OpenVPN (each tells its gateway: explicit-exit-notify)."""
        running = [d for d in self.devices.values() if d.proc is not None]
        for d in running:
            d.proc.terminate()
        for d in running:
            d.proc.stop()
            d.proc, d.restart_at = None, None

    def start(self, names: list[str] | None = None) -> None:
        for name in names or list(self.devices):
            self.devices[name].start(self.work)

    def mark(self) -> None:
        """A new phase starts: outcomes and connects count from here."""
        for d in self.devices.values():
            d.mark()
        self.restarts = 0

    def supervise(self) -> None:
        """A device whose OpenVPN exited starts again after RestartSec plus the start delay,
        unless it exited with status 0 (a revoked device halted: RestartPreventExitStatus=0)."""
        now = time.monotonic()
        for d in self.devices.values():
            if d.proc is None or d.proc.running() or d.proc.proc.returncode == 0:
                continue
            if d.restart_at is None:
                d.proc.stop()  # reaped, its log closed
                d.restart_at = (
                    now
                    + DEVICE_ROLE["openvpn_device_restart_sec"]
                    + self.rng.uniform(0, DEVICE_ROLE["openvpn_device_start_jitter_s"])
                )
            elif now >= d.restart_at:
                d.restart_at = None
                d.proc = None
                self.restarts += 1
                d.start(self.work)

    @contextlib.contextmanager
    def supervising(self) -> Iterator[None]:
        """supervise() every 0.1 s in a thread for the block (a phase: its action too, as a
        device's unit restarts it whatever the bench is doing)."""
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(0.1):
                self.supervise()

        thread = threading.Thread(target=loop, name="fleet-supervisor", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(10)

    def connected(self) -> list[str]:
        return [n for n, d in self.devices.items() if d.connected()]

    def wait_connected(self, timeout: float, started: float | None = None) -> float:
        """Seconds from `started` (default now) until every device logged a connect since the
        mark (run it under supervising()). Fails naming the missing ones after timeout."""
        started = time.monotonic() if started is None else started
        pending = set(self.devices)

        def done() -> bool:
            pending.difference_update([n for n in pending if self.devices[n].connected()])
            return not pending

        # A look at a log costs about 8 us: at most 0.2 s between polls while 1,000 are pending,
        # so the watching takes 4 % of a core from the gateways it times, not 16 %.
        deadline = started + timeout
        while not done():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            time.sleep(min(left, max(0.05, min(0.2, len(pending) * 0.0002))))
        if pending:
            missing = sorted(pending)
            raise AssertionError(
                f"{len(missing)} of {len(self.devices)} devices not connected after {timeout} s: "
                f"{missing[:10]}; {self.outcomes()}"
            ) from None
        return time.monotonic() - started

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far of what shares this machine's cores with the gateways: the running
        devices' OpenVPN (with any children they waited for), the remote guard, and the harness
        watching them all (this process)."""
        openvpn = 0.0
        for d in self.devices.values():
            if d.proc is not None and d.proc.running():
                with contextlib.suppress(OSError):  # exited since running()
                    openvpn += cpu_seconds(d.proc.pid, children=True)
        guard = 0.0
        if self.guard is not None and self.guard.running():
            guard = cpu_seconds(self.guard.pid)
        return {"devices": openvpn, "guard": guard, "harness": time.process_time()}

    def outcomes(self) -> Outcomes:
        counts = dict.fromkeys(OUTCOMES, 0)
        for d in self.devices.values():
            text = d.since_mark()
            for key, line in OUTCOMES.items():
                counts[key] += text.count(line.encode())
        return Outcomes(counts, self.restarts)

    def registry_online(
        self, timeout: float = 30, gateway: str = GATEWAY, interval: float = 0.5
    ) -> list[str]:
        """Wait (bounded) until the registry says every device is connected on that gateway
        with its address; return the problems left (empty when all are)."""
        want = {n: d.address for n, d in self.devices.items()}
        problems: list[str] = []

        def check() -> bool:
            rows = {d.id: d for d in self.gw.registry.list_devices(customer_id=CUSTOMER)}
            problems[:] = [
                f"{n}: connected={rows[n].connected} gateway={rows[n].gateway} "
                f"address={rows[n].vpn_address} (want {a})"
                for n, a in want.items()
                if n not in rows
                or not (
                    rows[n].connected
                    and rows[n].gateway == gateway
                    and str(rows[n].vpn_address) == a
                )
            ]
            return not problems

        with contextlib.suppress(AssertionError):
            wait_until(check, timeout, "every device online in the registry", interval=interval)
        return problems

    def listen(self) -> None:
        """One process listening on :48484 in every device namespace."""
        spec = self.work / "listen.json"
        spec.write_text(json.dumps({n: d.ns.name for n, d in self.devices.items()}))
        self.listener = Process(
            [sys.executable, "-m", "tests.support.fleet_probe", "listen", str(spec)],
            self.work / "listener.log", PROBE_ENV,
        )  # fmt: skip
        self.gw.ul.processes.append(self.listener)
        self.listener.wait_for("listening on", timeout=60)

    def ask_all(
        self, concurrency: int = 32, via: FleetGateway | None = None
    ) -> tuple[float, list[str]]:
        """Every device asked through a gateway's tunnel service (via, default the first one;
        all present the fleet's certificate, named GATEWAY); (seconds, problems)."""
        fleet = self.gw.fleet
        spec = self.work / "ask.json"
        address = (via or self.gw).ns.address
        spec.write_text(json.dumps({
            "gateway": GATEWAY, "address": str(address), "devices": list(self.devices),
            "cert": str(fleet.api.cert_path), "key": str(fleet.api.key_path),
            "ca": str(fleet.chain), "concurrency": concurrency,
        }))  # fmt: skip
        started = time.monotonic()
        out = self.gw.api_ns.run(
            [sys.executable, "-m", "tests.support.fleet_probe", "ask", str(spec)],
            env=PROBE_ENV, timeout=60 + len(self.devices) / 5,
        )  # fmt: skip
        took = time.monotonic() - started
        answers = json.loads(out.stdout.strip().splitlines()[-1])
        return took, [f"{n}: {a}" for n, a in answers.items() if a != n]


def hold_tunnel(fl: DeviceFleet, device: str, via: FleetGateway | None = None) -> Process:
    """A tunnel to the device through a gateway's tunnel service (via, default the first one),
    kept open by a probe in the API's namespace (fleet_probe hold): its log says "open", then
    "closed <CLOCK_MONOTONIC s>" when the gateway ends it, then how a new dial went."""
    spec = fl.work / f"hold-{device}.json"
    spec.write_text(json.dumps({
        "gateway": GATEWAY, "address": str((via or fl.gw).ns.address), "device": device,
        "cert": str(fl.gw.fleet.api.cert_path), "key": str(fl.gw.fleet.api.key_path),
        "ca": str(fl.gw.fleet.chain),
    }))  # fmt: skip
    probe = fl.gw.api_ns.start(
        [sys.executable, "-m", "tests.support.fleet_probe", "hold", str(spec)],
        fl.work / f"hold-{device}.log", PROBE_ENV,
    )  # fmt: skip
    probe.wait_for("^open$", timeout=15)
    return probe


def sequential_handshakes(work: Path, device: Device, count: int) -> float:
    """The anchor: `count` connects of one device one after another (start OpenVPN, wait for
    its connect, stop it: explicit-exit-notify ends the session); handshakes per second."""
    took = 0.0
    for _ in range(count):
        started = time.monotonic()
        device.start(work)
        assert device.proc is not None
        device.proc.wait_for(UP, timeout=60)
        took += time.monotonic() - started
        device.proc.stop()
    return count / took


def second_gateway(fl: DeviceFleet, dsn: str) -> tuple[FleetGateway, dict]:
    """gw-2 beside the fleet's gateway (its own namespace, address, instances and agent, the same
    registry), every device restarted with both in its config, then all gathered on gw-1 (gw-2
    drained at GATHER_RATE, restarted once all are on gw-1), so a failover starts with every
    device on one gateway. Returns gw-2 and {took: all connected, on_gw2: how many picked gw-2,
    gathered: seconds after, problems: devices not online on gw-1}."""
    gw, n = fl.gw, len(fl.devices)
    work = gw.work / SECOND_GATEWAY
    work.mkdir()
    work.chmod(0o755)  # OpenVPN reads crl.d as nobody
    gw2 = FleetGateway(gw.fleet, gw.ul, work, dsn, gw.pg, 30, register=False,
                       name=SECOND_GATEWAY, api_ns=gw.api_ns)  # fmt: skip
    gw2.load_firewall()
    fl.stop()
    fl.dial([gw, gw2])
    fl.mark()
    started = time.monotonic()
    with fl.supervising():
        fl.start()
        took = fl.wait_connected(300 + n / 2, started)  # set-up, not timed: a loaded gateway
        rows = gw.registry.list_devices(customer_id=CUSTOMER)
        on_gw2 = sum(d.gateway == SECOND_GATEWAY and d.id in fl.devices for d in rows)
        gw2.drain(GATHER_RATE, n)
        # gw-2 refuses every connect while it drains: a device whose handshake with gw-1 fails
        # comes back to it and is sent on, so it is restarted only once all are on gw-1.
        problems = fl.registry_online(300 + n / 2, gateway=GATEWAY)
        gw2.restart()
    gathered = time.monotonic() - started - took
    return gw2, {"took": took, "on_gw2": on_gw2, "gathered": gathered, "problems": problems}


def move_to(fl: DeviceFleet, survivor: FleetGateway, action, timeout: float) -> dict:
    """A failover: action (another gateway's clean stop or death, run in a thread as a host's
    shutdown runs beside its devices) from now; then the seconds until every device logged a
    connect (`connected`) and until the registry has every one online on the survivor with its
    own address (`took`, polled every 0.1 s; NaN when some are not, listed in
    `online_problems`); for the devices that noticed by ping-restart, when they did after the
    action's start (`noticed`) and how long they took from there to connected (`back`)."""
    fl.mark()
    started, wall = time.monotonic(), time.time()
    failed: list[BaseException] = []

    def run() -> None:
        try:
            action()
        except BaseException as exc:  # raised below, once the devices were waited for
            failed.append(exc)

    worker = threading.Thread(target=run, name=f"to-{survivor.name}")
    missing: list[str] = []
    with fl.supervising():
        worker.start()
        try:
            connected = fl.wait_connected(timeout, started)
        except AssertionError as exc:
            connected, missing = float("nan"), [str(exc)]
        problems = fl.registry_online(timeout - (time.monotonic() - started),
                                      gateway=survivor.name, interval=0.1)  # fmt: skip
        took = float("nan") if problems or missing else time.monotonic() - started
        worker.join(timeout)
    if failed:
        raise failed[0]
    noticed, back = [], []
    for device in fl.devices.values():
        times = notice_and_return(device.since_mark())
        if times is not None:
            noticed.append(times[0] - wall)
            back.append(times[1] - times[0])
    return {"connected": connected, "took": took, "online_problems": [*missing, *problems],
            "noticed": noticed, "back": back}  # fmt: skip


_LOGGED = re.compile(rb"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) (.*)$", re.M)


def notice_and_return(log: bytes) -> tuple[float, float] | None:
    """(when the device noticed its gateway dead by ping-restart, when it was connected again
    after), epoch seconds by its OpenVPN log's clock (whole seconds); None without both."""
    noticed = None
    for stamp, line in _LOGGED.findall(log):
        if noticed is None and OUTCOMES["ping_restart"].encode() in line:
            noticed = time.mktime(time.strptime(stamp.decode(), "%Y-%m-%d %H:%M:%S"))
        elif noticed is not None and UP.encode() in line:
            return noticed, time.mktime(time.strptime(stamp.decode(), "%Y-%m-%d %H:%M:%S"))
    return None
