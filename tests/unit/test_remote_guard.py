"""iotistic-vpn-remote-guard's decisions, line by line as OpenVPN's management interface sends
them (the real exchange with OpenVPN: tests/integration/test_openvpn_handshake.py)."""

from __future__ import annotations

import socket
import threading
import time

from iotistic_vpn.remote_guard import DEAD_FOR_S, HELLO, LATE_S, Guard, serve

A, B = "198.18.20.11:1194", "198.18.20.12:1194"
CONNECTED_A = ">STATE:1001,CONNECTED,SUCCESS,100.64.0.10,198.18.20.11,1194,,"
PING_RESTART = ">STATE:1002,RECONNECTING,ping-restart,,,,,"
POLL_TIMEOUT = ">STATE:1004,RECONNECTING,server_poll,,,,,"
WAIT = ">STATE:1003,WAIT,,,,,,"


def dial(gateway: str, state: str = WAIT) -> tuple[str, str]:
    """What OpenVPN sends as it dials: the log line naming the gateway, then the state."""
    return f">LOG:1003,,UDPv4 link remote: [AF_INET]{gateway}", state


class Clock:
    """The guard's wall clock, at the time the lines above carry."""

    def __init__(self) -> None:
        self.now = 1003.0

    def __call__(self) -> float:
        return self.now


def guard_of(remotes: int, *lines: str, clock: Clock | None = None) -> Guard:
    guard = Guard(clock or Clock())
    assert guard.on_line(str(remotes)) is None  # remote-entry-count's answer
    for line in lines:
        assert guard.on_line(line) is None, line
    return guard


def answer(guard: Guard, lines: tuple[str, ...]) -> str | None:
    """The guard's command for the last of lines (none for the ones before)."""
    *before, last = lines
    for line in before:
        assert guard.on_line(line) is None, line
    return guard.on_line(last)


def test_the_redial_after_a_ping_restart_is_given_up_at_once_then_the_next_is_left_alone():
    guard = guard_of(2, CONNECTED_A, PING_RESTART)
    assert guard.on_line(">STATE:1002,RESOLVE,,,,,,") is None  # not dialling yet
    assert answer(guard, dial(A)) == "signal SIGUSR1"
    # The restart it caused, then the next remote's dial: left alone, whatever comes of it.
    assert guard.on_line(">STATE:1004,RECONNECTING,SIGUSR1,,,,,") is None
    assert answer(guard, dial(B)) is None
    assert guard.on_line(">STATE:1005,RECONNECTING,ping-restart,,,,,") is None
    assert answer(guard, dial(B)) is None, "no connection completed there: not found dead"


def test_the_dead_gateway_is_given_up_again_when_the_next_one_was_slow_to_answer():
    """A survivor busy with a whole fleet may not answer within server-poll-timeout: OpenVPN
    then goes on to its next remote, the dead gateway, which the guard gives up too."""
    guard = guard_of(2, CONNECTED_A, PING_RESTART)
    assert answer(guard, dial(A)) == "signal SIGUSR1"
    assert answer(guard, (">STATE:1004,RECONNECTING,SIGUSR1,,,,,", *dial(B))) is None
    assert answer(guard, (POLL_TIMEOUT, *dial(A))) == "signal SIGUSR1"
    assert answer(guard, (">STATE:1006,RECONNECTING,SIGUSR1,,,,,", *dial(B))) is None


def test_a_tcp_dial_is_given_up_the_same():
    guard = guard_of(3, CONNECTED_A, PING_RESTART)
    tcp = (f">LOG:3,,Attempting to establish TCP connection with [AF_INET]{A}",
           ">STATE:1003,TCP_CONNECT,,,,,,")  # fmt: skip
    assert answer(guard, tcp) == "signal SIGUSR1"


def test_a_single_remote_is_dialled_again():
    """A load balancer's one name: there is nowhere else to go."""
    guard = guard_of(1, CONNECTED_A, PING_RESTART)
    assert answer(guard, dial(A)) is None


