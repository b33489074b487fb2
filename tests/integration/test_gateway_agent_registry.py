"""What the gateway agent asks of the registry, against the suite's real PostgreSQL.

Connects and disconnects carry the time they happened (a gateway replays its spool after an
outage), the snapshot is one query, and the whole path also runs on Debian 12's
python3-psycopg 3.1, the driver the gateways have.
"""

from __future__ import annotations

import json
import re
import subprocess
import textwrap
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address
from pathlib import Path

import psycopg
import pytest

from iotistic_vpn.errors import InvalidValue
from iotistic_vpn.gateway.authorize import Accept, Deny, DeviceGrant, decide
from iotistic_vpn.registry import Certificate, ConnectionEvent, Registry

pytestmark = pytest.mark.postgres
REPO = Path(__file__).resolve().parents[2]
NOW = datetime.now(UTC)
BIG = (1 << 158) + 12345  # a 20-octet serial, as pki issues them (at most 159 bits)


@pytest.fixture
def reg(registry_dsn):
    with Registry(registry_dsn) as registry:
        registry.ensure_customer("acme", actor="t")
        registry.provision_devices("acme", ["dev-1", "dev-2", "dev-3"], actor="t")
        yield registry


def _cert(device_id: str, serial: int, *, start: int = -1, days: int = 30) -> Certificate:
    return Certificate(
        serial, device_id, f"{serial:064x}"[-64:],
        NOW + timedelta(days=start), NOW + timedelta(days=days),
    )  # fmt: skip


def _events(dsn: str, device: str) -> list[tuple[str, str, datetime]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT gateway, event, at FROM connection_events WHERE device_id = %s ORDER BY id",
            (device,),
        ).fetchall()


def _state(reg: Registry, device: str) -> tuple[bool, str | None]:
    d = reg.find_device(device)
    return d.connected, d.gateway


# -- event times -----------------------------------------------------------------------------


def test_replayed_events_keep_their_own_time(reg, registry_dsn):
    t0 = NOW - timedelta(minutes=10)
    reg.record_connect("dev-1", "gw-a", address="198.51.100.7:1194", at=t0)
    assert reg.find_device("dev-1").last_seen == t0
    assert reg.record_disconnect("dev-1", "gw-a", at=t0 + timedelta(minutes=1)) is True
    assert reg.find_device("dev-1").last_seen == t0 + timedelta(minutes=1)
    assert _events(registry_dsn, "dev-1") == [
        ("gw-a", "connect", t0),
        ("gw-a", "disconnect", t0 + timedelta(minutes=1)),
    ]
    # Without a time the server's clock is used, as before.
    reg.record_connect("dev-1", "gw-a")
    assert reg.find_device("dev-1").last_seen > NOW


def test_a_stale_connect_from_another_gateway_does_not_take_the_device(reg, registry_dsn):
    t0 = NOW - timedelta(minutes=10)
    reg.record_connect("dev-1", "gw-b", at=t0 + timedelta(minutes=5))
    # gw-a was cut off from the registry; its spool replays a connect older than gw-b's.
    device = reg.record_connect("dev-1", "gw-a", at=t0)
    assert (device.connected, device.gateway) == (True, "gw-b")
    assert reg.record_disconnect("dev-1", "gw-a", at=t0 + timedelta(minutes=1)) is False
    assert _state(reg, "dev-1") == (True, "gw-b")
    assert reg.find_device("dev-1").last_seen == t0 + timedelta(minutes=5)
    # Both are in the history all the same.
    assert [(g, e) for g, e, _ in _events(registry_dsn, "dev-1")] == [
        ("gw-b", "connect"), ("gw-a", "connect"), ("gw-a", "disconnect"),
    ]  # fmt: skip


def test_the_old_gateways_late_disconnect_then_the_new_connect_leaves_the_device_online(reg):
    t0 = NOW - timedelta(minutes=10)
    reg.record_connect("dev-1", "gw-a", at=t0)
    # The device moved to gw-b at t0+1; gw-a noticed only at t0+2 (keepalive timeout) and its
    # event reached the registry first, while gw-b's was still spooled.
    assert reg.record_disconnect("dev-1", "gw-a", at=t0 + timedelta(minutes=2)) is True
    reg.record_connect("dev-1", "gw-b", at=t0 + timedelta(minutes=1))
    assert _state(reg, "dev-1") == (True, "gw-b")


