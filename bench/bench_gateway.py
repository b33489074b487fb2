"""Gateway benchmark: connects through one OpenVPN instance, plain certificate auth vs the agent.

A gateway namespace runs one instance configured as the openvpn_gateway role does; a device
namespace runs CLIENTS OpenVPN clients (real tun devices, addresses not applied) that connect
all at once, once per round (each round replaces the previous round's sessions, as reconnecting
devices do). Cases:

  plain        no agent, no management-client-auth (addresses from an ifconfig-pool)
  agent        management-client-auth decided by iotistic_vpn.gateway (its own process)
  x 10 or 100,000 revoked serials: registry rows and files in the crl-verify directory
  (the 100,000 case also has 100,000 devices in the registry and the agent's snapshot)

All cases are up at once, each in its own namespaces, and a trial is one round of one case: the
rounds run interleaved (bench/ratios.py), one warm-up round and --pairs more, 5 by default (a
round is some 3 s at 100 clients), the case order reversed every round, and each ratio is the
median of its per-round ratios with their min and max. For each case: connects/s by the wall
clock (bounded by the clients, which run on the other cores) and connects per CPU-second of the
gateway side (OpenVPN + agent, from /proc, pinned to CPU 0), which is what a gateway core can
carry. Also times the agent's registry reads at 100,000 devices. The clients arrive one at a
time at some 50/s, so the agent's figure here is its trickle cost; bench_agent.py measures it in
a storm. Prints figures and ratios; asserts nothing about time. Needs root (network namespaces).

  .venv/bin/python bench/bench_gateway.py [--clients 100] [--pairs 5] [--no-big]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.ratios import Ratio, alternate  # noqa: E402
from iotistic_vpn import pki  # noqa: E402
from iotistic_vpn.crldir import CrlDir  # noqa: E402
from iotistic_vpn.gateway.store import AgentStore  # noqa: E402
from iotistic_vpn.pki import tlscrypt  # noqa: E402
from iotistic_vpn.registry import Certificate, Registry  # noqa: E402
from tests.support.netns import (  # noqa: E402
    Namespace,
    Process,
    Underlay,
    openvpn_client_config,
    openvpn_gateway_config,
    wait_until,
)
from tests.support.postgres import PgServer, throwaway_cluster  # noqa: E402
from tests.support.procstat import cpu_seconds  # noqa: E402

# Under the repo's build/ (see bench_pki.py: /tmp creates files far slower here); it must be
# traversable by nobody, whom OpenVPN becomes after start and who reads crl.d per handshake.
WORK_ROOT = REPO / "build"
BIG = 100_000
SMALL = 10
PER_CUSTOMER = 4_000  # a /20 customer block holds 4,093
UP = "Initialization Sequence Completed"
# The gateway side (OpenVPN and the agent) on CPU 0, the clients on the others, as a gateway
# and its devices are different machines: the clients' own handshakes stay off the core whose
# CPU the bench reads.
CPUS = sorted(os.sched_getaffinity(0))
GATEWAY_CPUS = ["taskset", "-c", str(CPUS[0])] if len(CPUS) > 1 else []
CLIENT_CPUS = ["taskset", "-c", ",".join(map(str, CPUS[1:]))] if len(CPUS) > 1 else []


@dataclass(frozen=True)
class Round:
    """One trial: one round of connects through one case's gateway."""

    wall: float
    cpu: float  # gateway-side CPU seconds
    agent_cpu: float  # of which the agent's own


@dataclass
class Case:
    name: str
    agent: bool
    revoked: int
    rounds: list[Round]  # the measured rounds, in the order they ran

    @property
    def wall(self) -> list[float]:
        return [r.wall for r in self.rounds]

    @property
    def cpu(self) -> list[float]:
        return [r.cpu for r in self.rounds]

    @property
    def agent_cpu(self) -> list[float]:
        return [r.agent_cpu for r in self.rounds]

    def rate(self, clients: int) -> float:
        return clients / statistics.median(self.wall)

    def per_core(self, clients: int) -> float:
        return clients / statistics.median(self.cpu)


