"""iotistic-vpn-remote-guard's decisions, line by line as OpenVPN's management interface sends
them (the real exchange with OpenVPN: tests/integration/test_openvpn_handshake.py)."""

from __future__ import annotations

import socket
import threading

from iotistic_vpn.remote_guard import DEAD_FOR_S, HELLO, Guard, serve

A, B = "198.18.20.11:1194", "198.18.20.12:1194"
CONNECTED_A = ">STATE:1,CONNECTED,SUCCESS,100.64.0.10,198.18.20.11,1194,,"
PING_RESTART = ">STATE:2,RECONNECTING,ping-restart,,,,,"


def dial(gateway: str, proto: str = "udp") -> str:
    if proto == "tcp":
        return f">LOG:3,I,Attempting to establish TCP connection with [AF_INET]{gateway}"
    return f">LOG:3,I,UDPv4 link remote: [AF_INET]{gateway}"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def guard_of(remotes: int, *lines: str, clock: Clock | None = None) -> Guard:
    guard = Guard(clock or Clock())
    assert guard.on_line(str(remotes)) is None  # remote-entry-count's answer
    for line in lines:
        assert guard.on_line(line) is None, line
    return guard


def test_every_dial_of_the_gateway_found_dead_is_given_up_and_the_others_left_alone():
    guard = guard_of(2, CONNECTED_A, PING_RESTART)
    assert guard.on_line(dial(A)) == "signal SIGUSR1"  # OpenVPN's redial of the same remote
    assert guard.on_line(dial(B)) is None
    # B did not answer in time (a survivor taking the whole fleet): round to A again.
    assert guard.on_line(">STATE:5,RECONNECTING,server_poll,,,,,") is None
    assert guard.on_line(dial(A)) == "signal SIGUSR1"
    assert guard.on_line(dial(A, "tcp")) == "signal SIGUSR1"


def test_a_gateway_found_dead_is_dialled_again_after_dead_for_s():
    clock = Clock()
    guard = guard_of(2, CONNECTED_A, PING_RESTART, clock=clock)
    clock.now += DEAD_FOR_S - 0.1
    assert guard.on_line(dial(A)) == "signal SIGUSR1"
    clock.now += 0.2
    assert guard.on_line(dial(A)) is None


def test_a_connection_to_any_gateway_ends_the_failover():
    """Connected again: a gateway found dead may be back (restarted) when the device is next
    sent to it."""
    for back_on in (CONNECTED_A, ">STATE:4,CONNECTED,SUCCESS,100.64.0.10,198.18.20.12,1194,,"):
        guard = guard_of(2, CONNECTED_A, PING_RESTART, dial(B), back_on)
        assert guard.on_line(dial(A)) is None, back_on


def test_a_drain_sending_the_device_on_ends_the_failover():
    """RESTART,[N] from a gateway that leaves: it chose the next remote, which may be the one
    found dead before (back since)."""
    guard = guard_of(2, CONNECTED_A, PING_RESTART)
    guard.on_line(">STATE:4,RECONNECTING,server-pushed-connection-reset,,,,,")
    assert guard.on_line(dial(A)) is None


def test_a_single_remote_is_dialled_again():
    """A load balancer's one name: there is nowhere else to go."""
    guard = guard_of(1, CONNECTED_A, PING_RESTART)
    assert guard.on_line(dial(A)) is None


def test_other_restarts_leave_every_gateway_alive():
    """A drain's RESTART, a renegotiation failure, a poll timeout: not a dead gateway."""
    for reason in ("server-pushed-connection-reset", "tls-error", "SIGUSR1", "server_poll"):
        guard = guard_of(2, CONNECTED_A, f">STATE:2,RECONNECTING,{reason},,,,,")
        assert guard.on_line(dial(A)) is None, reason


def test_a_ping_restart_without_a_connection_since_finds_nothing_dead():
    clock = Clock()
    guard = guard_of(2, CONNECTED_A, PING_RESTART, clock=clock)
    clock.now += DEAD_FOR_S + 1
    guard.on_line(PING_RESTART)  # no connection completed since the first
    assert guard.on_line(dial(A)) is None


def test_a_guard_started_beside_a_live_tunnel_learns_it_from_the_state_answer():
    """`state` answers with the current state, without the >STATE: prefix."""
    guard = guard_of(2, "1,CONNECTED,SUCCESS,100.64.0.10,198.18.20.11,1194,,", "END")
    guard.on_line(PING_RESTART)
    assert guard.on_line(dial(A)) == "signal SIGUSR1"


def test_nothing_is_done_before_the_remote_count_is_known():
    guard = Guard()
    for line in (CONNECTED_A, PING_RESTART):
        guard.on_line(line)
    assert guard.on_line(dial(A)) is None


def test_lines_it_does_not_know_get_no_answer():
    guard = guard_of(2, CONNECTED_A, PING_RESTART)
    for line in (">INFO:OpenVPN Management Interface Version 5", "SUCCESS: state on", "",
                 ">STATE:", ">STATE:1", ">LOG:1,I,x", "ERROR: unknown command", "END",
                 "0,198.18.20.11,1194,udp,enabled", ">LOG:1,,MANAGEMENT: >STATE:3,WAIT,,,,,,",
                 f">LOG:1,I,TCP/UDP: Preserving recently used remote address: [AF_INET]{A}",
                 f"UDPv4 link remote: [AF_INET]{A}"):  # fmt: skip
        assert guard.on_line(line) is None, line


def test_it_asks_on_connect_and_again_after_openvpn_came_back(tmp_path):
    """The guard keeps serving across OpenVPN going away and coming back, each time with a new
    view of the new process."""
    path = str(tmp_path / "management.sock")
    stop = threading.Event()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    server.settimeout(5)
    worker = threading.Thread(target=serve, args=(path, stop), daemon=True)
    worker.start()
    try:
        for _ in range(2):
            conn, _addr = server.accept()
            with conn, conn.makefile("rw", encoding="utf-8", newline="\n") as stream:
                conn.settimeout(5)
                assert [stream.readline() for _ in HELLO] == [f"{c}\n" for c in HELLO]
                stream.write(f"2\nEND\n{CONNECTED_A}\n{PING_RESTART}\n{dial(A)}\n")
                stream.flush()
                assert stream.readline() == "signal SIGUSR1\n"
    finally:
        stop.set()
        server.close()
        worker.join(5)
    assert not worker.is_alive()