def test_a_reconciles_repair_mends_a_lost_connect_but_never_takes_back_a_device_that_left(reg):
    """A reconcile's connect is timed at its session's start. A drained gateway's status lists a
    session its device has left until the disconnect comes: that repair must not move the
    device back (1,000-device bench: 28 devices shown offline for a reconcile round)."""

    def repair(device: str, began_s_ago: float) -> ConnectionEvent:
        return ConnectionEvent(device, "gw-a", "connect", age=began_s_ago, repair=True)

    # dev-1 left gw-a's session (begun a minute ago) for gw-b just now.
    reg.record_connect("dev-1", "gw-b")
    assert reg.record_connection_events([repair("dev-1", 60)]) == ["logged"]
    assert _state(reg, "dev-1") == (True, "gw-b")
    # dev-2's connect through gw-a was lost while the registry still had it on gw-b (gone since
    # before the session began): the repair takes it.
    reg.record_connect("dev-2", "gw-b", at=NOW - timedelta(minutes=10))
    assert reg.record_connection_events([repair("dev-2", 60)]) == ["applied"]
    assert _state(reg, "dev-2") == (True, "gw-a")
    # dev-3 is on gw-a and the registry lost that (its connect, recorded at ESTABLISHED, is a
    # little later than the session's start): mended.
    reg.record_connect("dev-3", "gw-a")
    reg.disconnect_gateway("gw-a")
    assert reg.record_connection_events([repair("dev-3", 5)]) == ["applied"]
    assert _state(reg, "dev-3") == (True, "gw-a")


@pytest.mark.parametrize("first", ["gw-1", "gw-2"])
def test_a_gateway_whose_clock_is_behind_still_takes_the_device_it_took_last(
    reg, registry_dsn, first
):
    """Order is the registry's: each event's age, as its gateway measured it, taken from the
    registry's now; the gateways' own clocks are history only."""
    real = datetime.now(UTC)  # the registry's clock and gw-1's
    behind = timedelta(minutes=10)  # gw-2's clock
    # dev-1 connected through gw-1 two minutes ago and left it a minute ago; it connected
    # through gw-2 30 s ago, which gw-2 stamps ten minutes early.
    gw1 = [
        ConnectionEvent("dev-1", "gw-1", "connect", real - timedelta(minutes=2), age=120),
        ConnectionEvent("dev-1", "gw-1", "disconnect", real - timedelta(minutes=1), age=60),
    ]
    gw2 = [ConnectionEvent("dev-1", "gw-2", "connect", real - timedelta(seconds=30) - behind,
                           age=30)]  # fmt: skip
    for batch in (gw1, gw2) if first == "gw-1" else (gw2, gw1):
        reg.record_connection_events(batch)
    assert _state(reg, "dev-1") == (True, "gw-2")
    seen = reg.find_device("dev-1").last_seen
    assert abs(seen - (real - timedelta(seconds=30))) < timedelta(seconds=5)  # not gw-2's claim
    # The history keeps what each gateway claimed.
    assert sorted(at for _, _, at in _events(registry_dsn, "dev-1")) == sorted(
        e.at for e in gw1 + gw2
    )


@pytest.mark.parametrize("call", ["record_connect", "record_disconnect"])
def test_event_times_must_be_timezone_aware(reg, call):
    naive = datetime(2026, 1, 1, 12, 0)
    field = "connect" if call == "record_connect" else "disconnect"
    with pytest.raises(
        InvalidValue,
        match=re.escape(f"invalid {field} time {naive!r}: must be a timezone-aware datetime"),
    ):
        getattr(reg, call)("dev-1", "gw-a", at=naive)
    assert _state(reg, "dev-1") == (False, None)


def test_a_batch_keeps_its_order_and_reports_each_outcome(reg, registry_dsn):
    reg.revoke_devices("acme", ["dev-3"], actor="t")
    t = NOW - timedelta(minutes=30)
    m = timedelta(minutes=1)
    batch = [
        ConnectionEvent("dev-1", "gw-a", "connect", t, "198.51.100.7:1194"),
        ConnectionEvent("dev-2", "gw-a", "connect", t + m),
        ConnectionEvent("dev-1", "gw-a", "disconnect", t + 2 * m),
        ConnectionEvent("dev-1", "gw-b", "disconnect", t + 3 * m),  # gw-b never owned it
        ConnectionEvent("dev-2", "gw-b", "connect", t),  # older than gw-a's: stale
        ConnectionEvent("dev-3", "gw-a", "connect", t),  # revoked
        ConnectionEvent("ghost", "gw-a", "connect", t),  # unknown
        ConnectionEvent("dev-1", "gw-a", "connect", t + 4 * m),
    ]
    assert reg.record_connection_events(batch) == [
        "applied", "applied", "applied", "logged", "logged", "refused", "not_found", "applied",
    ]  # fmt: skip
    assert _state(reg, "dev-1") == (True, "gw-a")
    assert _state(reg, "dev-2") == (True, "gw-a")
    assert reg.find_device("dev-1").state == "active"
    with psycopg.connect(registry_dsn) as conn:
        rows = conn.execute(
            "SELECT device_id, gateway, event, host(address) FROM connection_events ORDER BY id"
        ).fetchall()
    assert rows == [
        ("dev-1", "gw-a", "connect", "198.51.100.7"),
        ("dev-2", "gw-a", "connect", None),
        ("dev-1", "gw-a", "disconnect", None),
        ("dev-1", "gw-b", "disconnect", None),
        ("dev-2", "gw-b", "connect", None),
        ("dev-1", "gw-a", "connect", None),
    ]
    assert reg.record_connection_events([]) == []