class Bench:
    def __init__(self, work: Path, pg: PgServer, clients: int, profile: Path | None = None) -> None:
        self.work, self.pg, self.clients = work, pg, clients
        self.profile = profile  # write the agent's cProfile stats here (its first run only)
        ca = pki.ensure_ca(pki.CaFiles.at(work / "ca")).ca
        self.ca = ca
        self.chain = work / "ca" / pki.CA_CHAIN
        self.gw_dir = work / "gateway"
        result = pki.ensure_gateway_cert(ca, "gw-1", self.gw_dir)
        shutil.copy(result.cert_path, self.gw_dir / "server.crt")
        shutil.copy(result.key_path, self.gw_dir / "server.key")
        shutil.copy(self.chain, self.gw_dir / "ca.pem")
        server_key = tlscrypt.generate_server_key()
        (self.gw_dir / "tls-crypt-v2.key").write_bytes(server_key)
        self.names = [f"bench-{i}" for i in range(clients)]
        requests = [pki.DeviceRequest("bench", n, generate_key=True) for n in self.names]
        self.certs = pki.ensure_device_certs(ca, requests, work / "devices")
        for n in self.names:
            (work / f"{n}.tc").write_bytes(tlscrypt.generate_client_key(server_key))

    # -- registry ------------------------------------------------------------------------------

    def database(self, name: str, devices: int, revoked: int) -> str:
        """A migrated registry with the bench clients, `devices` more and `revoked` serials."""
        with self.pg.connect() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        dsn = self.pg.dsn_for(name)
        with Registry(dsn) as reg:
            reg.migrate()
            reg.ensure_customer("bench", actor="bench")
            reg.provision_devices("bench", self.names, actor="bench")
            reg.record_certificates(
                "bench",
                [
                    Certificate(int(c.serial), c.device, c.fingerprint,
                                dt.datetime.fromisoformat(c.not_before),
                                dt.datetime.fromisoformat(c.not_after))
                    for c in self.certs
                ],
                actor="bench",
            )  # fmt: skip
            now = dt.datetime.now(dt.UTC)
            for block in range(devices // PER_CUSTOMER):
                customer = f"fleet-{block}"
                ids = [f"{customer}-{i}" for i in range(PER_CUSTOMER)]
                reg.ensure_customer(customer, actor="bench")
                reg.provision_devices(customer, ids, actor="bench")
                base = (block + 1) * 10**9
                reg.record_certificates(
                    customer,
                    [
                        Certificate(base + i, d, f"{base + i:064x}", now - dt.timedelta(days=1),
                                    now + dt.timedelta(days=365))
                        for i, d in enumerate(ids)
                    ],
                    actor="bench",
                )  # fmt: skip
        with self.pg.connect(name) as conn:
            # Old certificates of rotated devices: revoked rows in bulk (the guard trigger
            # lets revoked rows through), spread over the bench devices.
            conn.execute(
                "INSERT INTO certificates (serial, device_id, fingerprint, not_before, not_after,"
                " revoked_at, revocation_reason)"
                " SELECT 10::numeric ^ 30 + g, %s, md5(g::text) || md5('r' || g),"
                " now() - interval '400 days', now() + interval '300 days', now(), 'superseded'"
                " FROM generate_series(1, %s) AS g",
                (self.names[0], revoked),
            )
        return dsn

    # -- one case ------------------------------------------------------------------------------

    def open_case(
        self, stack: contextlib.ExitStack, name: str, agent: bool, revoked: int, dbname: str | None
    ) -> LiveCase:
        """Bring one case's gateway up in namespaces of its own, closed with the stack."""
        case_dir = self.work / name
        case_dir.mkdir(mode=0o755)
        crl_dir = case_dir / "crl.d"
        started = time.perf_counter()
        if dbname is not None:
            with Registry(self.pg.dsn_for(dbname)) as reg:
                serials = reg.revoked_serials()
        else:
            serials = {10**30 + g for g in range(1, revoked + 1)}
        CrlDir(crl_dir).sync(serials)
        took = time.perf_counter() - started
        print(f"  {name}: crl.d with {len(serials):,} files in {took:.1f}s", flush=True)
        ul = stack.enter_context(Underlay(case_dir))
        gw = ul.namespace("gw")
        devices = ul.namespace("dev")
        # One source address per client, as real devices have: with a shared address a new
        # client can draw the port of a session the server still holds.
        for i in range(self.clients):
            devices.run(["ip", "addr", "add", f"{_client_address(i)}/24", "dev", "eth0"])
        conf = case_dir / "iotistic-0.conf"
        conf.write_text(openvpn_gateway_config(
            0, pki_dir=self.gw_dir, crl_dir=crl_dir, management=case_dir / "mgmt.sock",
            status=case_dir / "status", client_auth=agent,
        ))  # fmt: skip
        server = gw.start([*GATEWAY_CPUS, "openvpn", "--config", str(conf)],
                          case_dir / "server.log")  # fmt: skip
        server.wait_for(UP)
        watched = [server.pid]
        if agent:
            assert dbname is not None
            watched.append(self._start_agent(gw, case_dir, crl_dir, dbname).pid)
        return LiveCase(self, name, agent, revoked, case_dir, gw, devices, watched)

    def _start_agent(self, gw: Namespace, case_dir: Path, crl_dir: Path, dbname: str) -> Process:
        toml = case_dir / "gateway-agent.toml"
        toml.write_text(
            f'gateway = "gw-1"\nhttp_listen = "127.0.0.1:8089"\n'
            f'state_path = "{case_dir}/state/agent.db"\ncrl_dir = "{crl_dir}"\n'
            # No refresh or reconcile inside the measured rounds: their cost is timed apart.
            f"snapshot_interval_s = 3600\nreconcile_interval_s = 3600\n"
            f'[registry]\nhost = "{self.pg.socket_dir}"\nport = {self.pg.port}\n'
            f'dbname = "{dbname}"\nuser = "postgres"\npassword = "{self.pg.password}"\n'
            f'[[instances]]\nname = "iotistic-0"\nmanagement = "{case_dir}/mgmt.sock"\n'
            f'tun = "tun0"\n'
        )
        python = "/usr/bin/python3" if _debian_agent() else sys.executable
        env = {**os.environ, "PYTHONPATH": str(REPO / "python_plugins"), "PYTHONUNBUFFERED": "1"}
        argv = [python, "-m", "iotistic_vpn.gateway", "--config", str(toml)]
        if self.profile is not None:
            argv[1:1] = ["-m", "cProfile", "-o", str(self.profile)]
            self.profile = None
        proc = gw.start([*GATEWAY_CPUS, *argv], case_dir / "agent.log", env)
        proc.wait_for("holding management socket", timeout=60)
        return proc

    def _start_clients(
        self, devices: Namespace, gw: Namespace, case_dir: Path, round_no: int
    ) -> list[Process]:
        procs = []
        for i, cert in enumerate(self.certs):
            conf = case_dir / f"{cert.device}.conf"
            if round_no == 0:
                conf.write_text(openvpn_client_config(
                    str(gw.address), [11940], ca=self.chain, cert=Path(cert.cert_path),
                    key=Path(str(cert.key_path)), tls_crypt=self.work / f"{cert.device}.tc",
                    # One namespace for all: each opens its tun, none applies the address.
                    extra=["ifconfig-noexec", "route-noexec", "bind",
                           f"local {_client_address(i)}", "lport 0"],
                ).replace("nobind\n", ""))  # fmt: skip
            log = case_dir / f"{cert.device}-{round_no}.log"
            procs.append(devices.start([*CLIENT_CPUS, "openvpn", "--config", str(conf)], log))
        return procs

    def _wait_all(self, clients: list[Process]) -> None:
        pending = list(clients)

        def done() -> bool:
            pending[:] = [p for p in pending if UP.encode() not in p.log.read_bytes()]
            return not pending

        wait_until(done, 120, f"{len(clients)} clients to connect", interval=0.02)


class LiveCase:
    """One case's gateway, up; each call of round() is one trial."""

    def __init__(self, bench: Bench, name: str, agent: bool, revoked: int, case_dir: Path,
                 gw: Namespace, devices: Namespace, watched: list[int]) -> None:  # fmt: skip
        self.bench, self.name, self.agent, self.revoked = bench, name, agent, revoked
        self.case_dir, self.gw, self.devices, self.watched = case_dir, gw, devices, watched
        self.round_no = 0

    def round(self) -> Round:
        """All clients connect once; the gateway side's CPU over it (OpenVPN, then the agent)."""
        before = [cpu_seconds(p, children=True) for p in self.watched]
        t0 = time.perf_counter()
        clients = self.bench._start_clients(self.devices, self.gw, self.case_dir, self.round_no)
        self.bench._wait_all(clients)
        wall = time.perf_counter() - t0
        # The gateway side settles (ESTABLISHED, spool, routes) before CPU is read.
        time.sleep(0.5)
        used = [
            cpu_seconds(p, children=True) - b for p, b in zip(self.watched, before, strict=True)
        ]
        # The clients vanish without a word, outside the measurement: the next round's
        # sessions replace theirs, as reconnecting devices do.
        for proc in clients:
            proc.signal(9)
        for proc in clients:
            proc.stop()
        self.round_no += 1
        return Round(wall, sum(used), sum(used[1:]))

    def case(self, rounds: list[Round]) -> Case:
        return Case(self.name, self.agent, self.revoked, rounds)


def _client_address(i: int) -> str:
    return f"198.18.0.{10 + i}"


def _debian_agent() -> bool:
    probe = subprocess.run(["/usr/bin/python3", "-c", "import psycopg, prometheus_client"],
                           capture_output=True, check=False)  # fmt: skip
    return probe.returncode == 0


def time_registry_reads(pg: PgServer, dsn: str, work: Path) -> dict[str, float]:
    """The agent's periodic work at 100,000 devices, each best of 3."""

    def best(fn, runs: int = 3) -> tuple[float, object]:
        times, value = [], None
        for _ in range(runs):
            start = time.perf_counter()
            value = fn()
            times.append(time.perf_counter() - start)
        return min(times), value

    out: dict[str, float] = {}
    with Registry(dsn) as reg:
        out["snapshot"], snap = best(reg.gateway_snapshot)
        out["revoked"], revoked = best(reg.revoked_serials)
        _, again = best(reg.gateway_snapshot, 1)
    out["devices"] = len(snap.devices)
    out["serials"] = len(revoked)
    out["compare"], _ = best(lambda: snap.devices != again.devices)
    store = AgentStore(work / "scale-agent.db")
    out["save"], _ = best(lambda: store.save_snapshot(snap), 1)
    out["load"], _ = best(store.load_snapshot, 1)
    store.close()
    crl = CrlDir(work / "scale-crl.d")
    out["crl_first"], _ = best(lambda: crl.sync(revoked), 1)
    out["crl_again"], _ = best(lambda: crl.sync(revoked))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=100, choices=range(1, 241),
                        metavar="1-240")  # fmt: skip
    parser.add_argument("--pairs", type=int, default=5,
                        help="measured rounds per case after a warm-up (at least 5)")  # fmt: skip
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs)")
    parser.add_argument("--no-big", action="store_true",
                        help="skip the 100,000-serial cases and the registry timings")  # fmt: skip
    parser.add_argument("--profile-agent", type=Path, metavar="FILE",
                        help="run the agent of agent-10 under cProfile, stats to FILE")  # fmt: skip
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_gateway needs root (network namespaces)")
    WORK_ROOT.mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-gateway-", dir=WORK_ROOT))
    work.chmod(0o755)
    try:
        with throwaway_cluster() as pg:
            print(f"setting up: {args.clients} device certificates, registries of {SMALL} and "
                  f"{BIG:,} revoked serials", flush=True)  # fmt: skip
            bench = Bench(work, pg, args.clients, args.profile_agent)
            started = time.perf_counter()
            bench.database("small", 0, SMALL)
            scale: dict[str, float] = {}
            if not args.no_big:
                bench.database("big", BIG, BIG)
            print(f"  registries ready in {time.perf_counter() - started:.1f}s", flush=True)
            if not args.no_big:
                scale = time_registry_reads(pg, pg.dsn_for("big"), work)
            specs = [("plain-10", False, SMALL, None), ("agent-10", True, SMALL, "small")]
            if not args.no_big:
                specs += [("agent-100k", True, BIG, "big"), ("plain-100k", False, BIG, None)]
            with contextlib.ExitStack() as stack:
                live = [bench.open_case(stack, *spec) for spec in specs]
                print(f"  {len(live)} cases up: 1 warm-up round and {args.pairs} measured, "
                      f"interleaved", flush=True)  # fmt: skip
                runs = alternate({c.name: c.round for c in live}, args.pairs)
            cases = [c.case(runs[c.name]) for c in live]
    finally:
        if args.keep:
            print(f"work dir kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    report(cases, scale, args.clients, args.pairs)


def report(cases: list[Case], scale: dict[str, float], clients: int, pairs: int) -> None:
    def row(label: str, *values: str) -> None:
        print(f"  {label:44}" + "".join(f"{v:>16}" for v in values))

    print()
    print(f"Gateway benchmark: {clients} clients x {pairs} interleaved rounds through one "
          f"instance per case (median round)")  # fmt: skip
    row("case", "connects/s", "per core", "gateway CPU/rd", "agent ms/conn")
    by_name = {c.name: c for c in cases}
    for case in cases:
        row(
            f"{case.name} ({'agent' if case.agent else 'plain cert auth'}, "
            f"{case.revoked:,} revoked)",
            f"{case.rate(clients):,.0f}",
            f"{case.per_core(clients):,.0f}",
            f"{statistics.median(case.cpu):.2f}s",
            f"{statistics.median(case.agent_cpu) * 1000 / clients:.2f}",
        )
    if scale:
        print()
        print(f"Agent's periodic work at {int(scale['devices']):,} devices and "
              f"{int(scale['serials']):,} revoked serials (best of 3)")  # fmt: skip
        row("snapshot query (Registry.gateway_snapshot)", f"{scale['snapshot']:.2f}s")
        row("revoked serials (Registry.revoked_serials)", f"{scale['revoked']:.2f}s")
        row("snapshot compare (unchanged)", f"{scale['compare']:.3f}s")
        row("snapshot save / load (AgentStore)",
            f"{scale['save']:.2f}s / {scale['load']:.2f}s")  # fmt: skip
        row("crl.d first sync / unchanged sync", f"{scale['crl_first']:.2f}s / "
            f"{scale['crl_again']:.3f}s")  # fmt: skip

    def per_core(name: str, subject: Case, anchor: Case, goal: float | None = None) -> Ratio:
        # CPU seconds per round: times, so the ratio is connects per core, subject over anchor.
        return Ratio.of(name, subject.cpu, anchor.cpu, higher_is_better=False, goal=goal)

    plain, agent = by_name["plain-10"], by_name["agent-10"]
    print()
    width = 50
    # The agent may cost at most +20% CPU per connect: per core, at least 1 / 1.2 of plain.
    vs_plain = per_core("ratio agent / plain, connects per core", agent, plain, 1 / 1.2)
    vs_plain.row(width)
    print(f"  the agent costs {1 / vs_plain.median - 1:+.0%} CPU per connect "
          f"({1 / vs_plain.max - 1:+.0%} to {1 / vs_plain.min - 1:+.0%} over the pairs; "
          f"goal < +20%)")  # fmt: skip
    Ratio.of("ratio agent / plain, connects/s wall clock", agent.wall, plain.wall,
             higher_is_better=False).row(width)  # fmt: skip
    if "agent-100k" not in by_name:
        return
    big, plain_big = by_name["agent-100k"], by_name["plain-100k"]
    per_core("ratio agent 100k / 10 revoked, per core", big, agent).row(width)
    print("  (goal ~1: no growth)")
    per_core("ratio plain 100k / 10 revoked, per core", plain_big, plain).row(width)


if __name__ == "__main__":
    main()
