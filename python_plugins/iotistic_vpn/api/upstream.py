"""The device leg of a request: HTTP/1.1 to a device's agent over a gateway tunnel, pooled.

httpcore speaks HTTP/1.1 on each connection; DevicePool keeps idle connections per device, and
TunnelBackend opens each new one as a tunnel through the gateway that holds the device right
now (asked of the registry at that moment), so a device that moved is followed on the next
connection. An origin's host is the device id, never an address.
"""

from __future__ import annotations

import asyncio
import select
import socket
import ssl
from collections.abc import Awaitable, Callable

import httpcore

from ..streams import CHUNK
from .dialer import DialError, TunnelDialer

__all__ = ["DevicePool", "DeviceUnreachable", "TunnelBackend", "TunnelStream"]


class DeviceUnreachable(httpcore.ConnectError):
    """No tunnel to the device: status is what the API answers (503 offline, 502 refused...)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


class TunnelStream(httpcore.AsyncNetworkStream):
    """An asyncio stream pair as httpcore's network stream."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader, self._writer = reader, writer

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        try:
            return await asyncio.wait_for(self._reader.read(min(max_bytes, CHUNK)), timeout)
        except TimeoutError:
            raise httpcore.ReadTimeout("the device did not answer in time") from None
        except (OSError, ssl.SSLError) as exc:
            raise httpcore.ReadError(str(exc)) from None

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        try:
            self._writer.write(buffer)
            await asyncio.wait_for(self._writer.drain(), timeout)
        except TimeoutError:
            raise httpcore.WriteTimeout("the device did not take the request in time") from None
        except (OSError, ssl.SSLError) as exc:
            raise httpcore.WriteError(str(exc)) from None

    async def aclose(self) -> None:
        self._writer.close()

    async def start_tls(self, *args, **kwargs) -> httpcore.AsyncNetworkStream:
        raise httpcore.UnsupportedProtocol("devices are reached over plain HTTP inside the VPN")

    def get_extra_info(self, info: str):
        if info == "is_readable":
            # httpcore asks before reusing an idle connection: anything to read on an idle
            # HTTP connection means the peer closed it (or broke the protocol).
            sock = self._writer.get_extra_info("socket")
            if self._reader.at_eof() or sock is None:
                return True
            return bool(select.select([sock], [], [], 0)[0])
        return self._writer.get_extra_info(info)


# device id -> (gateway name, address to dial it at), or DeviceUnreachable
Locate = Callable[[str], Awaitable[tuple[str, str]]]


class TunnelBackend(httpcore.AsyncNetworkBackend):
    """Connects to host=device through the gateway that `locate` names."""

    def __init__(self, dialer: TunnelDialer, locate: Locate) -> None:
        self._dialer = dialer
        self._locate = locate
        self._context = dialer.context()  # one context: its session cache serves every dial

    async def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        device = host.decode() if isinstance(host, bytes) else host
        gateway, address = await self._locate(device)
        try:
            reader, writer = await self._dialer.open(
                gateway, device, port, address=address, context=self._context
            )
        except DialError as exc:
            raise DeviceUnreachable(exc.answer, exc.reason) from None
        sock = writer.get_extra_info("socket")
        if sock is not None:
            # Small requests and answers go out at once, not after Nagle's delay.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return TunnelStream(reader, writer)

    async def connect_unix_socket(self, *args, **kwargs):
        raise httpcore.UnsupportedProtocol("devices are reached over tunnels only")

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class _Returned:
    """A response body that gives its connection back to the pool once read and closed."""

    def __init__(self, inner, on_close) -> None:
        self._inner, self._on_close = inner, on_close

    async def __aiter__(self):
        async for chunk in self._inner:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            await self._on_close()


class DevicePool:
    """Keep-alive HTTP/1.1 connections to devices, idle ones kept per device.

    httpcore speaks HTTP on each connection; the pooling is this small class, because
    httpcore 1.0's pool scans every connection on each request start and end, which made 64
    concurrent clients cost several times the CPU of one (measured in bench/bench_api.py;
    encode/httpcore#1035). A request takes a device's newest idle connection, or opens a tunnel.
    """

    def __init__(
        self, backend: TunnelBackend, *, idle_per_device: int = 64, keepalive_s: float = 30.0
    ) -> None:
        self._backend = backend
        self._idle: dict[str, list[httpcore.AsyncHTTP11Connection]] = {}
        self._idle_per_device = idle_per_device
        self._keepalive_s = keepalive_s

    async def _checkout(self, device: str) -> httpcore.AsyncHTTP11Connection | None:
        idle = self._idle.get(device)
        while idle:
            conn = idle.pop()
            # has_expired() is also true for an idle connection the peer closed (it reads).
            if conn.is_idle() and not conn.has_expired():
                return conn
            await conn.aclose()
        return None

    async def _checkin(self, device: str, conn: httpcore.AsyncHTTP11Connection) -> None:
        idle = self._idle.setdefault(device, [])
        if conn.is_idle() and len(idle) < self._idle_per_device:
            idle.append(conn)
        else:
            await conn.aclose()

    async def handle_async_request(self, request: httpcore.Request) -> httpcore.Response:
        device = request.url.host.decode()
        conn = await self._checkout(device)
        if conn is None:
            timeouts = request.extensions.get("timeout", {})
            stream = await self._backend.connect_tcp(
                device, request.url.port, timeout=timeouts.get("connect")
            )
            conn = httpcore.AsyncHTTP11Connection(
                request.url.origin, stream, keepalive_expiry=self._keepalive_s
            )
        try:
            response = await conn.handle_async_request(request)
        except BaseException:
            await conn.aclose()
            raise
        response.stream = _Returned(response.stream, lambda: self._checkin(device, conn))
        return response

    async def aclose(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                await conn.aclose()
        self._idle.clear()
