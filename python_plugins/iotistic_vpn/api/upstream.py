"""The device leg of a request: HTTP/1.1 to a device's agent over a gateway tunnel, pooled.

httpcore's connection pool speaks HTTP and keeps idle connections per device; its network
backend here opens each new connection as a tunnel through the gateway that holds the device
right now (asked of the registry at that moment), so a device that moved is followed on the
next connection. An origin's host is the device id, never an address.
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

__all__ = ["DeviceUnreachable", "TunnelBackend", "TunnelStream"]


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