def test_a_bad_event_fails_the_whole_batch_naming_it(reg, registry_dsn):
    batch = [
        ConnectionEvent("dev-1", "gw-a", "connect"),
        ConnectionEvent("dev-2", "gw-a", "connect", address="fe80::1"),
    ]
    with pytest.raises(InvalidValue, match=re.escape("invalid device remote address 'fe80::1'")):
        reg.record_connection_events(batch)
    with pytest.raises(InvalidValue, match=re.escape("invalid connection event 'reauth'")):
        reg.record_connection_events([ConnectionEvent("dev-1", "gw-a", "reauth")])
    assert _state(reg, "dev-1") == (False, None)
    assert _events(registry_dsn, "dev-1") == []


# -- the snapshot ----------------------------------------------------------------------------


def test_the_snapshot_has_every_device_with_only_its_current_serials(reg):
    reg.record_certificates(
        "acme",
        [
            _cert("dev-1", 11),
            _cert("dev-1", BIG),  # rotation: old and new are both current
            _cert("dev-2", 21, start=-30, days=-1),  # expired
            _cert("dev-3", 31, start=1, days=30),  # not yet valid
        ],
        actor="t",
    )
    reg.revoke_certificates("acme", [11], actor="t")
    reg.revoke_devices("acme", ["dev-2"], actor="t")
    snapshot = reg.gateway_snapshot()
    assert snapshot.taken_at == pytest.approx(datetime.now(UTC).timestamp(), abs=5)
    assert snapshot.devices == {
        "dev-1": DeviceGrant("dev-1", "acme", IPv4Address("100.64.0.2"), "provisioned",
                             frozenset({BIG})),
        "dev-2": DeviceGrant("dev-2", "acme", IPv4Address("100.64.0.3"), "revoked", frozenset()),
        "dev-3": DeviceGrant("dev-3", "acme", IPv4Address("100.64.0.4"), "provisioned",
                             frozenset()),
    }  # fmt: skip
    env = {"X509_0_CN": "dev-1", "X509_0_O": "acme"}
    assert decide({**env, "tls_serial_0": str(BIG)}, snapshot) == Accept(snapshot.devices["dev-1"])
    assert decide({**env, "tls_serial_0": "11"}, snapshot) == Deny(
        "serial_not_current", "device 'dev-1': certificate serial 11 is not current"
    )
    assert reg.revoked_serials() == {11, 21}


def test_an_empty_registry_gives_an_empty_snapshot(registry_dsn):
    with Registry(registry_dsn) as reg:
        assert reg.gateway_snapshot().devices == {}
        assert reg.revoked_serials() == set()


# -- Debian's psycopg 3.1 --------------------------------------------------------------------

_DEBIAN_PSYCOPG = subprocess.run(
    ["/usr/bin/python3", "-c", "import psycopg; print(psycopg.__version__)"],
    capture_output=True, text=True, check=False,
).stdout.strip()  # fmt: skip


@pytest.mark.skipif(
    not _DEBIAN_PSYCOPG.startswith("3.1"),
    reason="Debian 12's python3-psycopg 3.1 is not installed (apt-get install python3-psycopg)",
)
def test_the_agents_registry_calls_work_on_debian_psycopg_3_1(reg, registry_dsn):
    reg.record_certificates("acme", [_cert("dev-1", BIG)], actor="t")
    reg.revoke_devices("acme", ["dev-3"], actor="t")
    script = textwrap.dedent(
        """
        import datetime as dt, json, sys, psycopg
        from iotistic_vpn.registry import ConnectionEvent, Registry
        reg = Registry(sys.argv[1], connect_timeout=3)
        at = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=30)
        with reg.transaction():
            reg.record_connect("dev-1", "gw-1", address="198.18.0.9:1194", at=at)
            reg.record_connect("dev-2", "gw-1", at=at)
            gone = reg.record_disconnect("dev-2", "gw-1", at=at + dt.timedelta(seconds=1))
        batch = reg.record_connection_events([
            ConnectionEvent("dev-1", "gw-2", "disconnect", at, "198.18.0.7"),
            ConnectionEvent("dev-2", "gw-1", "connect", at + dt.timedelta(seconds=2)),
        ])
        snap = reg.gateway_snapshot()
        print(json.dumps({
            "psycopg": psycopg.__version__,
            "serials": sorted(str(s) for s in snap.devices["dev-1"].serials),
            "states": {d: g.state for d, g in sorted(snap.devices.items())},
            "revoked": len(reg.revoked_serials()),
            "online": [d.id for d in reg.list_devices(gateway="gw-1", connected=True)],
            "disconnect_counted": gone,
            "batch": batch,
        }))
        """
    )
    proc = subprocess.run(
        ["/usr/bin/python3", "-c", script, registry_dsn],
        capture_output=True, text=True, timeout=30, check=False,
        env={"PYTHONPATH": str(REPO / "python_plugins"), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {
        "psycopg": _DEBIAN_PSYCOPG,
        "serials": [str(BIG)],
        "states": {"dev-1": "active", "dev-2": "active", "dev-3": "revoked"},
        "revoked": 0,
        "online": ["dev-1", "dev-2"],
        "disconnect_counted": True,
        "batch": ["logged", "applied"],
    }
