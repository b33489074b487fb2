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

Both are up at once and a trial is one round: a storm of --clients connects and the registry
flush after it (some 3 s), or --clients real clients connecting to the plain instance (some 4 s
at 200). They run interleaved (bench/ratios.py), one warm-up pair (the storm's first round has
no DISCONNECTs) and --pairs more, 5 by default; the ratio is the median of the per-pair ratios
with their min and max.

    .venv/bin/python bench/bench_agent.py [--clients 200] [--pairs 5] [--rate 400] [--profile F]
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
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_gateway import CLIENT_CPUS, REPO, WORK_ROOT, Bench
from bench.ratios import Ratio, alternate
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


@dataclass(frozen=True)
class Storm:
    """One storm round: its wall time and the agent's CPU (ns) by thread, before and after."""

    seconds: float
    before: dict[str, int]
    during: dict[str, int]  # as the last client-auth was answered
    after: dict[str, int]  # once the spool reached the registry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--pairs", type=int, default=5, help="interleaved pairs (at least 5)")
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
        with throwaway_cluster() as pg, contextlib.ExitStack() as stack:
            bench = Bench(work, pg, args.clients, args.profile)
            bench.database("small", 0, 10)
            print(f"anchor: {args.clients} real clients per round, plain certificate auth",
                  flush=True)  # fmt: skip
            plain = bench.open_case(stack, "plain-10", False, 10, None)
            case = work / "agent"
            case.mkdir(mode=0o755)
            CrlDir(case / "crl.d").sync(set())
            serials = case / "serials"
            serials.write_text("".join(f"{c.device} {c.serial}\n" for c in bench.certs))
            ul = stack.enter_context(Underlay(case))
            gw = ul.namespace("gw", plugged=False)
            gw.run(["ip", "tuntap", "add", "dev", "tun0", "mode", "tun"])
            gw.run(["ip", "addr", "add", "100.127.255.1/10", "dev", "tun0"])
            gw.run(["ip", "link", "set", "tun0", "up"])
            peer = subprocess.Popen(
                [*CLIENT_CPUS, sys.executable, str(REPO / "bench" / "mgmt_peer.py"),
                 str(case / "mgmt.sock"), str(serials), "--rate", str(args.rate),
                 "--burst", str(args.burst)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            )  # fmt: skip
            stack.callback(lambda: peer.poll() is None and peer.kill())
            assert peer.stdin is not None and peer.stdout is not None
            assert peer.stdout.readline().strip() == "listening"
            agent = bench._start_agent(gw, case, case / "crl.d", "small")
            assert peer.stdout.readline().strip() == "ready"
            time.sleep(1.0)  # the agent's start-up work (imports, snapshot) settles

            def storm() -> Storm:
                assert peer.stdin is not None and peer.stdout is not None
                before = cpu_ns(agent.pid)
                started = time.perf_counter()
                peer.stdin.write("go\n")
                peer.stdin.flush()
                done = peer.stdout.readline().strip()
                seconds = time.perf_counter() - started
                during = cpu_ns(agent.pid)
                print(f"  storm {done}", flush=True)
                time.sleep(2.5)  # the spool reaches the registry (outbox.FLUSH_WINDOW_S)
                return Storm(seconds, before, during, cpu_ns(agent.pid))

            runs = alternate({"agent": storm, "openvpn": plain.round}, args.pairs)
            peer.stdin.write("end\n")
            peer.stdin.flush()
            peer.wait(timeout=10)
            with pg.connect("small") as conn:
                events = conn.execute("SELECT count(*) FROM connection_events").fetchone()[0]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    main_tid = str(agent.pid)

    def per_connect(a: dict[str, int], b: dict[str, int], *, main: bool | None = None) -> float:
        """Microseconds of the agent's CPU per connect between two readings."""
        ns = sum(v - a.get(k, 0) for k, v in b.items() if main is None or (k == main_tid) == main)
        return ns / args.clients / 1000

    storms: list[Storm] = runs["agent"]
    agent_us = [per_connect(s.before, s.after) for s in storms]
    openvpn_us = [r.cpu / args.clients * 1e6 for r in runs["openvpn"]]

    def median_us(**kw) -> float:
        return statistics.median(per_connect(s.before, s.during, **kw) for s in storms)

    reached = statistics.median(args.clients / s.seconds for s in storms)
    print()
    print(f"Agent alone: {args.clients} clients per round x {args.pairs} measured rounds at "
          f"{args.rate:.0f}/s ({reached:.0f}/s reached), {events} connection events recorded "
          f"(median round)")  # fmt: skip
    loop, threads = median_us(main=True), median_us(main=False)
    print(f"  agent CPU per connect, storm:            {median_us():7.0f} us "
          f"(event loop {loop:.0f}, threads {threads:.0f})")  # fmt: skip
    print(f"  agent CPU per connect, with the flush:   {statistics.median(agent_us):7.0f} us")
    print(f"  anchor, OpenVPN CPU per handshake:       {statistics.median(openvpn_us):7.0f} us")
    print()
    # CPU per connect is a cost: the ratio is the agent's connects per CPU-second over
    # OpenVPN's handshakes per CPU-second. Adding at most +20% to a handshake is 5 or more.
    ratio = Ratio.of("ratio agent / OpenVPN, connects per CPU-second", agent_us, openvpn_us,
                     higher_is_better=False, goal=5)  # fmt: skip
    ratio.row()
    print(
        f"  the agent adds {1 / ratio.median:+.0%} to a handshake's CPU "
        f"({1 / ratio.max:+.0%} to {1 / ratio.min:+.0%} over the pairs; goal < +20%)"
    )


if __name__ == "__main__":
    main()
