#!/usr/bin/env python3
"""iotistic-vpn-remote-guard: a device's tunnel never waits for a gateway it found dead.

After a completed connection OpenVPN keeps that connection's remote for the next attempt
(init.c sets no_advance), so when the gateway dies and ping-restart fires, the first attempt goes
to the dead gateway again and waits out server-poll-timeout before the next remote. Later, when
the next gateway is slow to answer (a survivor busy with a whole fleet's handshakes), OpenVPN's
server-poll-timeout sends it on to its next remote, which may be the dead one again. No option
turns that off. This guard follows the tunnel on its management socket (`state on`, and `log
on` for the address of each dial): a gateway whose connection ended in a ping-restart is dead
until the next connection completes (for DEAD_FOR_S at most), and whenever the tunnel dials it
(`WAIT`, or `TCP_CONNECT`) the guard restarts the tunnel at once (`signal SIGUSR1`): the
attempt is given up and, after its connect-retry pause, OpenVPN dials the next remote. With a
single remote (`remote-entry-count` 1: a load balancer's name) there is nowhere else to go and
it does nothing. The restart is not tied to the attempt, so a dial read more than LATE_S after
it started is left alone.

The tunnel never waits for the guard: without it (not running, restarting, its socket gone)
OpenVPN behaves as it would alone and the dead gateway costs server-poll-timeout. That is why
it is not `management-query-remote`: OpenVPN would wait for its answer before every remote, and
it services that question in one-second steps, so every dial (a drain's, a boot's) would cost a
second more.

Standard library only, one file, as iotistic-vpn-enroll: roles/openvpn_device copies it to the
device and runs it as a systemd service beside the tunnel. It serves every management socket
named on its command line, one thread each (the fleet benchmark runs one guard for all its
devices; a device runs one for its tunnel).

    iotistic-vpn-remote-guard SOCKET [SOCKET ...]
"""

from __future__ import annotations

import re
import socket
import sys
import threading
import time

# Between attempts to reach a socket that is not there yet (OpenVPN starting or restarting).
RECONNECT_S = (0.05, 0.5)  # first wait, cap (doubling)
# How long a gateway found dead is skipped: the failover after it (devices of a lost gateway are
# back within the role's ping-restart and 10 s), not so long that one back from a reboot is
# left out. The next completed connection ends the failover (a drain may send the device back
# to it once it is up again).
DEAD_FOR_S = 60.0
# How late the guard may act on a dial (its STATE line's time, whole seconds, against this
# clock): the restart is not tied to the attempt, so it is sent only while that dial is surely
# still waiting (a dead gateway's dial lasts server-poll-timeout, the role's 4 s). A guard that
# fell behind (a loaded device) does nothing rather than end a later, good attempt.
LATE_S = 2.0


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# What the guard asks for when it connects: the tunnel's state now (it may have been restarted
# beside a live tunnel) and as it changes, the log as it is written (no history), and how many
# remotes the tunnel has.
HELLO = ("state", "state on", "log on", "remote-entry-count")
# The states in which OpenVPN has chosen its remote and is dialling it (UDP, TCP).
DIALLING = frozenset({"WAIT", "TCP_CONNECT"})
# The log line naming the gateway a dial goes to, written just before its DIALLING state:
# UDP's "UDPv4 link remote: [AF_INET]ADDR:PORT", TCP's "Attempting to establish TCP connection
# with [AF_INET]ADDR:PORT".
DIAL_TO = re.compile(r"(?:link remote: |TCP connection with )\[AF_INET6?\](\S+)$")


class Guard:
    """One tunnel: the gateways it found dead, and whether its next dial is to one of them."""

    def __init__(self, clock=time.time) -> None:
        self.clock = clock
        self.remotes: int | None = None  # remote-entry-count's answer
        self.gateway = ""  # "address:port" of the connection that is up, if any
        self.dead: dict[str, float] = {}  # "address:port" -> when its connection ping-restarted
        self.dialling = ""  # "address:port" of the dial the log just named

    def on_line(self, line: str) -> str | None:
        """The command to send for one line from OpenVPN, if any."""
        if line.isdigit():  # the answer to remote-entry-count (nothing else is a bare number)
            self.remotes = int(line)
            return None
        if line.startswith(">LOG:"):
            if dial := DIAL_TO.search(line):
                self.dialling = dial[1]
            return None
        # ">STATE:time,state,reason,local ip,remote ip,remote port,..." as it changes; the answer
        # to `state` is the same line without its prefix.
        fields = line.removeprefix(">STATE:").split(",")
        if len(fields) < 2 or not fields[0].isdigit():
            if line.startswith("ERROR:"):
                log(f"OpenVPN answered: {line}")
            return None
        padded = [*fields, "", "", "", ""]
        state, reason, address, port = padded[1], padded[2], padded[4], padded[5]
        if state == "CONNECTED":
            self.gateway, self.dead = f"{address}:{port}", {}  # the failover is over
        elif state == "RECONNECTING":
            # Only a connection that completed can be found dead: a ping-restart before one is
            # a gateway that never answered, which OpenVPN leaves by itself.
            if reason == "ping-restart" and self.gateway:
                self.dead[self.gateway] = self.clock()
            self.gateway = self.dialling = ""
        elif state in DIALLING:
            target, self.dialling = self.dialling, ""
            now = self.clock()
            self.dead = {g: at for g, at in self.dead.items() if now - at < DEAD_FOR_S}
            if target in self.dead and (self.remotes or 0) > 1:
                if (age := now - int(fields[0])) > LATE_S:
                    log(f"{target} did not answer pings; its dial is {age:.0f} s old: left alone")
                    return None
                log(f"{target} did not answer pings: leaving it for the next remote")
                return "signal SIGUSR1"
        return None


def serve(path: str, stop: threading.Event) -> None:
    """Follow one management socket until stop is set, reconnecting whenever the socket goes
    away (OpenVPN restarted: a new process, a new Guard)."""
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
        guard = Guard()
        try:
            with conn, conn.makefile("rw", encoding="utf-8", newline="\n") as stream:
                stream.write("".join(f"{command}\n" for command in HELLO))
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
