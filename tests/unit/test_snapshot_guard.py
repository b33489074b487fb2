"""Which registry snapshots may replace the one the agent holds."""

from ipaddress import IPv4Address

from iotistic_vpn.gateway.authorize import DeviceGrant, Snapshot
from iotistic_vpn.gateway.snapshot_guard import MIN_LOST, refuse_snapshot


def _snapshot(n: int) -> Snapshot:
    return Snapshot(
        {f"dev-{i}": DeviceGrant(f"dev-{i}", "acme", IPv4Address(167772160 + i), "active",
                                 frozenset({i}))
         for i in range(n)},
        1.0,
    )  # fmt: skip


def test_an_empty_snapshot_never_replaces_devices():
    assert refuse_snapshot(_snapshot(1), _snapshot(0)) == (
        "the registry's snapshot lists no devices (the held one has 1)"
    )
    assert refuse_snapshot(_snapshot(0), _snapshot(0)) is None  # a new fleet


def test_losing_more_than_half_at_once_is_refused_unless_only_a_few_go():
    assert refuse_snapshot(_snapshot(100), _snapshot(49)) == (
        "the registry's snapshot lists 49 devices, the held one 100"
    )
    assert refuse_snapshot(_snapshot(100), _snapshot(50)) is None
    assert refuse_snapshot(_snapshot(MIN_LOST + 1), _snapshot(1)) is not None
    assert refuse_snapshot(_snapshot(3), _snapshot(1)) is None  # an admin removed two
    assert refuse_snapshot(_snapshot(10), _snapshot(1000)) is None
