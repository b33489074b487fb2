"""iotistic-vpn-remote-guard's decisions, line by line as OpenVPN's management interface sends
them (the real exchange with OpenVPN: tests/integration/test_openvpn_handshake.py)."""

from __future__ import annotations

import socket
import threading

from iotistic_vpn.remote_guard import HELLO, Guard, serve

CONNECTED_A = ">STATE:1,CONNECTED,SUCCESS,100.64.0.10,198.18.20.11,1194,,"
PING_RESTART = ">STATE:2,RECONNECTING,ping-restart,,,,,"
DIAL = ">STATE:3,WAIT,,,,,,"


def guard_of(remotes: int, *lines: str) -> Guard:
    guard = Guard()
    assert guard.on_line(str(remotes)) is None  # remote-entry-count's answer
    for line in lines:
        assert guard.on_line(line) is None, line
    return guard


def test_the_redial_after_a_ping_restart_is_given_up_at_once_then_the_next_is_left_alone():
    guard = guard_of(2, CONNECTED_A, PING_RESTART)
    assert guard.on_line(">STATE:2,RESOLVE,,,,,,") is None  # not dialling yet
    assert guard.on_line(DIAL) == "signal SIGUSR1"
    # The restart it caused, then the next remote's dial: left alone, whatever comes of it.
    assert guard.on_line(">STATE:4,RECONNECTING,SIGUSR1,,,,,") is None
    assert guard.on_line(DIAL) is None
    assert guard.on_line(">STATE:5,RECONNECTING,ping-restart,,,,,") is None
    assert guard.on_line(DIAL) is None, "no connection completed: OpenVPN moves on by itself"


def test_a_tcp_dial_is_given_up_the_same():
    guard = guard_of(3, CONNECTED_A, PING_RESTART)
    assert guard.on_line(">STATE:3,TCP_CONNECT,,,,,,") == "signal SIGUSR1"


def test_a_single_remote_is_dialled_again():
    """A load balancer's one name: there is nowhere else to go."""
    guard = guard_of(1, CONNECTED_A, PING_RESTART)
    assert guard.on_line(DIAL) is None


def test_other_restarts_dial_the_same_gateway_again():
    """A drain's RESTART or a renegotiation failure is not a dead gateway."""
    for reason in ("server-pushed-connection-reset", "tls-error", "SIGUSR1", "SIGHUP"):
        guard = guard_of(2, CONNECTED_A, f">STATE:2,RECONNECTING,{reason},,,,,")
        assert guard.on_line(DIAL) is None, reason


def test_a_guard_started_beside_a_live_tunnel_learns_it_from_the_state_answer():
    """`state` answers with the current state, without the >STATE: prefix."""
    guard = guard_of(2, "1,CONNECTED,SUCCESS,100.64.0.10,198.18.20.11,1194,,", "END")
    guard.on_line(PING_RESTART)
    assert guard.on_line(DIAL) == "signal SIGUSR1"


def test_nothing_is_done_before_the_remote_count_is_known():
    guard = Guard()
    for line in (CONNECTED_A, PING_RESTART):
        guard.on_line(line)
    assert guard.on_line(DIAL) is None


def test_lines_it_does_not_know_get_no_answer():
    guard = guard_of(2)
    for line in (">INFO:OpenVPN Management Interface Version 5", "SUCCESS: state on", "",
                 ">STATE:", ">STATE:1", ">LOG:1,I,x", "ERROR: unknown command", "END",
                 "0,198.18.20.11,1194,udp,enabled"):  # fmt: skip
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
                stream.write(f"2\nEND\n{CONNECTED_A}\n{PING_RESTART}\n{DIAL}\n")
                stream.flush()
                assert stream.readline() == "signal SIGUSR1\n"
    finally:
        stop.set()
        server.close()
        worker.join(5)
    assert not worker.is_alive()
