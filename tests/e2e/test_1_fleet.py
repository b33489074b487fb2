"""The fleet table: every device that is not revoked has its tunnel and answers through it."""

from __future__ import annotations

import ipaddress
from concurrent.futures import ThreadPoolExecutor

from iotistic_vpn import conventions
from tests.e2e.lab import GATEWAYS, fleet, in_container, registry, through_api


def test_every_device_answers_through_its_tunnel_from_its_gateway():
    """Asked through the cloud API, which dials the tunnel service of the gateway the registry
    names (the only way to a device's agent)."""
    devices = fleet()
    with ThreadPoolExecutor(len(devices)) as pool:
        answers = dict(
            zip(
                devices,
                pool.map(lambda d: through_api(d.id) if d.gateway else None, devices),
                strict=True,
            )
        )
    problems = []
    for device, answer in answers.items():
        if not device.connected or device.gateway not in GATEWAYS:
            problems.append(
                f"{device.id}: registry says connected={device.connected} gateway={device.gateway}"
            )
        elif not answer.ok:
            problems.append(
                f"{device.id}: no answer from {device.vpn_address}:48484 via the API and "
                f"{device.gateway} ({answer.code}: {answer.error or answer.body[:100]})"
            )
        elif (answer.json().get("device_id"), answer.json().get("customer_id")) != (
            device.id,
            device.customer_id,
        ):
            problems.append(f"{device.id}: {device.vpn_address} answered as {answer.body!r}")
    assert not problems, "\n".join(problems)


def test_addresses_are_the_registrys_stable_ones():
    with registry() as reg:
        blocks = {c.id: ipaddress.ip_network(c.block) for c in reg.list_customers()}
    devices = fleet()
    addresses = [d.vpn_address for d in devices]
    assert len(set(addresses)) == len(addresses), f"an address is given twice: {addresses}"
    for device in devices:
        address = ipaddress.ip_address(device.vpn_address)
        assert address in blocks[device.customer_id], (
            f"{device.id} has {address}, outside {device.customer_id}'s block "
            f"{blocks[device.customer_id]}"
        )
        # What the gateway pushed is what the registry holds (the /10 is the whole pool).
        tun = in_container(
            device.id, "ip", "-4", "-o", "addr", "show", "dev", conventions.DEVICE_TUNNEL_INTERFACE
        ).stdout
        assert f" {address}/10 " in tun, (
            f"{device.id}: {conventions.DEVICE_TUNNEL_INTERFACE} has {tun.strip()!r}, not {address}"
        )


def test_each_gateway_and_the_api_read_the_registry_as_themselves_over_verified_tls():
    """Per-gateway logins (members of iotistic_gateway), the API's (iotistic_api), TLS on each."""
    query = (
        "SELECT a.usename, r.rolname, s.ssl FROM pg_stat_activity a"
        " JOIN pg_stat_ssl s USING (pid) JOIN pg_auth_members m ON m.member = a.usesysid"
        " JOIN pg_roles r ON r.oid = m.roleid"
        " WHERE a.application_name LIKE 'iotistic-%' AND r.rolname LIKE 'iotistic\\_%' ORDER BY 1"
    )
    out = in_container(
        "lab-registry", "runuser", "-u", "postgres", "--", "psql", "-XAt", "-F", " ",
        "-d", "iotistic_vpn", "-c", query,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    sessions = set(out.stdout.split("\n")) - {""}
    expected = {f"{gw} iotistic_gateway t" for gw in GATEWAYS} | {"lab-api iotistic_api t"}
    assert sessions == expected, out.stdout
