"""The gateway agent's own CPU per connect in a connect storm, against OpenVPN's per handshake.

In bench_gateway.py the clients, which share the machine, start one process each and reach the
gateway at some 50 connects/s one at a time, so each event wakes an idle agent, and the figure
moves by +-20% between runs. Here the same agent process (Debian's python3, real PostgreSQL
registry, real routes on a tun in a namespace, its own CPU) serves bench/mgmt_peer.py, which
replays OpenVPN's management traffic for a storm at --rate in bursts of --burst, as a fleet
coming back after an outage does: CONNECT, client-auth, ESTABLISHED and, from the second round,
a DISCONNECT of each previous session. The agent's CPU (all threads, schedstat ns) is divided
by the connects; the anchor, in the same run, is OpenVPN's own CPU per handshake on the
gateway side of bench_gateway's plain case (real clients, certificate auth only).

    .venv/bin/python bench/bench_agent.py [--clients 200] [--rounds 3] [--rate 400] [--profile F]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_gateway import CLIENT_CPUS, REPO, WORK_ROOT, Bench

from iotistic_vpn.crldir import CrlDir
from tests.support.netns import Underlay
from tests.support.postgres import throwaway_cluster


def cpu_ns(pid: int) -> dict[str, int]:
    """Run time of each thread of a process (schedstat, ns), by thread id."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):  # the thread ended meanwhile
            out[task.name] = int((task / "schedstat").read_text().split()[0])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rate", type=float, default=400.0, help="connects per second")
    parser.add_argument("--burst", type=int, default=20)
    parser.add_argument("--profile", type=Path, help="run the agent under cProfile, stats here")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_agent needs root (network namespaces)")
    WORK_ROOT.mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-agent-", dir=WORK_ROOT))
    work.chmod(0o755)
    try:
        with throwaway_cluster() as pg:
            bench = Bench(work, pg, args.clients, args.rounds, args.profile)
            bench.database("small", 0, 10)
            print(f"anchor: {args.clients} real clients x {args.rounds} rounds, plain "
                  f"certificate auth", flush=True)  # fmt: skip
            anchor = bench.run_case("plain-10", False, 10, None)
            openvpn_us = statistics.median(anchor.cpu) / args.clients * 1e6
            case = work / "agent"
            case.mkdir(mode=0o755)
            CrlDir(case / "crl.d").sync(set())
            serials = case / "serials"
            serials.write_text("".join(f"{c.device} {c.serial}\n" for c in bench.certs))
            with Underlay(case) as ul:
                gw = ul.namespace("gw", plugged=False)
                gw.run(["ip", "tuntap", "add", "dev", "tun0", "mode", "tun"])
                gw.run(["ip", "addr", "add", "100.127.255.1/10", "dev", "tun0"])
                gw.run(["ip", "link", "set", "tun0", "up"])
                peer = subprocess.Popen(
                    [*CLIENT_CPUS, sys.executable, str(REPO / "bench" / "mgmt_peer.py"),
                     str(case / "mgmt.sock"), str(serials), "--rounds", str(args.rounds),
                     "--rate", str(args.rate), "--burst", str(args.burst)],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                )  # fmt: skip
                assert peer.stdin is not None and peer.stdout is not None
                try:
                    assert peer.stdout.readline().strip() == "listening"
                    agent = bench._start_agent(gw, case, case / "crl.d", "small")
                    assert peer.stdout.readline().strip() == "ready"
                    time.sleep(1.0)  # the agent's start-up work (imports, snapshot) settles
                    before = cpu_ns(agent.pid)
                    started = time.perf_counter()
                    peer.stdin.write("go\n")
                    peer.stdin.flush()
                    while (line := peer.stdout.readline().strip()) != "done":
                        print(f"  {line}", flush=True)
                    storm = time.perf_counter() - started
                    during = cpu_ns(agent.pid)
                    time.sleep(2.5)  # the spool reaches the registry (1 s flush window)
                    after = cpu_ns(agent.pid)
                    peer.stdin.write("go\n")
                    peer.stdin.flush()
                    peer.wait(timeout=10)
                finally:
                    if peer.poll() is None:
                        peer.kill()
            with pg.connect("small") as conn:
                events = conn.execute("SELECT count(*) FROM connection_events").fetchone()[0]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    connects = args.clients * args.rounds
    main_tid = str(agent.pid)

    def per_connect(a: dict[str, int], b: dict[str, int], *, main: bool | None = None) -> float:
        ns = sum(v - a.get(k, 0) for k, v in b.items() if main is None or (k == main_tid) == main)
        return ns / connects / 1000

    print()
    print(f"Agent alone: {args.clients} clients x {args.rounds} rounds at {args.rate:.0f}/s "
          f"({connects / storm:.0f}/s reached), {events} connection events recorded")  # fmt: skip
    print(f"  agent CPU per connect, storm:            {per_connect(before, during):7.0f} us "
          f"(event loop {per_connect(before, during, main=True):.0f}, "
          f"threads {per_connect(before, during, main=False):.0f})")  # fmt: skip
    print(f"  agent CPU per connect, with the flush:   {per_connect(before, after):7.0f} us")
    print(f"  anchor, OpenVPN CPU per handshake:       {openvpn_us:7.0f} us (plain, median round)")
    cost = per_connect(before, after) / openvpn_us
    print(
        f"ratio agent / OpenVPN CPU per connect:     {cost:.2f} "
        f"(the agent adds {cost:+.0%} to a handshake; goal < +20%)"
    )


if __name__ == "__main__":
    main()
