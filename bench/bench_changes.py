"""Change-feed benchmark: what one registry change costs a gateway agent at 100,000 devices.

One registry of 100,000 devices (with their certificates) and two real gateway agents on it,
each in its own network namespace with a scripted management peer (tests/support/fake_openvpn.py)
in place of OpenVPN:

  pushed   the agent as shipped: it LISTENs on the change feed and reads only what changed
  polled   the same agent set to read every device every 5 s (snapshot_interval_s and
           full_read_interval_s 5): what the agent did before the change feed

Measured, each as interleaved pairs (bench/ratios.py), the median with min and max:
  - CPU at rest: both agents' CPU seconds over the same 10 s windows, no change in the registry;
  - one change, read: Registry.gateway_changes after one revocation (the pushed agent's read)
    against Registry.gateway_view (a full read), timed in this process;
  - what publishing costs a writer: a customer's 4,000 devices and certificates provisioned with
    the feed's triggers and with them disabled;
  - revoke -> session ended: `iotistic-vpn devices revoke DEV` run as a command, from its start
    to the pushed agent's `client-kill CID HALT` reaching the management socket, for --trials
    devices with a live session (p50 and p99). A real OpenVPN then ends the tunnel in about
    20 ms more (tests/e2e/test_3_revoke.py measures that whole path in the lab).

Prints figures and ratios; asserts nothing about time. Needs root (network namespaces).

  .venv/bin/python bench/bench_changes.py [--devices 100000] [--pairs 5] [--trials 20]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.ratios import Ratio, alternate  # noqa: E402
from iotistic_vpn.registry import Certificate, Registry  # noqa: E402
from tests.support.fake_openvpn import FakeOpenVPN  # noqa: E402
from tests.support.gateway_harness import AGENT_ENV, AGENT_PYTHON  # noqa: E402
from tests.support.netns import Underlay, wait_until  # noqa: E402
from tests.support.postgres import PgServer, throwaway_cluster  # noqa: E402
from tests.support.procstat import CLK_TCK, cpu_seconds  # noqa: E402

PER_CUSTOMER = 4_000  # a /20 customer block holds 4,093
WINDOW_S = 10.0
POLLED = "snapshot_interval_s = 5\nfull_read_interval_s = 5"  # the agent before the change feed
CLI = REPO / ".venv" / "bin" / "iotistic-vpn"


def populate(pg: PgServer, devices: int, trials: int) -> tuple[str, dict[str, int]]:
    """A migrated registry of `devices` devices, plus `trials` devices to revoke (by serial)."""
    with pg.connect() as conn:
        conn.execute('CREATE DATABASE "changes"')
    dsn = pg.dsn_for("changes")
    now = dt.datetime.now(dt.UTC)

    def certificates(ids: list[str], base: int) -> list[Certificate]:
        return [
            Certificate(base + i, d, f"{base + i:064x}", now - dt.timedelta(days=1),
                        now + dt.timedelta(days=365))
            for i, d in enumerate(ids)
        ]  # fmt: skip

    with Registry(dsn) as reg:
        reg.migrate()
        for block in range(devices // PER_CUSTOMER):
            customer = f"fleet-{block}"
            ids = [f"{customer}-{i}" for i in range(PER_CUSTOMER)]
            reg.ensure_customer(customer, actor="bench")
            reg.provision_devices(customer, ids, actor="bench")
            reg.record_certificates(customer, certificates(ids, (block + 1) * 10**9), actor="bench")
        ids = [f"trial-{i}" for i in range(trials)]
        reg.ensure_customer("acme", actor="bench")  # the scripted peer says O=acme
        reg.provision_devices("acme", ids, actor="bench")
        reg.record_certificates("acme", certificates(ids, 10**12), actor="bench")
    with pg.connect("changes") as conn:
        conn.execute("ANALYZE")  # as autovacuum would have by now on a registry in service
    return dsn, {d: 10**12 + i for i, d in enumerate(ids)}


class Agent:
    """One agent process in its own namespace, its instance a FakeOpenVPN."""

    def __init__(self, ul: Underlay, name: str, pg: PgServer, work: Path, settings: str) -> None:
        self.ns = ul.namespace(name, plugged=False)
        # A veth pair stands in for the instance's tun: a link routes can point at.
        self.ns.run(["ip", "link", "add", "tun0", "type", "veth", "peer", "name", "tun0-peer"])
        for link in ("tun0", "tun0-peer"):
            self.ns.run(["ip", "link", "set", link, "up"])
        self.dir = work / name
        self.dir.mkdir()
        self.peer = FakeOpenVPN(self.dir / "mgmt.sock")
        toml = self.dir / "gateway-agent.toml"
        toml.write_text(
            f'gateway = "gw-{name}"\nhttp_listen = "127.0.0.1:8089"\n'
            f'state_path = "{self.dir}/agent.db"\ncrl_dir = "{self.dir}/crl.d"\n'
            f"reconcile_interval_s = 3600\n{settings}\n"
            f'[registry]\nhost = "{pg.socket_dir}"\nport = {pg.port}\ndbname = "changes"\n'
            f'user = "postgres"\npassword = "{pg.password}"\nsslmode = "disable"\n'
            f'[[instances]]\nname = "iotistic-0"\nmanagement = "{self.peer.path}"\n'
            'tun = "tun0"\n'
        )
        argv = [AGENT_PYTHON, "-m", "iotistic_vpn.gateway", "--config", str(toml)]
        self.process = self.ns.start(argv, self.dir / "agent.log", AGENT_ENV)
        self.process.wait_for(r"holding management socket", timeout=120)

    def cpu(self) -> float:
        return cpu_seconds(self.process.pid)

    def close(self) -> None:
        self.process.stop()
        self.peer.close()


def at_rest(agents: dict[str, Agent], pairs: int) -> dict[str, list[float]]:
    """Each agent's CPU seconds per window; all agents measured over the same windows."""
    out: dict[str, list[float]] = {name: [] for name in agents}
    for _ in range(pairs):
        before = {name: a.cpu() for name, a in agents.items()}
        time.sleep(WINDOW_S)
        for name, agent in agents.items():
            out[name].append(agent.cpu() - before[name])
    return out


