"""Keepalive bench: what an idle device's tunnel costs per day at each ping interval.

For each candidate interval P, a gateway namespace runs one OpenVPN instance configured as the
openvpn_gateway role does (tls-crypt-v2, AES-256-GCM, `keepalive P 3P`), and a device namespace
one client with `ping P` / `ping-restart 3P`, both on the veth underlay. All candidates run at
once. Once every tunnel is up and has settled, nftables counters in the device's namespace count
the tunnel's UDP packets over --window seconds in which nothing but keepalive crosses: IP bytes
and packets both ways, scaled to a day, with the time to notice a dead gateway that each pairing
gives (ping-restart: from 2P to 3P after the gateway's last ping).
Needs root (network namespaces). Asserts nothing.

  .venv/bin/python bench/bench_keepalive.py [--intervals 5 10 15 20 30] [--window 120]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from iotistic_vpn import pki, tlsverify  # noqa: E402
from iotistic_vpn.pki import tlscrypt  # noqa: E402
from tests.support.netns import (  # noqa: E402
    Namespace,
    Underlay,
    openvpn_client_config,
    openvpn_gateway_config,
    wait_until,
)

DAY = 86_400
UP = "Initialization Sequence Completed"


def count_tunnel(ns: Namespace, work: Path) -> None:
    """nftables counters in the device namespace for the tunnel's UDP packets only (the veth
    also carries ARP and IPv6 neighbour discovery, which are not the keepalive's)."""
    rules = work / "counters.nft"
    rules.write_text(NFT_COUNTERS)
    ns.run(["nft", "-f", str(rules)])


def counters(ns: Namespace) -> tuple[int, int]:
    """(IP bytes, packets) of the tunnel, both directions."""
    out = json.loads(ns.run(["nft", "-j", "list", "counters", "table", "inet", "keepalive"]).stdout)
    found = [o["counter"] for o in out["nftables"] if "counter" in o]
    return sum(c["bytes"] for c in found), sum(c["packets"] for c in found)


NFT_COUNTERS = """
table inet keepalive {
  counter tunnel_in {}
  counter tunnel_out {}
  chain in { type filter hook input priority 0; udp sport 1194 counter name tunnel_in; }
  chain out { type filter hook output priority 0; udp dport 1194 counter name tunnel_out; }
}
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--intervals", type=int, nargs="+", default=[5, 10, 15, 20, 30])
    parser.add_argument("--window", type=float, default=120.0, help="seconds measured")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-keepalive-", dir=REPO / "build"))
    work.chmod(0o755)
    try:
        ca = pki.ensure_ca(pki.CaFiles.at(work / "ca")).ca
        gw_dir = work / "gateway"
        result = pki.ensure_gateway_cert(ca, "gw-1", gw_dir)
        shutil.copy(result.cert_path, gw_dir / "server.crt")
        shutil.copy(result.key_path, gw_dir / "server.key")
        shutil.copy(work / "ca" / pki.CA_CHAIN, gw_dir / "ca.pem")
        server_key = tlscrypt.generate_server_key()
        (gw_dir / "tls-crypt-v2.key").write_bytes(server_key)
        (work / "crl.d").mkdir(mode=0o755)
        (device,) = pki.ensure_device_certs(
            ca, [pki.DeviceRequest("bench", "dev-1", generate_key=True)], work / "devices"
        )
        tc = work / "dev-1.tc"
        tc.write_bytes(
            tlscrypt.generate_client_key(server_key, tlsverify.identity("bench", "dev-1"))
        )
        with Underlay(work) as ul:
            cases = []
            for p in args.intervals:
                gw, dev = ul.namespace(f"g{p}"), ul.namespace(f"d{p}")
                count_tunnel(dev, work)
                conf = openvpn_gateway_config(
                    0, pki_dir=gw_dir, crl_dir=work / "crl.d", management=work / f"m{p}.sock",
                    status=work / f"s{p}.log", port=1194, client_auth=False,
                ).replace("keepalive 10 60", f"keepalive {p} {3 * p}")  # fmt: skip
                (work / f"g{p}.conf").write_text(conf)
                gw.start(["openvpn", "--config", str(work / f"g{p}.conf")], work / f"g{p}.log")
                client = openvpn_client_config(
                    str(gw.address), [1194], ca=gw_dir / "ca.pem", cert=Path(device.cert_path),
                    key=Path(device.key_path), tls_crypt=tc,
                    extra=[f"ping {p}", f"ping-restart {3 * p}", 'pull-filter ignore "ping"',
                           "reneg-sec 0"],
                )  # fmt: skip
                (work / f"d{p}.conf").write_text(client)
                proc = dev.start(["openvpn", "--config", str(work / f"d{p}.conf")],
                                 work / f"d{p}.log")  # fmt: skip
                cases.append((p, dev, proc))
            for p, _, proc in cases:
                wait_until(lambda proc=proc: UP in proc.text(), 30, f"tunnel with ping {p}")
            time.sleep(5)  # the handshake's last acknowledgements
            start = {p: counters(dev) for p, dev, _ in cases}
            time.sleep(args.window)
            end = {p: counters(dev) for p, dev, _ in cases}
        print(f"idle tunnel, {args.window:.0f} s measured, both directions, IP layer")
        print("ping  ping-restart  packets/min  bytes/packet  bytes/day    notices a dead gateway")
        for p, _, _ in cases:
            frames = end[p][1] - start[p][1]
            ip_bytes = end[p][0] - start[p][0]
            per_day = ip_bytes * DAY / args.window
            print(f"{p:>4}  {3 * p:>12}  {frames * 60 / args.window:>11.1f}  "
                  f"{ip_bytes / max(frames, 1):>12.1f}  {per_day / 1e6:>6.2f} MB    "
                  f"{2 * p}-{3 * p} s after its last ping")  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
