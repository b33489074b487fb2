"""The agent's durable spool and snapshot: ordered, crash-safe, 0600."""

import ipaddress
import os
import stat
import subprocess
import sys
import textwrap

from iotistic_vpn.gateway.authorize import DeviceGrant, Snapshot
from iotistic_vpn.gateway.store import AgentStore


def test_spool_keeps_order_across_reopen_and_forgets_only_what_was_acked(tmp_path):
    store = AgentStore(tmp_path / "agent.db")
    seqs = [store.spool({"event": "connect", "n": n}) for n in range(5)]
    store.close()

    store = AgentStore(tmp_path / "agent.db")
    assert [e.event["n"] for e in store.pending()] == [0, 1, 2, 3, 4]
    store.ack(seqs[2])
    assert [e.event["n"] for e in store.pending()] == [3, 4]
    assert store.spooled() == 2
    assert stat.S_IMODE(os.stat(tmp_path / "agent.db").st_mode) == 0o600


def test_an_event_spooled_before_a_crash_is_still_there(tmp_path):
    path = tmp_path / "agent.db"
    code = textwrap.dedent(f"""
        import os
        from iotistic_vpn.gateway.store import AgentStore
        AgentStore({str(path)!r}).spool({{"event": "disconnect"}})
        os._exit(9)  # no close, no cleanup: as if killed
    """)
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 9
    assert [e.event for e in AgentStore(path).pending()] == [{"event": "disconnect"}]


def test_snapshot_round_trips(tmp_path):
    grant = DeviceGrant(
        "dev-01", "acme", ipaddress.IPv4Address("100.64.0.2"), "active", frozenset({2**150 + 7})
    )
    store = AgentStore(tmp_path / "agent.db")
    assert store.load_snapshot().devices == {}
    store.save_snapshot(Snapshot({"dev-01": grant}, taken_at=1234.5))
    loaded = AgentStore(tmp_path / "agent.db").load_snapshot()
    assert loaded.devices == {"dev-01": grant}
    assert loaded.taken_at == 1234.5
