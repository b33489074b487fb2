"""The client side of the API's CONNECT tunnel: one device port on this process's stdin/stdout.

What SSH's ProxyCommand needs to reach a device only through the VPN (the inventory plugin's
`tunnel_proxy`): `iotistic-vpn device tunnel DEVICE PORT` opens

    CONNECT <device>.<customer>:<port> HTTP/1.1
    Proxy-Authorization: Bearer <token>

to the API's tunnel listener and, once it answers 200, copies bytes both ways until either side
ends. A refusal (an offline device: 503, a port the token lacks: 403) is an error naming the
target and the API's reason, at once: a rollout fails on that device instead of hanging.
"""

from __future__ import annotations

import os
import selectors
import socket
import ssl
from dataclasses import dataclass

from .errors import IotisticVpnError

__all__ = ["Proxy", "TunnelRefused", "open_tunnel", "splice"]

MAX_HEAD = 8192
CHUNK = 64 * 1024


class TunnelRefused(IotisticVpnError):
    """The API did not open the tunnel (or could not be reached)."""


@dataclass(frozen=True)
class Proxy:
    """Where the API's tunnel listener is: host:port (TLS when `tls`), or unix:PATH."""

    address: str
    tls: bool = False
    ca_file: str | None = None  # the root that verifies the listener; the system's when None

    def connect(self, timeout: float) -> socket.socket:
        if self.address.startswith("unix:"):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            sock.connect(self.address[5:])
            return sock
        host, sep, port = self.address.rpartition(":")
        if not sep or not port.isdigit():
            raise TunnelRefused(f"proxy {self.address!r}: give host:port or unix:PATH")
        host = host.strip("[]")
        sock = socket.create_connection((host, int(port)), timeout=timeout)
        if self.tls:
            context = ssl.create_default_context(cafile=self.ca_file)
            sock = context.wrap_socket(sock, server_hostname=host)
        return sock


def open_tunnel(
    proxy: Proxy, device: str, customer: str, port: int, token: str, *, timeout: float = 15.0
) -> tuple[socket.socket, bytes]:
    """The established tunnel and any bytes the device sent after the API's answer."""
    target = f"{device}.{customer}:{port}"
    try:
        sock = proxy.connect(timeout)
    except (OSError, ssl.SSLError) as exc:
        raise TunnelRefused(f"{target}: cannot reach the API's tunnel at {proxy.address}: "
                            f"{exc}") from None  # fmt: skip
    try:
        sock.sendall(
            f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n"
            f"Proxy-Authorization: Bearer {token}\r\n\r\n".encode()
        )
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(4096)
            if not chunk or len(answer) > MAX_HEAD:
                raise TunnelRefused(f"{target}: the API ended the connection without an answer")
            answer += chunk
    except OSError as exc:
        sock.close()
        raise TunnelRefused(f"{target}: {exc}") from None
    except TunnelRefused:
        sock.close()
        raise
    head, _, rest = answer.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = status.split(" ", 2)
    if len(parts) < 2 or parts[1] != "200":
        sock.close()
        raise TunnelRefused(f"{target}: the API answered {status!r}")
    sock.settimeout(None)
    return sock, rest


def splice(sock: socket.socket, early: bytes = b"", stdin: int = 0, stdout: int = 1) -> None:
    """Copy stdin to the tunnel and the tunnel to stdout until the device's side ends.

    The end of stdin is not passed on: the API's tunnel has no half close (its leg to the
    gateway is TLS), so the copy goes on until the device's side ends (SSH ends its
    ProxyCommand itself when it is done).
    """
    if early:
        _write_all(stdout, early)
    selector = selectors.DefaultSelector()
    selector.register(sock, selectors.EVENT_READ)
    selector.register(stdin, selectors.EVENT_READ)
    try:
        while True:
            for key, _ in selector.select():
                if key.fileobj is sock:
                    data = _recv(sock)
                    if not data:
                        return
                    _write_all(stdout, data)
                else:
                    data = os.read(stdin, CHUNK)
                    if data:
                        sock.sendall(data)
                    else:
                        selector.unregister(stdin)
    finally:
        selector.close()
        sock.close()


def _recv(sock: socket.socket) -> bytes:
    """What arrived, b"" at the end. A TLS socket may hold decrypted bytes the selector cannot
    see: those are taken in the same call."""
    try:
        data = sock.recv(CHUNK)
        while data and isinstance(sock, ssl.SSLSocket) and sock.pending():
            data += sock.recv(sock.pending())
    except ConnectionResetError:
        return b""
    return data


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
