"""The gateway agent under faults a real instance makes hard to time: the agent as its own
process in a network namespace (real routes on a tun0, here a veth), the suite's real
PostgreSQL, and a scripted management peer (tests/support/fake_openvpn.py) in place of OpenVPN."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from iotistic_vpn.registry import Certificate, Registry
from tests.support.fake_openvpn import FakeOpenVPN, block
from tests.support.gateway_harness import AGENT_ENV, AGENT_PYTHON, GATEWAY, eventually
from tests.support.netns import Namespace, Process, Underlay

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
]

SERIALS = {"dev-a": 1001, "dev-b": 1002}


@dataclass
class Agent:
    ns: Namespace
    process: Process
    peer: FakeOpenVPN
    registry: Registry
    registry_dsn: str
    work: Path
    argv: list[str]

    def restart(self) -> None:
        """Stop the agent process and start it again on the same state and instance."""
        self.process.stop()
        links = self.peer.links
        self.process = self.ns.start(self.argv, self.work / "agent-restarted.log", AGENT_ENV)
        eventually(lambda: self.peer.commands_on(links + 1, "status"), "the agent back", 10)

    def address(self, device: str) -> str:
        return self.registry.find_device(device).vpn_address

    def health(self) -> tuple[int, dict]:
        out = self.ns.run(["curl", "-sS", "--max-time", "3", "-w", "\n%{http_code}",
                           "http://127.0.0.1:8089/healthz"], check=False).stdout  # fmt: skip
        body, _, code = out.rpartition("\n")
        return int(code or 0), json.loads(body) if body else {}

    def metric(self, sample: str) -> float | None:
        """A sample of /metrics, e.g. 'iotistic_gateway_snapshot_reads_total{kind="full"}'."""
        out = self.ns.run(["curl", "-sS", "--max-time", "3", "http://127.0.0.1:8089/metrics"],
                          check=False).stdout  # fmt: skip
        found = re.search(rf"^{re.escape(sample)} (\S+)$", out, re.M)
        return float(found.group(1)) if found else None

    def routes(self) -> dict[str, str]:
        return dict(re.findall(r"^(100\.\S+) dev (\S+)", self.ns.routes(), re.M))

    def online(self, device: str) -> tuple[bool, str | None]:
        d = self.registry.find_device(device)
        return d.connected, d.gateway

    def admitted(self, cid: int) -> int:
        """How many times the agent admitted client `cid`, on any link."""
        return sum(c == f"client-auth {cid} 1" for _, c in self.peer.commands)


@pytest.fixture
def start_agent(registry_dsn, pg_server) -> Iterator:
    made: list[tuple[Underlay, Agent | None, Path]] = []

    def start(registry_settings: str = "", agent_settings: str = "") -> Agent:
        work = Path(tempfile.mkdtemp(prefix="iotistic-agent-"))
        ul = Underlay(work)
        made.append((ul, None, work))
        ns = ul.namespace("gw", plugged=False)
        # A veth pair stands in for the instance's tun: a link routes can point at.
        ns.run(["ip", "link", "add", "tun0", "type", "veth", "peer", "name", "tun0-peer"])
        for link in ("tun0", "tun0-peer"):
            ns.run(["ip", "link", "set", link, "up"])
        registry = Registry(registry_dsn)
        registry.ensure_customer("acme", actor="test")
        registry.provision_devices("acme", list(SERIALS), actor="test")
        now = dt.datetime.now(dt.UTC)
        registry.record_certificates("acme", [
            Certificate(serial, device, f"{serial:064x}", now - dt.timedelta(days=1),
                        now + dt.timedelta(days=365))
            for device, serial in SERIALS.items()
        ], actor="test")  # fmt: skip
        peer = FakeOpenVPN(work / "iotistic-0.sock")
        config = work / "gateway-agent.toml"
        config.write_text(
            f'gateway = "{GATEWAY}"\nhttp_listen = "127.0.0.1:8089"\n'
            f'state_path = "{work}/state/agent.db"\ncrl_dir = "{work}/crl.d"\n'
            "reconcile_interval_s = 600\n"
            f"{'' if 'snapshot_interval_s' in agent_settings else 'snapshot_interval_s = 0.5'}\n"
            f"{agent_settings}\n"
            f'certificate_file = "{work}/none.crt"\nca_file = "{work}/none.pem"\n'
            f'crl_file = "{work}/none.crl"\n'
            f'[registry]\nhost = "{pg_server.socket_dir}"\nport = {pg_server.port}\n'
            f'dbname = "{conninfo_to_dict(registry_dsn)["dbname"]}"\n'
            f'user = "postgres"\npassword = "{pg_server.password}"\nsslmode = "disable"\n'
            f"{registry_settings}\n"
            f'[[instances]]\nname = "iotistic-0"\nmanagement = "{peer.path}"\ntun = "tun0"\n'
        )
        argv = [AGENT_PYTHON, "-m", "iotistic_vpn.gateway", "--config", str(config)]
        process = ns.start(argv, work / "agent.log", AGENT_ENV)
        agent = Agent(ns, process, peer, registry, registry_dsn, work, argv)
        made[-1] = (ul, agent, work)
        eventually(lambda: agent.health()[0] == 200, "the agent to hold the socket", 10)
        eventually(lambda: peer.commands_on(1, "status"), "the agent to read status")
        return agent

    yield start
    for ul, agent, work in made:
        try:
            if agent is not None:
                agent.peer.close()
                agent.registry.close()
            ul.close()
        finally:
            shutil.rmtree(work, ignore_errors=True)


def connected(agent: Agent, cid: int, device: str, address: str | None = None) -> str:
    """Drive one device through CONNECT and ESTABLISHED; return its address."""
    address = address or agent.address(device)
    before = agent.admitted(cid)
    agent.peer.connect(cid, device, SERIALS[device])
    eventually(lambda: agent.admitted(cid) > before, f"client-auth of {device}")
    agent.peer.established(cid, address)
    return address


# -- a CONNECT is a new session, whatever the agent knew about its client id -----------------


@pytest.mark.parametrize("seen", ["in the restarted instance's status", "only by its CONNECT"])
def test_a_client_id_reused_after_an_instance_restart_is_a_new_device(start_agent, seen):
    agent = start_agent()
    address_a = connected(agent, 0, "dev-a")
    eventually(lambda: agent.online("dev-a") == (True, GATEWAY), "dev-a online")
    assert agent.routes() == {address_a: "tun0"}
    if seen.startswith("in"):
        # The instance restarts and numbers clients from 0 again: dev-b is client 0 now,
        # still waiting for its verdict when the agent reads the new instance's status.
        agent.peer.restart(listed={0: ("dev-b", "198.18.0.10:1194", "")})
        eventually(lambda: agent.peer.commands_on(2, "status"), "the agent back on the socket")
    # Either way the CONNECT itself says it: only a REAUTH renegotiates a known client.
    address_b = connected(agent, 0, "dev-b")
    eventually(lambda: agent.routes() == {address_b: "tun0"}, "dev-b's route, dev-a's gone")
    eventually(lambda: agent.online("dev-b") == (True, GATEWAY), "dev-b online")
    eventually(lambda: agent.online("dev-a") == (False, GATEWAY), "dev-a offline")
    code, health = agent.health()
    assert code == 200
    assert health["instances"]["iotistic-0"]["clients"] == 1


# -- a management reply that never comes -------------------------------------------------------


def test_a_kill_without_a_reply_is_retried_on_a_reopened_link(start_agent):
    agent = start_agent()
    connected(agent, 0, "dev-a")
    eventually(lambda: agent.online("dev-a") == (True, GATEWAY), "dev-a online")
    agent.peer.stalled = re.compile(r"^client-kill")  # the instance swallows this reply
    agent.registry.revoke_device("acme", "dev-a", actor="test", reason="key_compromise")
    eventually(lambda: agent.peer.commands_on(1, "client-kill 0 HALT"), "the first kill")
    agent.peer.stalled = None
    # After the command's timeout (5 s) the agent drops the link, which is out of step, opens
    # a new one, reads status again and ends the session it still has to end.
    eventually(lambda: agent.peer.commands_on(2, "status"), "a new management link", 10)
    eventually(lambda: agent.peer.commands_on(2, "client-kill 0 HALT"), "the kill retried")
    eventually(lambda: agent.online("dev-a") == (False, GATEWAY), "dev-a offline")
    agent.process.wait_for(r"client-kill 0 HALT'?: no reply in 5s; dropping the link")
    # Replies on the new link answer their own commands: the next device is admitted.
    address_b = connected(agent, 1, "dev-b")
    eventually(lambda: agent.online("dev-b") == (True, GATEWAY), "dev-b online")
    assert agent.routes() == {address_b: "tun0"}
    assert agent.health()[0] == 200


# -- the spool cannot be written for a while ---------------------------------------------------


def test_events_wait_in_memory_while_the_spool_is_locked_and_are_all_recorded(start_agent):
    agent = start_agent()
    spool = sqlite3.connect(agent.work / "state/agent.db", isolation_level=None)
    spool.execute("BEGIN IMMEDIATE")  # another writer holds the file: 'database is locked'
    try:
        address_a = connected(agent, 0, "dev-a")  # decided while its event cannot be written
        agent.process.wait_for(r"ERROR writing events to the spool .*database is locked", 10)
        code, health = agent.health()
        assert code == 503
        assert "database is locked" in health["spool_error"]
        assert health["spool_depth"] == 1  # held in memory, counted
        connected(agent, 1, "dev-b")  # connects are still decided
        assert agent.online("dev-a") == (False, None)
    finally:
        spool.execute("ROLLBACK")
        spool.close()
    eventually(lambda: agent.online("dev-a") == (True, GATEWAY), "dev-a online", 15)
    eventually(lambda: agent.online("dev-b") == (True, GATEWAY), "dev-b online")
    eventually(lambda: agent.health()[0] == 200, "/healthz 200 again")
    # The writer and the flusher are still at work: a later event goes through too.
    agent.peer.send(block(">CLIENT:DISCONNECT,0", {"bytes_received": "100"}))
    eventually(lambda: agent.online("dev-a") == (False, GATEWAY), "dev-a offline")
    assert agent.routes() == {agent.address("dev-b"): "tun0"}
    assert address_a not in agent.routes()


# -- a lock held in the registry ----------------------------------------------------------------


def test_a_registry_lock_fails_the_agents_calls_in_time_and_connects_go_on(start_agent):
    agent = start_agent("lock_timeout_s = 1\nstatement_timeout_s = 5")
    address = agent.address("dev-a")  # read now: the test's own reads wait for the lock too
    with psycopg.connect(agent.registry_dsn) as admin:  # an admin's open transaction
        admin.execute("LOCK TABLE devices, registry_changes IN ACCESS EXCLUSIVE MODE")
        locked = time.monotonic()
        agent.process.wait_for(r"is unavailable: canceling statement due to lock timeout", 5)
        assert time.monotonic() - locked < 1 + 0.5 + 1.5  # the timeout, a round, slack
        started = time.monotonic()
        connected(agent, 0, "dev-a", address)  # decided from the snapshot in memory
        assert time.monotonic() - started < 2
        code, health = agent.health()
        assert (code, health["registry_reachable"]) == (200, False)
        # Its connect event waits in the spool for the registry.
        eventually(lambda: agent.health()[1]["spool_depth"] == 1, "the connect spooled")
        admin.rollback()
    eventually(lambda: agent.online("dev-a") == (True, GATEWAY), "dev-a online")
    assert agent.health()[1]["registry_reachable"] is True


# -- health ------------------------------------------------------------------------------------


def test_health_is_503_while_the_snapshot_is_stale_and_while_draining(start_agent):
    """The load balancer stops sending new devices to a gateway that has not read the registry
    for snapshot_max_age_s (it would not see revocations) or that is leaving."""
    import socket

    agent = start_agent("lock_timeout_s = 0.5", "snapshot_max_age_s = 2")
    with psycopg.connect(agent.registry_dsn) as admin:  # the registry away for this agent
        admin.execute("LOCK TABLE devices, registry_changes IN ACCESS EXCLUSIVE MODE")
        eventually(lambda: agent.health()[0] == 503, "health to turn 503", 6)
        problems = agent.health()[1]["problems"]
        assert len(problems) == 1 and re.fullmatch(
            r"registry snapshot \d+ s old \(limit 2 s\)", problems[0]
        ), problems
        agent.process.wait_for(r"the registry snapshot is \d+ s old \(limit 2 s\)", 3)
        admin.rollback()
    eventually(lambda: agent.health()[0] == 200, "health back once the registry answers", 6)
    with socket.socket(socket.AF_UNIX) as control:  # as `python -m iotistic_vpn.gateway drain`
        control.settimeout(10)
        control.connect(str(agent.work / "state" / "agent.sock"))
        control.sendall(b"drain 100\n")
        assert control.recv(100).startswith(b"drained 0")
    code, health = agent.health()
    assert (code, health["problems"], health["draining"]) == (503, ["draining"], True)


# -- a client's own environment lines ----------------------------------------------------------


def test_a_connect_carrying_a_certificate_field_twice_is_refused(start_agent):
    """A client may send its own X509_0_CN before OpenVPN's: the last one would win, so a
    decision field that comes twice is a refusal, not a guess."""
    agent = start_agent()
    lines = [
        ">CLIENT:CONNECT,0,1",
        ">CLIENT:ENV,X509_0_CN=dev-b",  # the client's own line
        ">CLIENT:ENV,X509_0_CN=dev-a",
        ">CLIENT:ENV,X509_0_O=acme",
        f">CLIENT:ENV,tls_serial_0={SERIALS['dev-a']}",
        ">CLIENT:ENV,untrusted_ip=198.18.0.9",
        ">CLIENT:ENV,END",
    ]
    agent.peer.send(("\r\n".join(lines) + "\r\n").encode())
    eventually(lambda: agent.peer.commands_on(1, "client-deny 0 1"), "the connect refused")
    agent.process.wait_for(r"refused client 0 from 198\.18\.0\.9: .*X509_0_CN more than once")
    assert agent.admitted(0) == 0
    assert agent.routes() == {}
    assert agent.online("dev-a") == (False, None)
    # The same device with one CN is admitted as ever.
    connected(agent, 1, "dev-a")
    eventually(lambda: agent.online("dev-a") == (True, GATEWAY), "dev-a online")


# -- a registry that suddenly lists nothing ----------------------------------------------------


def test_an_empty_registry_snapshot_does_not_replace_the_held_one(start_agent):
    agent = start_agent()
    address_a = connected(agent, 0, "dev-a")
    eventually(lambda: agent.online("dev-a") == (True, GATEWAY), "dev-a online")
    address_b = agent.address("dev-b")
    with psycopg.connect(agent.registry_dsn) as admin:  # a restore gone wrong, say
        admin.execute("DELETE FROM devices")
    time.sleep(1.5)  # three snapshot rounds: the session still stands
    assert not agent.peer.commands_on(1, "client-kill")
    agent.process.wait_for(r"ERROR the registry's snapshot lists no devices \(the held one has 2\)"
                           r": refused, deciding on the held snapshot", 5)  # fmt: skip
    code, health = agent.health()
    assert code == 503
    assert health["problems"] == [
        "the registry's snapshot lists no devices (the held one has 2): keeping the held one"
    ]
    assert health["snapshot_devices"] == 2
    # New connects are decided on the held snapshot.
    connected(agent, 1, "dev-b", address_b)
    assert agent.routes() == {address_a: "tun0", address_b: "tun0"}


# -- sessions adopted after an agent restart ---------------------------------------------------


def test_a_session_adopted_after_a_restart_is_ended_when_its_serial_is_revoked(start_agent):
    agent = start_agent()
    now = dt.datetime.now(dt.UTC)
    # dev-a's next certificate is issued, so the device keeps a current one whatever happens.
    agent.registry.record_certificates("acme", [Certificate(
        2001, "dev-a", f"{2001:064x}", now - dt.timedelta(days=1), now + dt.timedelta(days=365),
    )], actor="test")  # fmt: skip
    connected(agent, 0, "dev-a")  # with its certificate 1001
    eventually(lambda: agent.online("dev-a") == (True, GATEWAY), "dev-a online")
    agent.restart()  # status lists client 0; OpenVPN's status has no serial
    agent.process.wait_for(r"adopted 1 connected client")
    agent.registry.revoke_certificates("acme", [SERIALS["dev-a"]], actor="test")
    # It has a current certificate: sent on to reconnect (RESTART), not stopped for good.
    eventually(lambda: agent.peer.commands_on(2, "client-kill 0 RESTART,[N]"), "the session ended",
               3)  # fmt: skip
    agent.process.wait_for(r"ended the session of dev-a \(client 0, RESTART,\[N\]\): device "
                           r"'dev-a': certificate serial 1001 is not current")  # fmt: skip
    eventually(lambda: agent.online("dev-a") == (False, GATEWAY), "dev-a offline")


def test_a_stored_serial_is_not_taken_for_a_reused_client_id(start_agent):
    agent = start_agent()
    connected(agent, 0, "dev-a")  # with its certificate 1001
    eventually(lambda: agent.online("dev-a") == (True, GATEWAY), "dev-a online")
    agent.process.stop()
    # Meanwhile dev-a got its next certificate, its old one was revoked, the instance restarted
    # and dev-a came back as client 0 again (a later start, another port): what the agent
    # stored about client 0 is not this session, which must not be ended for 1001.
    now = dt.datetime.now(dt.UTC)
    agent.registry.record_certificates("acme", [Certificate(
        2001, "dev-a", f"{2001:064x}", now - dt.timedelta(days=1), now + dt.timedelta(days=365),
    )], actor="test")  # fmt: skip
    agent.registry.revoke_certificates("acme", [SERIALS["dev-a"]], actor="test")
    agent.peer.restart(listed={0: ("dev-a", "198.18.0.9:40000", agent.address("dev-a"))})
    agent.peer.since[0] = int(time.time()) + 5
    agent.process = agent.ns.start(agent.argv, agent.work / "agent-restarted.log", AGENT_ENV)
    agent.process.wait_for(r"adopted 1 connected client")
    time.sleep(1.5)  # three snapshot rounds
    assert not agent.peer.commands_on(2, "client-kill")
    assert agent.online("dev-a") == (True, GATEWAY)


# -- the change feed: revocations pushed, not polled -------------------------------------------

# No poll and no full read for ten minutes: whatever the agent learns, the feed told it.
PUSH_ONLY = "snapshot_interval_s = 600\nfull_read_interval_s = 600"


def test_a_revocation_is_pushed_and_ends_the_session_within_a_second(start_agent):
    agent = start_agent(agent_settings=PUSH_ONLY)
    connected(agent, 0, "dev-a")
    connected(agent, 1, "dev-b")
    eventually(lambda: agent.online("dev-a") == (True, GATEWAY), "dev-a online")
    eventually(lambda: agent.metric("iotistic_gateway_change_feed_listening") == 1, "listening")
    started = time.monotonic()
    agent.registry.revoke_device("acme", "dev-a", actor="test", reason="key_compromise")
    eventually(lambda: agent.peer.commands_on(1, "client-kill 0 HALT"), "dev-a's session ended", 2)
    assert time.monotonic() - started < 1
    assert (agent.work / "crl.d" / str(SERIALS["dev-a"])).exists()
    assert not agent.peer.commands_on(1, "client-kill 1")  # dev-b's session stands
    # It read what changed, not every device: one full read, at start.
    assert agent.metric('iotistic_gateway_snapshot_reads_total{kind="full"}') == 1
    assert agent.metric('iotistic_gateway_snapshot_reads_total{kind="changes"}') >= 1


def test_a_change_made_while_the_listener_is_away_is_read_when_it_is_back(start_agent):
    agent = start_agent(agent_settings=PUSH_ONLY)
    connected(agent, 0, "dev-a")
    eventually(lambda: agent.metric("iotistic_gateway_change_feed_listening") == 1, "listening")
    with psycopg.connect(agent.registry_dsn, autocommit=True) as admin:
        # The registry restarts, a proxy drops idle connections: the agent's LISTEN is gone.
        dropped = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE query = 'LISTEN registry_changes'"
        ).fetchall()
        assert dropped == [(True,)]
        # Revoked while nobody listens: no notification reaches the agent for this one.
        agent.registry.revoke_device("acme", "dev-a", actor="test", reason="key_compromise")
    agent.process.wait_for(r"change feed: the listening connection was lost; reconnecting", 5)
    eventually(lambda: agent.peer.commands_on(1, "client-kill 0 HALT"), "dev-a's session ended", 5)
    eventually(lambda: agent.metric("iotistic_gateway_change_feed_listening") == 1, "back")


def test_a_held_instance_is_released_only_once_the_agent_has_a_snapshot(start_agent):
    """A fresh gateway (no stored snapshot) whose registry does not answer cannot decide any
    connect: its instance stays held (management-hold) until the first snapshot is read."""
    agent = start_agent("lock_timeout_s = 0.5")
    agent.process.stop()
    for path in (agent.work / "state").glob("agent.db*"):
        path.unlink()  # as on a fresh gateway
    agent.peer.holding = True  # the instance restarted and waits for its agent
    links = agent.peer.links
    with psycopg.connect(agent.registry_dsn) as admin:  # the registry away for this agent
        admin.execute("LOCK TABLE devices, registry_changes IN ACCESS EXCLUSIVE MODE")
        agent.process = agent.ns.start(agent.argv, agent.work / "agent-fresh.log", AGENT_ENV)
        agent.process.wait_for("instance iotistic-0 holds until the agent has a registry "
                               "snapshot to decide connects on", 15)  # fmt: skip
        time.sleep(2)
        assert agent.peer.links == links + 1
        assert agent.peer.commands_on(links + 1, "hold") == []
        assert agent.peer.holding
        assert agent.health()[1]["problems"] == ["no registry snapshot yet"]
        admin.rollback()
    eventually(lambda: agent.peer.commands_on(links + 1, "hold"), "the hold released", 10)
    assert agent.peer.commands_on(links + 1, "hold") == ["hold release"]
    eventually(lambda: agent.peer.commands_on(links + 1, "status"), "the link's status read")
    eventually(lambda: agent.health()[0] == 200, "healthy")
    assert agent.metric('iotistic_gateway_holds_released_total{instance="iotistic-0"}') == 1.0
    agent.process.wait_for("instance iotistic-0: hold released: it starts and accepts devices")
