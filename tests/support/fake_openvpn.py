"""A scripted OpenVPN management interface on a unix socket, for the agent's fault tests.

It speaks the protocol as OpenVPN 2.6 does with `management-client-auth` (the wire format of
tests/unit/test_management.py's transcripts), so a test can time what a real instance makes
hard to hit: an instance restarted under the agent that numbers clients from 0 again, a reply
that never comes. The test sends the `>CLIENT:` notifications; commands are answered here.
One management client at a time, as OpenVPN serves it; `restart()` drops it like a restarted
instance does and the agent reconnects. `holding` plays management-hold: the greeting says so and
nothing but `hold release` (and connection-level commands) works until it comes.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from pathlib import Path

GREETING = b">INFO:OpenVPN Management Interface Version 5 -- type 'help' for more info\r\n"
HOLDING = b">HOLD:Waiting for hold release:0\r\n"


def block(header: str, env: dict[str, str]) -> bytes:
    """A `>CLIENT:` notification with its ENV lines, CRLF as OpenVPN ends them."""
    lines = [header, *(f">CLIENT:ENV,{k}={v}" for k, v in env.items()), ">CLIENT:ENV,END"]
    return ("\r\n".join(lines) + "\r\n").encode()


class FakeOpenVPN:
    """One instance's management socket; `clients` is what its `status 3` lists."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.clients: dict[int, tuple[str, str, str]] = {}  # cid -> (CN, real, virtual address)
        self.since: dict[int, int] = {}  # cid -> when its CONNECT came (status: else now)
        self.commands: list[tuple[int, str]] = []  # (link number, first line), as received
        self.stalled: re.Pattern[str] | None = None  # commands answered with silence
        self.links = 0  # management clients accepted so far
        self.holding = False  # management-hold: waiting for `hold release`
        self._conn: socket.socket | None = None
        self._lock = threading.Lock()
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(str(path))
        self._server.listen(1)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return  # closed
            with self._lock:
                self.links += 1
                self._conn = conn
                link = self.links
            conn.sendall(GREETING + (HOLDING if self.holding else b""))
            self._serve(conn, link)

    def _serve(self, conn: socket.socket, link: int) -> None:
        lines = self._lines(conn)
        for line in lines:
            if line.startswith("client-auth "):
                while next(lines, "END") != "END":
                    pass  # ifconfig-push ...
            with self._lock:
                self.commands.append((link, line))
                stalled = self.stalled is not None and self.stalled.search(line)
            if not stalled:
                self._answer(conn, line)

    def _answer(self, conn: socket.socket, line: str) -> None:
        word = line.split()[0]
        if line == "hold release":
            self.holding = False
            conn.sendall(b"SUCCESS: hold release succeeded\r\n")
            return
        if self.holding and word in ("status", "client-auth", "client-deny", "client-kill"):
            conn.sendall(f"ERROR: The '{word}' command is not supported by the current daemon "
                         "mode\r\n".encode())  # fmt: skip
            return
        if word == "status":
            rows = [
                f"CLIENT_LIST\t{cn}\t{real}\t{vpn}\t\t100\t100\tsince\t"
                f"{self.since.get(cid, int(time.time()))}\t"
                f"UNDEF\t{cid}\t1\tAES-256-GCM"
                for cid, (cn, real, vpn) in sorted(self.clients.items())
            ]
            text = "\r\n".join(["TITLE\tOpenVPN 2.6 (fake)", *rows, "END"]) + "\r\n"
            conn.sendall(text.encode())
            return
        conn.sendall(f"SUCCESS: {word} command succeeded\r\n".encode())
        if word == "client-kill":
            cid = int(line.split()[1])
            if self.clients.pop(cid, None) is not None:  # OpenVPN reports the end it caused
                conn.sendall(block(f">CLIENT:DISCONNECT,{cid}", {"bytes_received": "100"}))

    @staticmethod
    def _lines(conn: socket.socket):
        buf = b""
        while True:
            try:
                data = conn.recv(65536)
            except OSError:
                return
            if not data:
                return
            buf += data
            while b"\n" in buf:
                line, _, buf = buf.partition(b"\n")
                yield line.decode().rstrip("\r")

    # -- what the test drives --------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        with self._lock:
            assert self._conn is not None, "no management client"
            self._conn.sendall(data)

    def connect(self, cid: int, device: str, serial: int, remote: str = "198.18.0.9") -> None:
        """A device's CONNECT: the certificate's fields as env-filter 1 passes them."""
        self.clients[cid] = (device, f"{remote}:1194", "")  # listed, no address yet
        self.since[cid] = int(time.time())
        env = {"X509_0_CN": device, "X509_0_O": "acme", "tls_serial_0": str(serial),
               "untrusted_ip": remote}  # fmt: skip
        self.send(block(f">CLIENT:CONNECT,{cid},1", env))

    def established(self, cid: int, address: str) -> None:
        device, real, _ = self.clients[cid]
        self.clients[cid] = (device, real, address)
        env = {"X509_0_CN": device, "ifconfig_pool_remote_ip": address,
               "untrusted_ip": real.partition(":")[0]}  # fmt: skip
        self.send(block(f">CLIENT:ESTABLISHED,{cid}", env))

    def restart(self, listed: dict[int, tuple[str, str, str]] | None = None) -> None:
        """Drop the management client and every client, as a restarted instance does; the
        new instance's `status` lists `listed` (clients it numbered from 0 again)."""
        with self._lock:
            conn, self._conn = self._conn, None
            self.clients = dict(listed or {})
            self.since = {}
        if conn is not None:
            conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    def commands_on(self, link: int, prefix: str) -> list[str]:
        with self._lock:
            return [c for n, c in self.commands if n == link and c.startswith(prefix)]

    def close(self) -> None:
        self.restart()
        self._server.close()
        self.path.unlink(missing_ok=True)
