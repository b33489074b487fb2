"""The API's tunnel dialer checks the gateway's certificate for the right name, over real TLS on
loopback: each gateway's own name by default, or the one name the cloud's gateways share (they
all serve the fleet's certificate, roles/cloud_gateway) when gateway_tls_name is set."""

from __future__ import annotations

import asyncio
import ssl

import pytest

from iotistic_vpn import pki
from iotistic_vpn.api.dialer import DialError, TunnelDialer

FLEET_NAME = "vpn.example.test"


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    root = tmp_path_factory.mktemp("dialer")
    ca = pki.ensure_ca(pki.CaFiles.at(root / "ca")).ca
    fleet = pki.ensure_gateway_cert(ca, FLEET_NAME, root / "gateway")
    api = pki.ensure_gateway_cert(ca, "cloud-api", root / "api", purpose="tunnel-client")
    return str(root / "ca" / pki.CA_CHAIN), fleet, api


async def _dial(certs, tls_name: str) -> bytes:
    chain, fleet, api = certs
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=chain)
    server_ctx.load_cert_chain(fleet.cert_path, fleet.key_path)
    server_ctx.verify_mode = ssl.CERT_REQUIRED

    async def tunnel_service(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(tunnel_service, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    dialer = TunnelDialer(api.cert_path, api.key_path, chain, connect_timeout_s=3, port=port,
                          tls_name=tls_name)  # fmt: skip
    try:
        # The registry names a cloud gateway by its private address, which no certificate holds.
        _, writer = await dialer.open("10.0.3.17", "pump-1", 48484, address="127.0.0.1")
        writer.close()
        return b"open"
    finally:
        server.close()
        await server.wait_closed()


def test_a_gateway_serving_the_fleets_certificate_is_reached_when_its_name_is_set(certs):
    assert asyncio.run(_dial(certs, FLEET_NAME)) == b"open"


def test_without_the_fleets_name_its_certificate_is_refused_for_the_gateways_address(certs):
    with pytest.raises(
        DialError, match=r"10\.0\.3\.17 unreachable: .*(IP address mismatch|doesn.t match)"
    ):
        asyncio.run(_dial(certs, ""))


def test_a_certificate_for_another_name_is_refused_even_with_a_name_set(certs):
    with pytest.raises(DialError, match="unreachable"):
        asyncio.run(_dial(certs, "vpn.other.test"))
