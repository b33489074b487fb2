"""The gateway's tunnel service: the cloud API's only way to a device's ports.

A TLS listener (mutual: the client's certificate must chain to the fleet's CA, be fit for
clientAuth, and carry the tunnel client's organization, which no device certificate can have;
OpenSSL itself refuses a serverAuth-only gateway certificate as a client). The API sends one
`CONNECT <device>:<port> HTTP/1.1`; the service answers 200 and pipes bytes both ways only when
the device has an established session on this gateway and the port is one the gateway's
firewall lets the gateway side open. Anything else gets a status line and the connection
closes, before a byte reaches a device. It runs in the agent's process, which knows every
session, and ends a device's tunnels when its session ends. Its sockets to devices carry
`conventions.TUNNEL_SERVICE_MARK` (SO_MARK): the only new connections to devices the gateway's
nftables lets out, so no other process on the gateway opens one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass

from .. import validation
from ..conventions import TUNNEL_CLIENT_ORGANIZATION, TUNNEL_SERVICE_MARK, TUNNEL_SERVICE_PORT
from ..errors import InvalidValue
from ..streams import CHUNK, pipe
from .metrics import Metrics

__all__ = ["TunnelService", "TunnelSettings", "open_marked", "parse_connect"]

log = logging.getLogger("iotistic_vpn.gateway.tunnel")

MAX_HEAD = 8192  # bytes of request head; a CONNECT needs a few dozen


@dataclass(frozen=True)
class TunnelSettings:
    cert: str  # the gateway's certificate: the API checks it names this gateway
    key: str
    ca: str  # the fleet's CA chain: every peer must chain to it
    device_ports: tuple[int, ...]  # what the gateway's firewall lets the gateway side open
    mark: int = TUNNEL_SERVICE_MARK  # SO_MARK of the sockets to devices: what the firewall lets out
    listen: tuple[str, int] = ("0.0.0.0", TUNNEL_SERVICE_PORT)  # noqa: S104 - the API's way in
    connect_timeout_s: float = 5.0
    head_timeout_s: float = 5.0
    max_tunnels: int = 1024


class Refused(Exception):
    """A CONNECT the service will not carry: status and reason go back to the API."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


def parse_connect(head: bytes) -> tuple[str, int]:
    """(device, port) of a `CONNECT device:port HTTP/1.1` request head, else Refused."""
    try:
        line = head.split(b"\r\n", 1)[0].decode("ascii")
    except UnicodeDecodeError:
        raise Refused(400, "request line is not ASCII") from None
    parts = line.split(" ")
    if len(parts) != 3 or parts[0] != "CONNECT" or parts[2] not in ("HTTP/1.1", "HTTP/1.0"):
        raise Refused(400, "expected CONNECT device:port HTTP/1.1")
    device, sep, port = parts[1].rpartition(":")
    try:
        validation.device_id(device)
    except InvalidValue as exc:
        raise Refused(400, str(exc)) from None
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise Refused(400, f"invalid port {port!r}")
    return device, int(port)


async def open_marked(
    address: str, port: int, mark: int = TUNNEL_SERVICE_MARK
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TCP connection to a device whose socket carries the tunnel service's firewall mark.

    The gateway's nftables accepts a new connection to a device only with that mark, so this
    is the one way in; setting it needs CAP_NET_ADMIN, which the agent's unit keeps.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (address, port))
    except BaseException:
        sock.close()
        raise
    return await asyncio.open_connection(sock=sock, limit=CHUNK)


class TunnelService:
    """Serves CONNECTs for the devices `lookup` says are connected here."""

    def __init__(
        self, settings: TunnelSettings, lookup: Callable[[str], str | None], metrics: Metrics
    ) -> None:
        self.settings = settings
        self._lookup = lookup  # device id -> VPN address while its session is established
        self._metrics = metrics
        self._server: asyncio.base_events.Server | None = None
        self._open: dict[str, set[asyncio.Task]] = {}  # device -> its running tunnels

    @property
    def open_tunnels(self) -> int:
        return sum(len(tasks) for tasks in self._open.values())

    def _context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=self.settings.ca)
        ctx.load_cert_chain(self.settings.cert, self.settings.key)
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        return ctx

    async def start(self) -> None:
        host, port = self.settings.listen
        self._server = await asyncio.start_server(
            self._serve, host, port, ssl=self._context(), limit=MAX_HEAD
        )
        log.info("tunnel service on %s:%d, device ports %s", host, port,
                 ",".join(map(str, self.settings.device_ports)))  # fmt: skip

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for device in list(self._open):
            self.end_device(device)

    def end_device(self, device: str) -> int:
        """End every tunnel to a device (its session ended here); return how many."""
        tasks = self._open.pop(device, set())
        for task in tasks:
            task.cancel()
        return len(tasks)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        device = None
        try:
            device, upstream = await self._accept(reader, writer)
            self._open.setdefault(device, set()).add(task)
            self._metrics.tunnels_opened.inc()
            started = time.monotonic()
            sent, received = await pipe(reader, writer, *upstream)
            log.info("tunnel to %s closed after %.1f s (%d bytes in, %d out)",
                     device, time.monotonic() - started, sent, received)  # fmt: skip
        except Refused as exc:
            self._metrics.tunnels_refused.labels(str(exc.status)).inc()
            log.warning("tunnel refused (%d): %s", exc.status, exc.reason)
            with contextlib.suppress(OSError):
                writer.write(f"HTTP/1.1 {exc.status} {exc.reason}\r\n\r\n".encode())
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError, ssl.SSLError):
            pass  # the peer went away; nothing to tell it
        finally:
            if device is not None:
                self._open.get(device, set()).discard(task)
            writer.close()

    async def _accept(self, reader, writer):
        peer = writer.get_extra_info("peercert") or {}
        orgs = {v for rdn in peer.get("subject", ()) for k, v in rdn if k == "organizationName"}
        if orgs != {TUNNEL_CLIENT_ORGANIZATION}:
            raise Refused(403, "not the tunnel client")
        try:
            head = await asyncio.wait_for(
                reader.readuntil(b"\r\n\r\n"), self.settings.head_timeout_s
            )
        except (asyncio.LimitOverrunError, ValueError):
            raise Refused(431, "request head too large") from None
        except TimeoutError:
            raise Refused(408, "no request in time") from None
        device, port = parse_connect(head)
        if port not in self.settings.device_ports:
            raise Refused(403, f"port {port} is not open to devices")
        address = self._lookup(device)
        if address is None:
            raise Refused(404, f"device {device!r} is not connected to this gateway")
        if self.open_tunnels >= self.settings.max_tunnels:
            raise Refused(503, "too many open tunnels")
        try:
            upstream = await asyncio.wait_for(
                open_marked(address, port, self.settings.mark),
                self.settings.connect_timeout_s,
            )
        except TimeoutError:
            raise Refused(504, f"device {device!r} did not answer on port {port}") from None
        except OSError as exc:
            raise Refused(502, f"device {device!r} refused port {port} ({exc.strerror})") from None
        writer.write(b"HTTP/1.1 200 Connection Established\r\n\r\n")
        await writer.drain()
        return device, upstream