def test_a_dead_gateway_is_dialled_again_after_a_while_or_once_it_answered():
    clock = Clock()
    guard = guard_of(2, CONNECTED_A, PING_RESTART, clock=clock)
    assert answer(guard, dial(A)) == "signal SIGUSR1"
    clock.now += DEAD_FOR_S - 1
    assert answer(guard, (POLL_TIMEOUT, *dial(A, f">STATE:{clock.now:.0f},WAIT,,,,,,"))) == (
        "signal SIGUSR1"
    )
    clock.now += 1
    assert answer(guard, (POLL_TIMEOUT, *dial(A, f">STATE:{clock.now:.0f},WAIT,,,,,,"))) is None, (
        "back from a reboot, perhaps"
    )
    # Found dead, then connected to again: alive.
    guard = guard_of(2, CONNECTED_A, PING_RESTART, CONNECTED_A, clock=clock)
    assert answer(guard, (POLL_TIMEOUT, *dial(A))) is None


def test_a_dial_the_guard_reads_late_is_left_alone():
    """The restart ends whatever attempt is running: a guard that fell behind the tunnel (its
    line is older than LATE_S) would end a later attempt, perhaps a good one."""
    clock = Clock()
    guard = guard_of(2, CONNECTED_A, PING_RESTART, clock=clock)
    clock.now += LATE_S + 1
    assert answer(guard, dial(A)) is None


def test_the_next_connection_ends_the_failover():
    """A drain may send the device back to the gateway it found dead, once that one is up."""
    guard = guard_of(2, CONNECTED_A, PING_RESTART)
    assert answer(guard, dial(A)) == "signal SIGUSR1"
    connected_b = ">STATE:1005,CONNECTED,SUCCESS,100.64.0.10,198.18.20.12,1194,,"
    drained = ">STATE:1006,RECONNECTING,server-pushed-connection-reset,,,,,"
    assert answer(guard, (*dial(B), connected_b, drained, *dial(A))) is None


def test_other_restarts_dial_the_same_gateway_again():
    """A drain's RESTART or a renegotiation failure is not a dead gateway."""
    for reason in ("server-pushed-connection-reset", "tls-error", "SIGUSR1", "SIGHUP"):
        guard = guard_of(2, CONNECTED_A, f">STATE:1002,RECONNECTING,{reason},,,,,")
        assert answer(guard, dial(A)) is None, reason


def test_a_guard_started_beside_a_live_tunnel_learns_it_from_the_state_answer():
    """`state` answers with the current state, without the >STATE: prefix."""
    guard = guard_of(2, "1,CONNECTED,SUCCESS,100.64.0.10,198.18.20.11,1194,,", "END")
    guard.on_line(PING_RESTART)
    assert answer(guard, dial(A)) == "signal SIGUSR1"


def test_nothing_is_done_before_the_remote_count_is_known():
    guard = Guard(Clock())
    for line in (CONNECTED_A, PING_RESTART):
        guard.on_line(line)
    assert answer(guard, dial(A)) is None


def test_a_dial_whose_gateway_was_not_logged_is_left_alone():
    guard = guard_of(2, CONNECTED_A, PING_RESTART)
    assert guard.on_line(WAIT) is None


def test_lines_it_does_not_know_get_no_answer():
    guard = guard_of(2)
    for line in (">INFO:OpenVPN Management Interface Version 5", "SUCCESS: state on", "",
                 ">STATE:", ">STATE:1", ">LOG:1,I,x", "ERROR: unknown command", "END",
                 "SUCCESS: real-time log notification set to ON",
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
                wait = f">STATE:{int(time.time())},WAIT,,,,,,"  # serve's guard: the real clock
                lines = ["2", "END", CONNECTED_A, PING_RESTART, *dial(A, wait)]
                stream.write("\n".join([*lines, ""]))
                stream.flush()
                assert stream.readline() == "signal SIGUSR1\n"
    finally:
        stop.set()
        server.close()
        worker.join(5)
    assert not worker.is_alive()
