"""Fleet benchmark: N devices (1,000 by default) as OpenVPN clients against one gateway.

The gateway is the integration tests' (tests/support/fleet.py): two OpenVPN instances
configured by roles/openvpn_gateway's template behind the role's nftables table, the real
agent as its own process, the real registry (a throwaway PostgreSQL cluster), all in network
namespaces on this machine; no containers, so nothing but the bench's own processes is timed.
Each device is a namespace of its own running OpenVPN with roles/openvpn_device's config
(about 9 MiB each), provisioned with provisioning.provision_devices and tlscrypt.ensure_keys.

Phases, each timed from its start until every device logged a connect:
  storm      all N clients started at once
  restart    the agent and both instances stopped and started (explicit-exit-notify tells the
             devices, which retry every connect-retry second until the gateway is back)
  drained    the same after `python3 -m iotistic_vpn.gateway drain` (the drain unit's ExecStop:
             every session ended at the role's drain rate, reconnects refused; a device told
             AUTH_FAILED exits and its unit starts it again after RestartSec + start delay)
The anchor is one more device's handshakes one after another against the same gateway (start,
connect, stop), measured before every phase and after the last: the rate a phase is compared
with is the mean of the runs on either side of it, and each ratio is the phase's time over
N / that rate (below 1: the storm beat N handshakes in a row). After the storm: every device
online in the registry with its address, every device's :48484 asked through the gateway's
tunnel service (one listener process in all namespaces, one asking process), failed handshakes
from the devices' logs (must be 0), the agent's CPU seconds and resident memory. A phase's
outcome is checked, never its time. Needs root.

  .venv/bin/python bench/bench_fleet.py [--devices 1000] [--anchor 20] [--keep]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from iotistic_vpn.registry import Registry  # noqa: E402
from tests.support.fleet import (  # noqa: E402
    DRAIN_RATE,
    MAX_DEVICES,
    NETWORK,
    DeviceFleet,
    FleetGateway,
    fleet_limits,
    provision_fleet,
    sequential_handshakes,
)
from tests.support.netns import Underlay  # noqa: E402
from tests.support.postgres import throwaway_cluster  # noqa: E402
from tests.support.procstat import memory_mib  # noqa: E402

WORK_ROOT = REPO / "build"  # traversable by nobody, as OpenVPN reads crl.d after dropping root
ANCHOR = "fleet-anchor"


def device_names(count: int) -> list[str]:
    return [f"fleet-{i:04d}" for i in range(count)]


def run(work: Path, devices: int, anchor_runs: int) -> dict:
    out: dict = {"devices": devices, "phases": {}, "anchors": []}
    with fleet_limits(devices) as raised, throwaway_cluster() as pg:
        out["raised"] = raised
        with pg.connect() as conn:
            conn.execute('CREATE DATABASE "fleet"')
        dsn = pg.dsn_for("fleet")
        with Registry(dsn) as reg:
            reg.migrate()
            started = time.monotonic()
            fleet, made = provision_fleet(reg, work / "pki", [*device_names(devices), ANCHOR])
            out["provision_s"] = time.monotonic() - started
        with Underlay(work, NETWORK) as ul:
            gw = FleetGateway(fleet, ul, work, dsn, pg, 30, register=False)
            gw.load_firewall()
            started = time.monotonic()
            anchor_spec = made.pop(ANCHOR)
            fl = DeviceFleet(gw, made)
            anchor = fl.make_device(ANCHOR, *anchor_spec)
            fl.listen()
            out["namespaces_s"] = time.monotonic() - started
            print(f"  {devices} device namespaces and their listeners in "
                  f"{out['namespaces_s']:.1f} s", flush=True)  # fmt: skip

            def anchor_rate() -> None:
                rate = sequential_handshakes(fl.work, anchor, anchor_runs)
                out["anchors"].append(rate)
                print(f"  anchor: {rate:.1f} handshakes/s one after another", flush=True)

            def phase(name: str, action, timeout: float) -> None:
                anchor_rate()
                fl.mark()
                before = gw.cpu()
                started = time.monotonic()
                missing = ""
                with fl.supervising():
                    note = action()
                    try:
                        took = fl.wait_connected(timeout, started)
                    except AssertionError as exc:  # reported, and the next phases still run
                        took, missing = float("nan"), str(exc)
                cpu = {k: v - before[k] for k, v in gw.cpu().items()}
                online = fl.registry_online(60)
                result = {"took": took, "outcomes": fl.outcomes(), "note": note,
                          "online_problems": [missing, *online] if missing else online,
                          "cpu": cpu, "agent_mib": memory_mib(gw.pids()["agent"])}  # fmt: skip
                out["phases"][name] = result
                print(f"  {name}: {note or ''} all {devices} connected in {took:.1f} s "
                      f"({result['outcomes'].counts}, {result['outcomes'].restarts} restarts); "
                      f"{devices - len(online)} online in the registry", flush=True)  # fmt: skip

            phase("storm", fl.start, 120 + devices / 5)
            took, problems = fl.ask_all()
            out["asked"] = (took, problems)
            print(f"  asked all {devices} through the tunnel service in {took:.1f} s: "
                  f"{devices - len(problems)} answered", flush=True)  # fmt: skip
            phase("restart", gw.restart, 120 + devices / 5)
            phase("drained", lambda: (gw.drain(DRAIN_RATE, devices), gw.restart())[0],
                  240 + devices / DRAIN_RATE + devices / 5)  # fmt: skip
            anchor_rate()
    return out


def report(out: dict) -> None:
    n, anchors = out["devices"], out["anchors"]

    def row(label: str, *values: str) -> None:
        print(f"  {label:30}" + "".join(f"{v:>16}" for v in values))

    print()
    print(f"Fleet benchmark: {n} devices on one gateway (2 instances, the agent, the registry)")
    print(f"  provisioning {out['provision_s']:.1f} s, namespaces {out['namespaces_s']:.1f} s; "
          f"raised for the run: {', '.join(out['raised']) or 'nothing'}")  # fmt: skip
    print(f"  anchor runs (handshakes/s, one after another): "
          f"{', '.join(f'{a:.1f}' for a in anchors)}")  # fmt: skip
    row("phase", "all connected", "connects/s", "N / anchor", "ratio", "failed hs", "refused",
        "restarts")  # fmt: skip
    for i, (name, p) in enumerate(out["phases"].items()):
        rate = statistics.mean(anchors[i : i + 2])
        ideal = n / rate
        o = p["outcomes"]
        row(name, f"{p['took']:.1f} s", f"{n / p['took']:.0f}", f"{ideal:.1f} s",
            f"{p['took'] / ideal:.2f}",
            str(o["tls_failed"]), str(o["refused"]), str(o.restarts))  # fmt: skip
    print("  (ratio: the phase's time over N handshakes in a row at the anchor's rate)")
    print()
    row("phase", "agent CPU", "per connect", "openvpn CPU", "agent RSS", "peak RSS")
    for name, p in out["phases"].items():
        agent = p["cpu"]["agent"]
        openvpn = sum(v for k, v in p["cpu"].items() if k.startswith("openvpn"))
        rss, hwm = p["agent_mib"]
        row(name, f"{agent:.2f} s", f"{agent * 1000 / n:.2f} ms", f"{openvpn:.2f} s",
            f"{rss:.0f} MiB", f"{hwm:.0f} MiB")  # fmt: skip
    print()
    took, problems = out["asked"]
    print(f"  reachable through the tunnel service: {n - len(problems)} of {n} "
          f"({took:.1f} s for all, 32 at a time)")  # fmt: skip
    for name, p in out["phases"].items():
        print(f"  {name}: online in the registry with their addresses: "
              f"{n - len(p['online_problems'])} of {n}")  # fmt: skip
    failures = [problems[:5], *(p["online_problems"][:5] for p in out["phases"].values())]
    failed = out["phases"]["storm"]["outcomes"]["tls_failed"]
    for lines in failures:
        for line in lines:
            print(f"    {line}")
    if failed or any(failures):
        sys.exit(f"FAILED: {failed} failed handshakes in the storm, or devices missing above")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1000, choices=range(1, MAX_DEVICES + 1),
                        metavar=f"1-{MAX_DEVICES}")  # fmt: skip
    parser.add_argument("--anchor", type=int, default=20, help="handshakes per anchor run")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_fleet needs root (network namespaces)")
    WORK_ROOT.mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-fleet-", dir=WORK_ROOT))
    work.chmod(0o755)
    try:
        out = run(work, args.devices, args.anchor)
    finally:
        if args.keep:
            print(f"work dir kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    report(out)


if __name__ == "__main__":
    main()
