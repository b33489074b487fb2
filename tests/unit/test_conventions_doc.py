"""docs/conventions.md summarises iotistic_vpn.conventions: each value in its tables is its own."""

from __future__ import annotations

from pathlib import Path

import pytest

from iotistic_vpn import conventions as c

DOC = Path(__file__).resolve().parents[2] / "docs" / "conventions.md"


def _rows() -> dict[str, str]:
    """Return each table row's first cell -> the rest of the row."""
    rows = {}
    for line in DOC.read_text().splitlines():
        if line.startswith("| ") and not line.startswith("|---"):
            first, _, rest = line[2:].partition(" | ")
            rows.setdefault(first, "")
            rows[first] += rest
    return rows


GATEWAY_NET = c.gateway_network()
FIRST = c.gateway_instances(1)[0]

# row -> what its value cell must say, each derived from conventions.py
EXPECTED = {
    "OpenVPN, public": [f"UDP {c.OPENVPN_PORT} "],
    "gateway agent HTTP (`/healthz`, `/metrics`)": [f"TCP {c.AGENT_HTTP_PORT} "],
    "tunnel service (mutual TLS from the cloud API only)": [f"TCP {c.TUNNEL_SERVICE_PORT} "],
    "cloud API (HTTPS behind a load balancer)": [
        f"TCP {c.API_PUBLIC_PORT} outside, {c.API_CONTAINER_PORT} in the container"
    ],
    "cloud API's CONNECT tunnel": [f"TCP {c.API_CONNECT_PORT} "],
    "cloud API's own HTTPS (gateways' renewals, mutual TLS)": [f"TCP {c.API_TLS_PORT} "],
    "registry database": [f"TCP {c.POSTGRES_PORT}, database `{c.DATABASE_NAME}`"],
    "device agent API": [f"TCP {c.DEVICE_AGENT_PORT} "],
    "device tunnel interface": [f"`{c.DEVICE_TUNNEL_INTERFACE}`: "],
    "tunnel service's firewall mark": [f"`{c.TUNNEL_SERVICE_MARK:#x}` ({c.TUNNEL_SERVICE_MARK})"],
    "VPN address pool": [f"{c.VPN_POOL} "],
    "customer block": [f"/{c.CUSTOMER_BLOCK_PREFIX} out of the pool"],
    "device id": [f"`{c.DEVICE_ID_PATTERN}`"],
    "customer id": [f"`{c.CUSTOMER_ID_PATTERN}`"],
    "gateway tunnel addresses": [
        f"top /{c.GATEWAY_NETWORK_PREFIX}, `{GATEWAY_NET}`",
        f"`{FIRST.address.rsplit('.', 1)[0]}.(i+1)`",
        f"`{c.tunnel_netmask()}`",
    ],
    "OpenVPN instances": [
        f"`openvpn-server@{FIRST.name.rsplit('-', 1)[0]}-<i>`",
        f"`{c.INSTANCE_BASE_PORT}+i`",
        f"`{c.MANAGEMENT_DIR}/iotistic-<i>.sock`",
    ],
    "gateway": [
        f"`{c.GATEWAY_PKI_DIR}/ca.pem`",
        f"`{c.CRL_DIR}/`",
        f"`{c.AGENT_CONFIG_PATH}`, `{c.AGENT_STATE_PATH}`",
    ],
}


@pytest.mark.parametrize("row", EXPECTED)
def test_the_doc_table_says_what_conventions_holds(row):
    rows = _rows()
    assert row in rows, f"docs/conventions.md has no row {row!r}"
    for fragment in EXPECTED[row]:
        assert fragment in rows[row], f"{row}: {fragment!r} not in {rows[row]!r}"