def one_change(dsn: str, pairs: int) -> dict[str, list[float]]:
    """Seconds of gateway_changes after one revocation, and of a full read, interleaved."""
    reg = Registry(dsn)
    victims = iter(f"fleet-0-{i}" for i in range(10_000))

    def changes() -> float:
        cursor = reg.change_cursor()
        reg.revoke_certificates("fleet-0", [10**9 + int(next(victims).rsplit("-", 1)[1])],
                                actor="bench")  # fmt: skip
        started = time.perf_counter()
        read = reg.gateway_changes(cursor)
        took = time.perf_counter() - started
        assert read is not None and len(read.devices) == 1, read
        return took

    def full() -> float:
        started = time.perf_counter()
        reg.gateway_view()
        return time.perf_counter() - started

    try:
        return alternate({"changes": changes, "full": full}, pairs)
    finally:
        reg.close()


PUBLISHERS = {"devices": "devices_publish_insert", "certificates": "certificates_publish_insert"}


def write_cost(pg: PgServer, dsn: str, pairs: int) -> dict[str, list[float]]:
    """Seconds to provision a customer's 4,000 devices with their certificates, with the change
    feed's triggers (as shipped) and with them disabled, interleaved: what publishing costs."""
    customers = (f"write-{i}" for i in range(1000))
    now = dt.datetime.now(dt.UTC)

    def provision(published: bool) -> float:
        verb = "ENABLE" if published else "DISABLE"
        with pg.connect("changes") as conn:
            for table, trigger in PUBLISHERS.items():
                conn.execute(f"ALTER TABLE {table} {verb} TRIGGER {trigger}")
        customer = next(customers)
        ids = [f"{customer}-{i}" for i in range(PER_CUSTOMER)]
        base = 10**13 + int(customer.rsplit("-", 1)[1]) * 10**5
        certs = [Certificate(base + i, d, f"{base + i:064x}", now - dt.timedelta(days=1),
                             now + dt.timedelta(days=365)) for i, d in enumerate(ids)]  # fmt: skip
        with Registry(dsn) as reg:
            started = time.perf_counter()
            reg.ensure_customer(customer, actor="bench")
            reg.provision_devices(customer, ids, actor="bench")
            reg.record_certificates(customer, certs, actor="bench")
            return time.perf_counter() - started

    try:
        return alternate({"published": lambda: provision(True),
                          "unpublished": lambda: provision(False)}, pairs)  # fmt: skip
    finally:
        provision(True)  # leave the triggers on


