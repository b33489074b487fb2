"""iotistic-vpn-remote-guard's answers, line by line as OpenVPN's management interface sends
them (the real exchange with OpenVPN: tests/integration/test_openvpn_handshake.py)."""

from __future__ import annotations

import socket
import threading

from iotistic_vpn.remote_guard import Guard, serve

A, B = "198.18.20.11,1194,udp4", "198.18.20.12,1194,udp4"


def connected_to(remote: str) -> Guard:
    guard = Guard()
    assert guard.on_line(f">REMOTE:{remote}") == "remote ACCEPT"
    assert guard.on_line(">STATE:1,CONNECTED,SUCCESS,100.64.0.10,198.18.20.11,1194,,") is None
    return guard


def test_the_remote_of_a_ping_restart_is_skipped_once_then_the_next_accepted():
    guard = connected_to(A)
    guard.on_line(">STATE:2,RECONNECTING,ping-restart,,,,,")
    assert guard.on_line(f">REMOTE:{A}") == "remote SKIP"
    assert guard.on_line(f">REMOTE:{B}") == "remote ACCEPT"
    # B does not answer either: A comes round again and is tried (it may be back).
    assert guard.on_line(f">REMOTE:{A}") == "remote ACCEPT"


def test_a_single_remote_is_accepted_when_the_skip_wraps_round_to_it():
    guard = connected_to(A)
    guard.on_line(">STATE:2,RECONNECTING,ping-restart,,,,,")
    assert [guard.on_line(f">REMOTE:{A}") for _ in range(2)] == ["remote SKIP", "remote ACCEPT"]


def test_other_restarts_dial_the_same_gateway_again():
    """A drain's RESTART or a renegotiation failure is not a dead gateway."""
    for reason in ("server-pushed-connection-reset", "tls-error", "SIGUSR1"):
        guard = connected_to(A)
        guard.on_line(f">STATE:2,RECONNECTING,{reason},,,,,")
        assert guard.on_line(f">REMOTE:{A}") == "remote ACCEPT", reason


def test_a_connection_that_completes_clears_the_skip():
    guard = connected_to(A)
    guard.on_line(">STATE:2,RECONNECTING,ping-restart,,,,,")
    guard.on_line(">STATE:3,CONNECTED,SUCCESS,100.64.0.10,198.18.20.11,1194,,")
    assert guard.on_line(f">REMOTE:{A}") == "remote ACCEPT"


def test_lines_it_does_not_know_get_no_answer():
    guard = Guard()
    for line in (">INFO:OpenVPN Management Interface Version 5", "SUCCESS: state on", "",
                 ">STATE:", ">STATE:1", ">LOG:1,I,x", "ERROR: unknown command"):  # fmt: skip
        assert guard.on_line(line) is None, line


def test_it_answers_the_pending_question_on_connect_and_again_after_a_reconnect(tmp_path):
    """OpenVPN resends the question it waits on to a client that connects; the guard keeps
    serving across OpenVPN going away and coming back."""
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
                assert stream.readline() == "state on\n"
                stream.write(f">INFO:hello\n>REMOTE:{A}\n")
                stream.flush()
                assert stream.readline() == "remote ACCEPT\n"
    finally:
        stop.set()
        server.close()
        worker.join(5)
    assert not worker.is_alive()
