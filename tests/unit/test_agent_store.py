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


def test_an_older_agent_db_keeps_its_spool_and_gains_the_sessions(tmp_path):
    import sqlite3

    from iotistic_vpn.gateway.management import StatusClient
    from iotistic_vpn.gateway.store import StoredSession

    path = tmp_path / "agent.db"
    old = sqlite3.connect(path)  # the file as the agent before the sessions table left it
    old.executescript(
        "CREATE TABLE spool (seq INTEGER PRIMARY KEY AUTOINCREMENT, body TEXT NOT NULL);"
        'INSERT INTO spool (body) VALUES (\'{"event": "connect"}\');'
    )
    old.close()
    store = AgentStore(path)
    assert [e.event for e in store.pending()] == [{"event": "connect"}]
    assert store.stored_sessions() == {}
    env = {"X509_0_CN": "dev-a", "X509_0_O": "acme", "tls_serial_0": "1001"}
    a = StoredSession("dev-a", "198.18.0.9", 1000.0, env)
    store.spool_many([{"event": "connect"}], {("iotistic-0", 0): a, ("iotistic-0", 1): a})
    store.spool_many([], {("iotistic-0", 1): None})
    store.close()
    stored = AgentStore(path).stored_sessions()
    assert stored == {"iotistic-0": {0: a}}

    def listed(real: str, since: int, cn: str = "dev-a") -> bool:
        return a.describes(StatusClient(cn, real, "100.64.0.2", 0, since))

    assert listed("198.18.0.9:1194", 999)  # the handshake began a second before the CONNECT
    assert not listed("198.18.0.9:1194", 1005)  # a later session under the same client id
    assert not listed("198.18.0.10:1194", 999)
    assert not listed("198.18.0.9:1194", 999, "dev-b")