def revoke_latency(
    agent: Agent, dsn: str, serials: dict[str, int]
) -> tuple[list[float], list[float]]:
    """Seconds from `iotistic-vpn devices revoke` starting to the agent's kill, per device; and
    from the command's exit (its commit is just before) to the kill."""
    reg = Registry(dsn)
    try:
        for cid, (device, serial) in enumerate(serials.items()):
            agent.peer.connect(cid, device, serial)
            wait_until(lambda cid=cid: agent.peer.commands_on(agent.peer.links,
                       f"client-auth {cid} 1"), 10, f"{device} admitted")  # fmt: skip
            agent.peer.established(cid, reg.find_device(device).vpn_address)
    finally:
        reg.close()
    took, after_exit = [], []
    env = {**os.environ, "IOTISTIC_VPN_DSN": dsn}
    for cid, device in enumerate(serials):
        started = time.perf_counter()
        subprocess.run([str(CLI), "devices", "revoke", device, "--reason", "key_compromise"],
                       env=env, check=True, capture_output=True)  # fmt: skip
        exited = time.perf_counter()
        wait_until(lambda cid=cid: agent.peer.commands_on(agent.peer.links,
                   f"client-kill {cid} HALT"), 10, f"{device}'s kill", interval=0.002)  # fmt: skip
        took.append(time.perf_counter() - started)
        after_exit.append(time.perf_counter() - exited)
    return took, after_exit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--trials", type=int, default=20)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_changes needs root (network namespaces)")
    work = Path(tempfile.mkdtemp(prefix="bench-changes-", dir=REPO / "build"))
    agents: dict[str, Agent] = {}
    try:
        with throwaway_cluster() as pg:
            print(f"setting up: {args.devices:,} devices and their certificates", flush=True)
            dsn, serials = populate(pg, args.devices, args.trials)
            print(f"  writes with and without publishing: {args.pairs} pairs", flush=True)
            writes = write_cost(pg, dsn, args.pairs)
            ul = Underlay(work)
            try:
                agents["pushed"] = Agent(ul, "pushed", pg, work, "")
                agents["polled"] = Agent(ul, "polled", pg, work, POLLED)
                time.sleep(5)  # the start-up full reads done and paid for
                print(f"  at rest: {args.pairs} windows of {WINDOW_S:g} s", flush=True)
                rest = at_rest(agents, args.pairs)
                print(f"  one change: {args.pairs} pairs", flush=True)
                reads = one_change(dsn, args.pairs)
                print(f"  revoke -> kill: {args.trials} trials", flush=True)
                latency = revoke_latency(agents["pushed"], dsn, serials)
            finally:
                for agent in agents.values():
                    agent.close()
                ul.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(args, rest, reads, latency, writes)


def report(args, rest, reads, latency, writes) -> None:
    print()
    print(f"Change feed at {args.devices:,} devices")
    for name in ("pushed", "polled"):
        share = statistics.median(rest[name]) / WINDOW_S
        print(f"  agent at rest, {name:7} {share * 100:6.2f}% of a core (median window)")
    for name, what in (("changes", "one change read (gateway_changes)"),
                       ("full", "full read (gateway_view)")):  # fmt: skip
        print(f"  {what:36} {statistics.median(reads[name]) * 1e3:8.1f} ms")
    for what, values in (("revoke command -> kill", latency[0]),
                         ("  of which command exit -> kill", latency[1])):  # fmt: skip
        ordered = sorted(values)
        p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
        print(
            f"  {what:36} p50 {statistics.median(values) * 1e3:4.0f} ms, p99 "
            f"{p99 * 1e3:4.0f} ms, max {ordered[-1] * 1e3:4.0f} ms ({len(values)} trials)"
        )
    print("  (goal: revoke -> tunnel gone p99 < 1000 ms; a real OpenVPN's kill adds ~20 ms)")
    print()
    # /proc counts CPU in ticks: a window with none is read as one tick, so the ratio is a floor.
    tick = 1 / CLK_TCK
    Ratio.of("agent CPU at rest, pushed vs polled (at least)",
             [max(v, tick) for v in rest["pushed"]], [max(v, tick) for v in rest["polled"]],
             higher_is_better=False).row(48, ".0f", "x")  # fmt: skip
    Ratio.of("one change read vs a full read", reads["changes"], reads["full"],
             higher_is_better=False).row(48, ".0f", "x")  # fmt: skip
    Ratio.of(f"provisioning {PER_CUSTOMER:,} devices, published vs not", writes["published"],
             writes["unpublished"], higher_is_better=False).row(48)  # fmt: skip


if __name__ == "__main__":
    main()
