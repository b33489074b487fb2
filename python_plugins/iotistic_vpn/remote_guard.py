#!/usr/bin/env python3
"""iotistic-vpn-remote-guard: a device's tunnel never dials first the gateway it found dead.

After a completed connection OpenVPN keeps that connection's remote (init.c sets no_advance), so
when the gateway dies and ping-restart fires, the first attempt goes to the dead gateway again
and waits out server-poll-timeout before the next remote. With `management-query-remote`,
OpenVPN asks its management client about every remote before it dials it (`>REMOTE:host,port,
proto`); this guard answers ACCEPT, except for the remote whose connection just ended in a
ping-restart, which it skips once (`remote SKIP`): the next remote is dialled at once. Skipped
once only: if every other remote fails too, the one skipped is tried again on the next round
(it may be back), and a single remote is never left without an answer (a skip wraps round to
it and the second question is accepted).

OpenVPN waits for an answer before it dials anything, so the guard answers everything it does
not understand with ACCEPT, reconnects at once when the socket goes away (OpenVPN restarted)
and keeps serving: OpenVPN resends the pending question to a client that connects.

Standard library only, one file, as iotistic-vpn-enroll: roles/openvpn_device copies it to the
device and runs it as a systemd service beside the tunnel. It serves every management socket
named on its command line, one thread each (the fleet benchmark runs one guard for all its
devices; a device runs one for its tunnel).

    iotistic-vpn-remote-guard SOCKET [SOCKET ...]
"""

from __future__ import annotations

import socket
import sys
import threading
import time

# Between attempts to reach a socket that is not there yet (OpenVPN starting or restarting).
RECONNECT_S = (0.05, 0.5)  # first wait, cap (doubling)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Guard:
    """One tunnel's answers: which remote it dialled last, which one to skip next."""

    def __init__(self) -> None:
        self.dialled: str | None = None  # "host,port,proto" of the last remote accepted
        self.dead: str | None = None  # the remote to skip once, after its ping-restart

    def on_line(self, line: str) -> str | None:
        """The command to send for one line from OpenVPN, if any."""
        if line.startswith(">REMOTE:"):
            remote = line[len(">REMOTE:") :]
            if remote == self.dead:
                self.dead = None
                log(f"skipping {remote}: its connection ended in a ping-restart")
                return "remote SKIP"
            self.dialled = remote
            return "remote ACCEPT"
        if line.startswith(">STATE:"):
            # >STATE:time,state,reason,local ip,remote ip,remote port,...
            fields = line[len(">STATE:") :].split(",")
            state, reason = [*fields, "", "", ""][1:3]
            if state == "RECONNECTING" and reason == "ping-restart" and self.dialled:
                self.dead = self.dialled
            elif state == "CONNECTED":
                self.dead = None
            return None
        if line.startswith("ERROR:"):
            log(f"OpenVPN answered: {line}")
        return None


def serve(path: str, stop: threading.Event) -> None:
    """Answer one management socket's questions until stop is set, reconnecting whenever the
    socket goes away. The Guard outlives a reconnect (OpenVPN restarting inside the same
    process keeps its socket; a new process starts with a fresh connection list anyway)."""
    guard = Guard()
    wait = RECONNECT_S[0]
    while not stop.is_set():
        try:
            conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            conn.connect(path)
        except OSError:
            conn.close()
            stop.wait(wait)
            wait = min(wait * 2, RECONNECT_S[1])
            continue
        wait = RECONNECT_S[0]
        try:
            with conn, conn.makefile("rw", encoding="utf-8", newline="\n") as stream:
                stream.write("state on\n")
                stream.flush()
                for raw in stream:
                    if stop.is_set():
                        return
                    command = guard.on_line(raw.rstrip("\r\n"))
                    if command:
                        stream.write(command + "\n")
                        stream.flush()
        except OSError as exc:  # OpenVPN went away mid-line: reconnect
            log(f"{path}: {exc}")


def main(argv: list[str]) -> int:
    if not argv or any(a.startswith("-") for a in argv):
        log(__doc__.strip().splitlines()[-1].strip())
        return 2
    stop = threading.Event()
    threads = [threading.Thread(target=serve, args=(p, stop), name=p, daemon=True) for p in argv]
    for t in threads:
        t.start()
    try:
        while any(t.is_alive() for t in threads):
            time.sleep(1)
    except KeyboardInterrupt:
        stop.set()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
