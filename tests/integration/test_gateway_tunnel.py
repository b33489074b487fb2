"""The gateway's tunnel service: only the cloud API's certificate, only devices connected here,
only open ports; a device's tunnels end with its session. Real OpenVPN, real TLS, real agent."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time

import pytest

from iotistic_vpn import conventions
from tests.support.gateway_harness import (
    AGENT_ENV,
    UP,
    eventually,
    hold_tunnel,
    through_tunnel,
)

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.skipif(shutil.which("openvpn") is None, reason="openvpn not installed"),
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
]


def test_the_api_reaches_a_connected_device_and_nothing_else(start_gateway):
    gw = start_gateway()
    dev = gw.device("dev-a", 0)
    dev.client.wait_for(UP)
    eventually(lambda: through_tunnel(gw, "dev-a")["dial"] == 200, "a tunnel to dev-a")
    answer = through_tunnel(gw, "dev-a")["answer"]
    head, _, body = answer.partition("\r\n\r\n")
    assert head.startswith("HTTP/1.") and " 200 " in head.splitlines()[0]
    assert json.loads(body)["device_id"] == "dev-a"
    # Known to the registry but not connected here; unknown; a port the firewall keeps shut.
    assert through_tunnel(gw, "dev-b") == {
        "dial": 404, "reason": "device 'dev-b' is not connected to this gateway",
    }  # fmt: skip
    assert through_tunnel(gw, "nobody")["dial"] == 404
    assert through_tunnel(gw, "dev-a", 22) == {
        "dial": 403,
        "reason": "port 22 is not open to devices",
    }
    assert through_tunnel(gw, "Dev_A")["dial"] == 400
    # Neither a device's certificate (clientAuth, but not the tunnel client's organization)...
    cert, key, _ = gw.fleet.client_files("dev-b")
    assert through_tunnel(gw, "dev-a", cert=cert, key=key) == {
        "dial": 403, "reason": "not the tunnel client",
    }  # fmt: skip
    # ...nor the gateway's own serverAuth certificate is let in: TLS itself refuses it.
    gw_dir = gw.fleet.gateway_dir
    refused = through_tunnel(gw, "dev-a", cert=gw_dir / "server.crt", key=gw_dir / "server.key")
    assert refused["dial"] == 0
    log = gw.log()
    assert "tunnel refused (403): not the tunnel client" in log
    code, health = gw.health()
    assert code == 200 and health["tunnels"] == 0
    series = _metrics(gw)
    assert series["iotistic_gateway_tunnels_opened_total"] >= 2
    assert series['iotistic_gateway_tunnels_refused_total{status="404"}'] == 2
    assert series['iotistic_gateway_tunnels_refused_total{status="403"}'] == 2  # port, device cert
    assert series['iotistic_gateway_customer_connected_devices{customer="acme"}'] == 1
    # The PKI files the gateway serves, and when they end (the fixture's CA: 10 years issuing,
    # 20 root, the gateway's certificate 1 year, the CRL's nextUpdate 30 days).
    now = time.time()
    ends = {k: (v - now) / 86400 for k, v in series.items() if "timestamp" in k}
    assert (
        360
        < ends['iotistic_gateway_certificate_not_after_timestamp_seconds{what="gateway"}']
        <= 366
    )
    assert (
        ends['iotistic_gateway_certificate_not_after_timestamp_seconds{what="issuing_ca"}'] > 3640
    )
    assert ends['iotistic_gateway_certificate_not_after_timestamp_seconds{what="root_ca"}'] > 7290
    assert 29 < ends["iotistic_gateway_crl_next_update_timestamp_seconds"] <= 30


def _metrics(gw) -> dict[str, float]:
    code, text = gw.http("/metrics")
    assert code == 200
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


def _a_held_tunnel_to_dev_a(start_gateway):
    """A gateway, dev-a connected through it, and a tunnel to dev-a held open (counted)."""
    gw = start_gateway()
    dev = gw.device("dev-a", 0)
    dev.client.wait_for(UP)
    eventually(lambda: through_tunnel(gw, "dev-a")["dial"] == 200, "a tunnel to dev-a")
    held = hold_tunnel(gw, "dev-a", gw.work / "held-tunnel.log")
    held.wait_for('"dial": 200')
    eventually(lambda: gw.health()[1]["tunnels"] == 1, "the held tunnel counted")
    return gw, dev, held


def test_a_tunnel_ends_when_the_device_session_ends(start_gateway):
    gw, dev, held = _a_held_tunnel_to_dev_a(start_gateway)
    dev.client.stop()  # the session ends (ping timeout or exit-notify): so do its tunnels
    line = held.wait_for("closed_after", timeout=40)
    assert json.loads(line)["closed_after"] < 35
    eventually(lambda: through_tunnel(gw, "dev-a")["dial"] == 404, "dev-a gone from the tunnel")
    assert gw.health()[1]["tunnels"] == 0


def test_a_revoked_devices_open_tunnels_end_with_its_session_not_seconds_later(start_gateway):
    """OpenVPN keeps a halted client's instance 5 s before its DISCONNECT: the cloud's open
    tunnels to a revoked device end when the agent ends its session, not then."""
    gw, _, held = _a_held_tunnel_to_dev_a(start_gateway)
    revoked = time.monotonic()
    gw.registry.revoke_device("acme", "dev-a", actor="test", reason="key_compromise")
    held.wait_for("closed_after", timeout=10)
    assert time.monotonic() - revoked < 2  # the change feed, then the kill: not the 5 s exit
    assert through_tunnel(gw, "dev-a")["dial"] == 404


def test_the_gateway_firewall_lets_only_the_tunnel_service_open_connections_to_devices(
    start_gateway,
):
    """openvpn_gateway's own nftables table in the gateway namespace: the tunnel service's
    marked sockets reach a device, a plain process on the gateway (root, like the agent) does
    not, and the device never sees its request."""
    gw = start_gateway()
    dev = gw.device("dev-a", 0)
    dev.client.wait_for(UP)
    eventually(lambda: through_tunnel(gw, "dev-a")["dial"] == 200, "a tunnel to dev-a")
    address = dev.address()
    assert gw.curl(f"http://{address}:48484/ping")[0] == 200  # open before the firewall
    listed = gw.load_firewall()
    assert f"meta mark {conventions.TUNNEL_SERVICE_MARK:#010x} accept" in listed, listed

    code, _ = gw.curl(f"http://{address}:48484/v1/device?from=gateway-shell")
    assert code == 0  # dropped: curl times out
    answer = through_tunnel(gw, "dev-a")
    assert answer["dial"] == 200, answer
    assert json.loads(answer["answer"].partition("\r\n\r\n")[2])["device_id"] == "dev-a"

    drops = re.search(r"counter packets (\d+) bytes \d+ drop\s*\}",
                      gw.ns.run(["nft", "list", "chain", "inet", "iotistic_vpn",
                                 "to_devices"]).stdout)  # fmt: skip
    assert drops and int(drops.group(1)) >= 1, "the shell's SYN was not counted as dropped"
    seen = dev.ns.run(["curl", "-sS", "--max-time", "3", "http://127.0.0.1:48484/debug/requests"])
    requests = json.loads(seen.stdout)["requests"]
    assert "GET /v1/device" in requests and not any("gateway-shell" in r for r in requests), (
        requests
    )


PIPELINED = """
import json, socket, ssl, sys
gateway, address, cert, key, ca = sys.argv[1:]
ctx = ssl.create_default_context(cafile=ca)
ctx.load_cert_chain(cert, key)
with ctx.wrap_socket(socket.create_connection((address, 8443), 5), server_hostname=gateway) as s:
    # The CONNECT and the first request in one write: nothing waits for the 200 in between.
    s.sendall(b"CONNECT dev-a:48484 HTTP/1.1\\r\\nHost: dev-a:48484\\r\\n\\r\\n"
              b"GET /ping HTTP/1.1\\r\\nHost: dev-a\\r\\nConnection: close\\r\\n\\r\\n")
    data = b""
    while chunk := s.recv(65536):
        data += chunk
print(json.dumps(data.decode(errors="replace")))  # JSON: the CRLFs survive text mode
"""


def test_bytes_sent_right_after_the_connect_head_reach_the_device(start_gateway):
    """What a client pipelines behind its CONNECT (read ahead with the head) is not lost."""
    gw = start_gateway()
    gw.device("dev-a", 0).client.wait_for(UP)
    eventually(lambda: through_tunnel(gw, "dev-a")["dial"] == 200, "a tunnel to dev-a")
    out = gw.api_ns.run(
        [sys.executable, "-c", PIPELINED, "gw-1", str(gw.ns.address), gw.fleet.api.cert_path,
         gw.fleet.api.key_path, str(gw.fleet.chain)],
        env=AGENT_ENV,
    ).stdout  # fmt: skip
    out = json.loads(out)
    established, _, answer = out.partition("\r\n\r\n")
    assert established.startswith("HTTP/1.1 200")
    assert answer.startswith("HTTP/1.") and " 200 " in answer.splitlines()[0]
    assert answer.rstrip().endswith("OK")
