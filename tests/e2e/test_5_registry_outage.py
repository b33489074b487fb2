"""The registry database is down: gateways keep admitting devices from their last snapshot.

Their connection events wait in the agents' spools and reach the registry once it is back.
While the registry is down the cloud API cannot authorise anyone, and no process on a gateway
may open a connection to a device, so the gateway that admitted the device is told by the /32
route its agent added (the client itself reports its tunnel up); once the registry is back,
the API reaches the device through that gateway.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

from tests.e2e.lab import (
    GATEWAYS,
    REGISTRY,
    agent_answers,
    fleet,
    healthz,
    in_container,
    lab_devices,
    wait_for,
)

POSTGRES_UNIT = "postgresql@15-main"  # registry_db's defaults: version 15, cluster main
CLIENT_UNIT = "openvpn-client@iotistic.service"
AGENT_NOTICES_S = 15  # its LISTEN connection drops with the database; the read that follows fails
RECONNECT_BOUND_S = 60  # restart jitter (3 s in the lab) + RestartSec + a handshake
REPLAY_BOUND_S = 30  # the spool is flushed as soon as the registry answers again


def _client_state(device: str) -> dict[str, str]:
    out = in_container(
        device, "systemctl", "show", "--property=InvocationID", "--property=StatusText", CLIENT_UNIT
    ).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def _admitting_gateway(address: str) -> str | None:
    """The gateway whose agent holds the device: the /32 route to one of its tuns that the
    agent adds when it admits a device; None unless exactly one gateway has it."""
    with ThreadPoolExecutor(len(GATEWAYS)) as pool:
        routes = dict(zip(GATEWAYS, pool.map(
            lambda g: in_container(g, "ip", "-4", "-o", "route", "show", f"{address}/32").stdout,
            GATEWAYS,
        ), strict=True))  # fmt: skip
    held = [g for g, route in routes.items() if " dev tun" in route]
    return held[0] if len(held) == 1 else None


def test_devices_are_admitted_from_the_snapshot_and_events_replayed_after_an_outage(
    record_property,
):
    device = fleet()[0]
    before = _client_state(device.id)

    in_container(REGISTRY, "systemctl", "stop", POSTGRES_UNIT)
    try:
        for gateway in GATEWAYS:
            wait_for(
                lambda g=gateway: (healthz(g) or {}).get("registry_reachable") is False,
                AGENT_NOTICES_S,
                f"{gateway}'s agent to notice the registry is down",
            )

        restarted_at = datetime.now(UTC)
        in_container(device.id, "systemctl", "restart", "--no-block", CLIENT_UNIT)
        t0 = time.monotonic()
        wait_for(
            lambda: (
                (s := _client_state(device.id))["InvocationID"] != before["InvocationID"]
                and s["StatusText"] == "Initialization Sequence Completed"
            ),
            RECONNECT_BOUND_S,
            f"{device.id}'s restarted client to be admitted",
        )
        gateway = wait_for(
            lambda: _admitting_gateway(device.vpn_address),
            10,
            f"{device.id} to be held at {device.vpn_address} by one gateway",
        )
        print(
            f"\nregistry down: {device.id} admitted through {gateway} from the snapshot "
            f"{time.monotonic() - t0:.1f} s after its restart"
        )
        spooled = healthz(gateway) or {}
        assert spooled.get("registry_reachable") is False, spooled
        assert spooled.get("spool_depth", 0) >= 1, f"{gateway} spooled nothing: {spooled}"
    finally:
        in_container(REGISTRY, "systemctl", "start", POSTGRES_UNIT)

    t1 = time.monotonic()

    def replayed():
        # The events carry the time they happened: the connect is newer than the restart.
        now = lab_devices()[device.id]
        return now.connected and now.gateway == gateway and now.last_seen >= restarted_at

    wait_for(
        replayed,
        REPLAY_BOUND_S,
        f"the registry to show {device.id} connected through {gateway} after its restart",
    )
    for g in GATEWAYS:
        wait_for(
            lambda g=g: (
                (h := healthz(g) or {}).get("spool_depth") == 0
                and h.get("registry_reachable") is True
            ),
            REPLAY_BOUND_S,
            f"{g}'s spool to be empty with the registry reachable",
        )
    replay_s = time.monotonic() - t1
    record_property("registry_replay_s", round(replay_s, 1))
    print(f"registry back: events replayed within {replay_s:.1f} s")
    assert lab_devices()[device.id].vpn_address == device.vpn_address
    # The API reaches it again, through the gateway the registry now names.
    wait_for(lambda: agent_answers(device), 10, f"the API to reach {device.id} through {gateway}")
