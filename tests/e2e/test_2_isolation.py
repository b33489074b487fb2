"""Isolation: a device reaches nothing through its tunnel; only the gateway's tunnel service
(the cloud API's way in) opens connections to devices, and a device's agent API and SSH answer
only on its tunnel (its own firewall).

A blocked probe must time out (curl 28: the gateway's nftables drops it), not be refused (7),
which would only say that nothing listens there. That holds for a plain process on a gateway
too (curl as root, as the agent runs): only the tunnel service's marked sockets get out to a
device, which is checked on the device itself (its agent's /debug/requests).
"""

from __future__ import annotations

import re
import uuid
from concurrent.futures import ThreadPoolExecutor

from tests.e2e.lab import (
    AGENT_PORT,
    GATEWAY_HTTP_PORT,
    Http,
    agent_url,
    curl,
    fleet,
    in_container,
    lab_address,
    requests_seen,
    through_api,
)

# Ports on the gateway's tunnel addresses a device must not reach: the agent's HTTP (listening
# on every address), the tunnel service, SSH, PostgreSQL's port.
GATEWAY_PORTS = (GATEWAY_HTTP_PORT, 8443, 22, 5432)


def _tunnel_addresses(gateway: str) -> list[str]:
    """The gateway's own tunnel addresses (one per OpenVPN instance, 100.127.255.x)."""
    out = in_container(gateway, "ip", "-4", "-o", "addr", "show").stdout
    return [
        line.split()[3].split("/")[0]
        for line in out.splitlines()
        if line.split()[1].startswith("tun")
    ]


def _probe(probes: dict[str, tuple[str, str]]) -> dict[str, Http]:
    """Run the curls (label -> (container, url)) in parallel: each blocked one takes 3 s."""
    with ThreadPoolExecutor(len(probes)) as pool:
        answers = pool.map(lambda p: curl(*p), probes.values())
        return dict(zip(probes, answers, strict=True))


def test_only_the_tunnel_service_reaches_devices_and_devices_reach_nothing():
    devices = {d.id: d for d in fleet()}
    by_customer: dict[str, list] = {}
    for device in devices.values():
        by_customer.setdefault(device.customer_id, []).append(device)
    assert len(by_customer) >= 2 and all(len(v) >= 2 for v in by_customer.values()), (
        f"the lab needs two customers with two devices each: {sorted(devices)}"
    )
    (a1, a2), (b1, b2) = (sorted(v, key=lambda d: d.id)[:2] for v in by_customer.values())

    blocked = {
        f"{a1.id} -> {a2.id} (same customer)": (a1.id, agent_url(a2.vpn_address)),
        f"{b1.id} -> {b2.id} (same customer)": (b1.id, agent_url(b2.vpn_address)),
        f"{a1.id} -> {b1.id} (other customer)": (a1.id, agent_url(b1.vpn_address)),
        f"{b2.id} -> {a2.id} (other customer)": (b2.id, agent_url(a2.vpn_address)),
    }
    gateway_addresses = {}
    for device in (a1, b1):
        gateway_addresses[device.gateway] = _tunnel_addresses(device.gateway)
        for address in gateway_addresses[device.gateway]:
            for port in GATEWAY_PORTS:
                blocked[f"{device.id} -> {device.gateway} {address}:{port}"] = (
                    device.id,
                    f"http://{address}:{port}/",
                )
    # Nor does a plain process on the gateway (root, like the agent): only the tunnel service's
    # marked sockets open connections to devices. Each probe names itself in its query, so the
    # device's own log shows which reached it.
    marker = uuid.uuid4().hex[:8]
    for d in (a1, a2, b1, b2):
        blocked[f"{d.gateway} shell -> {d.id}"] = (
            d.gateway,
            agent_url(d.vpn_address, f"/v1/device?probe=shell-{marker}"),
        )
    # Off the tunnel, each device's own firewall drops its agent API and SSH: asked over the lab
    # network, from a gateway and from another device (lab-api is no different).
    for target, source in ((a1, a2.id), (b1, a1.id), (a2, a2.gateway)):
        address = lab_address(target.id)
        for port in (AGENT_PORT, 22):
            blocked[f"{source} -> {target.id} off the tunnel {address}:{port}"] = (
                source,
                f"http://{address}:{port}/",
            )
    # Positive control: the agent's HTTP is up on the very tunnel addresses the devices are
    # refused.
    allowed = {}
    for gateway, addresses in gateway_addresses.items():
        for address in addresses:
            allowed[f"{gateway} -> own {address}:{GATEWAY_HTTP_PORT}"] = (
                gateway,
                f"http://{address}:{GATEWAY_HTTP_PORT}/healthz",
            )

    gateways = sorted({d.gateway for d in (a1, a2, b1, b2)})
    drops_before = {g: _to_devices_drops(g) for g in gateways}
    answers = _probe({**blocked, **allowed})
    # ...while the cloud API reaches the same devices through those gateways' tunnel services.
    with ThreadPoolExecutor(4) as pool:
        through = dict(zip(
            (a1, a2, b1, b2),
            pool.map(lambda d: through_api(d.id, f"/v1/device?probe=api-{marker}"),
                     (a1, a2, b1, b2)),
            strict=True,
        ))  # fmt: skip

    leaks = [f"{k}: answered {answers[k].body[:60]!r}" for k in blocked if answers[k].ok]
    refused = [
        f"{k}: curl {answers[k].code} {answers[k].error}"
        for k in blocked
        if not answers[k].ok and answers[k].code != 28
    ]
    unreachable = [
        f"{k}: curl {answers[k].code} {answers[k].error}" for k in allowed if not answers[k].ok
    ]
    assert not leaks, "a device or a gateway shell reached what it must not:\n" + "\n".join(leaks)
    assert not refused, "not dropped by the firewall (expected a timeout):\n" + "\n".join(refused)
    assert not unreachable, "positive control failed:\n" + "\n".join(unreachable)
    for device, answer in through.items():
        assert answer.ok, f"the API does not reach {device.id}: {answer.code} {answer.body[:200]}"
        assert answer.json()["device_id"] == device.id, answer.body
        seen = requests_seen(device.id)
        assert f"GET /v1/device?probe=api-{marker}" in seen, (device.id, seen[-5:])
        assert not [r for r in seen if f"shell-{marker}" in r], (device.id, seen[-5:])
    for gateway in gateways:
        # The gateway shells' SYNs were dropped in to_devices, and counted.
        assert _to_devices_drops(gateway) > drops_before[gateway], gateway


def _to_devices_drops(gateway: str) -> int:
    """Packets the gateway's to_devices chain has dropped (its counter)."""
    chain = in_container(
        gateway, "nft", "list", "chain", "inet", "iotistic_vpn", "to_devices"
    ).stdout
    found = re.search(r"counter packets (\d+) bytes \d+ drop", chain)
    assert found, f"{gateway}: no counted drop in to_devices:\n{chain}"
    return int(found.group(1))
