"""The device leg of a request: HTTP/1.1 to a device's agent over a gateway tunnel, pooled.

A DeviceConnection is one tunnel (a mutual-TLS CONNECT through the gateway that holds the
device, iotistic_vpn.api.dialer) speaking HTTP/1.1 to the agent, its answers parsed by
httptools (llhttp, the parser uvicorn serves the client side with). DevicePool keeps idle
connections per device and opens a new one through whichever gateway the registry names at that
moment, so a device that moved is followed on the next connection.

Written for the few hundred microseconds the whole proxy path has (bench/bench_api.py): a
request's head and a small body go out in one write, an answer that arrived whole is handed on
whole, and nothing is spawned per request. httpcore cost some 160 us of CPU a request here.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable

import httptools

from ..streams import CHUNK
from .dialer import DialError, TunnelDialer

__all__ = ["Answer", "DeviceConnection", "DeviceError", "DevicePool", "Locate"]

# Methods a proxy may send again on a fresh connection when a pooled one turns out to have been
# closed by the peer before any answer (RFC 9110 9.2.2: idempotent).
_IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE"})


class DeviceError(Exception):
    """No (complete) answer from the device; status is what the API answers its client:
    503 offline, 403 a closed port, 504 no answer in time, 502 anything else."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


class _Stale(Exception):
    """A pooled connection the peer had closed: nothing of the answer arrived."""


class _Parse:
    """httptools callbacks: the answer's head, then its body pieces."""

    __slots__ = ("begun", "body", "done", "head", "headers", "keep_alive", "parser")

    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: deque[bytes] = deque()
        self.begun = 0
        self.head = self.done = self.keep_alive = False
        self.parser = httptools.HttpResponseParser(self)

    def on_message_begin(self) -> None:
        self.begun += 1

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.head = True
        # Asked here: once the message is complete, llhttp no longer says.
        self.keep_alive = self.parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.done = True


class Answer:
    """A device's answer: status and headers at once, the body as it comes (`chunks`)."""

    def __init__(self, conn: DeviceConnection, parse: _Parse, status: int, until_close: bool):
        self.status = status
        self.headers = parse.headers
        self._conn, self._parse, self._until_close = conn, parse, until_close

    @property
    def complete(self) -> bool:
        """The whole body has arrived already (it may still be in `chunks`)."""
        return self._parse.done

    async def chunks(self, read_timeout: float) -> AsyncIterator[bytes]:
        """The body, piece by piece; DeviceError when it stops short or stalls."""
        parse, conn = self._parse, self._conn
        while True:
            while parse.body:
                yield parse.body.popleft()
            if parse.done:
                return
            if not await conn.read_more(read_timeout):
                if conn.was_cut:
                    raise DeviceError(502, "the answer was cut")
                if self._until_close:
                    parse.done = True  # a body without a length ends with the connection
                    return
                raise DeviceError(502, "the device closed the connection mid-answer")

    def finished(self) -> bool:
        """Whether the connection may carry another request (the answer read to its end)."""
        return self._parse.done and not self._until_close and self._parse.begun == 1


class DeviceConnection:
    """One HTTP/1.1 connection to a device's agent, one request at a time."""

    def __init__(self, device: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.device = device
        self._reader, self._writer = reader, writer
        self._parser: httptools.HttpResponseParser | None = None
        self.reusable = False  # set when an answer ended cleanly and the peer keeps it open
        self.used = False
        self._keep_alive = False
        self.was_cut = False
        self.idle_since = 0.0  # monotonic time it went back to the pool

    @property
    def alive(self) -> bool:
        return not (self._writer.is_closing() or self._reader.at_eof())

    def close(self) -> None:
        self.reusable = False
        self._writer.close()

    def cut(self) -> None:
        """End the connection on purpose (token revoked, client gone): a pending read ends."""
        self.was_cut = True
        self.close()

    async def _write(self, data: bytes, timeout: float) -> None:
        self._writer.write(data)
        if self._writer.transport.get_write_buffer_size():
            try:
                async with asyncio.timeout(timeout):
                    await self._writer.drain()
            except TimeoutError:
                raise DeviceError(504, "the device did not take the request in time") from None

    async def read_more(self, timeout: float) -> bool:
        """Feed the parser what arrives next; False at the end of the stream."""
        try:
            async with asyncio.timeout(timeout):
                data = await self._reader.read(CHUNK)
        except TimeoutError:
            raise DeviceError(504, "the device did not answer in time") from None
        except (OSError, ssl.SSLError) as exc:
            raise DeviceError(502, f"the tunnel to the device broke: {exc}") from None
        if not data:
            return False
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            msg = "the device switched protocols, which the proxy does not carry"
            raise DeviceError(502, msg) from None
        except httptools.HttpParserError as exc:
            raise DeviceError(502, f"the device's answer is not valid HTTP/1.1: {exc}") from None
        return True

    async def request(
        self,
        method: bytes,
        head: bytes,
        body: bytes | AsyncIterator[bytes],
        *,
        read_timeout: float,
    ) -> Answer:
        """Send one request (its head already encoded, ending in the blank line) and read the
        answer's head. A body given as bytes goes out in the same write as the head."""
        reused, self.used, self.reusable = self.used, True, False
        parse = _Parse()
        self._parser = parse.parser
        try:
            if isinstance(body, bytes):
                await self._write(head + body, read_timeout)
            else:
                await self._write(head, read_timeout)
                async for chunk in body:
                    await self._write(chunk, read_timeout)
            while not parse.head:
                if not await self.read_more(read_timeout):
                    if reused and parse.begun == 0:
                        raise _Stale()
                    raise DeviceError(502, "the device closed the connection without answering")
                if parse.head and 100 <= self._parser.get_status_code() < 200:
                    # An interim answer (100 Continue): the real one follows on the same parser.
                    parse.headers.clear()
                    parse.head = parse.done = False
                    parse.begun = 0
        except (OSError, ssl.SSLError) as exc:
            self.close()
            if reused and parse.begun == 0:
                raise _Stale() from None
            raise DeviceError(502, f"the tunnel to the device broke: {exc}") from None
        except BaseException:
            self.close()
            raise
        status = self._parser.get_status_code()
        if method == b"HEAD" or status in (204, 304):
            parse.done = True  # no body, whatever its headers say (RFC 9112 6.3)
            parse.body.clear()
        framing = (b"content-length", b"transfer-encoding")
        framed = any(n.lower() in framing for n, _ in parse.headers)
        self._keep_alive = parse.keep_alive
        return Answer(self, parse, status, until_close=not framed and not parse.done)

    def release(self, answer: Answer) -> None:
        """The answer is done with: the connection may be pooled if it ended cleanly."""
        self.reusable = answer.finished() and self._keep_alive and self.alive
        if not self.reusable:
            self.close()


# device id -> (gateway name, address to dial it at), or DeviceError
Locate = Callable[[str], Awaitable[tuple[str, str]]]


class DevicePool:
    """Keep-alive connections to devices' agents, idle ones kept per device (newest first).

    An idle connection holds one of the gateway's tunnels (its max_tunnels): `sweep` closes
    those idle for longer than idle_s, so a device asked once does not keep one for ever.
    """

    def __init__(
        self, dialer: TunnelDialer, locate: Locate, *, idle_per_device: int = 64,
        idle_s: float = 30.0, port: int,
    ) -> None:  # fmt: skip
        self._dialer, self._locate, self._port = dialer, locate, port
        self._context = dialer.context()  # one context: its session cache serves every dial
        self._idle: dict[str, list[DeviceConnection]] = {}
        self._idle_per_device = idle_per_device
        self.idle_s = idle_s

    async def _open(self, device: str) -> DeviceConnection:
        gateway, address = await self._locate(device)
        try:
            reader, writer = await self._dialer.open(
                gateway, device, self._port, address=address, context=self._context
            )
        except DialError as exc:
            raise DeviceError(exc.answer, exc.reason) from None
        sock = writer.get_extra_info("socket")
        if sock is not None:
            # Small requests and answers go out at once, not after Nagle's delay.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return DeviceConnection(device, reader, writer)

    def _checkout(self, device: str) -> DeviceConnection | None:
        idle = self._idle.get(device)
        while idle:
            conn = idle.pop()
            if conn.alive:
                return conn
            conn.close()
        return None

    def checkin(self, conn: DeviceConnection) -> None:
        idle = self._idle.setdefault(conn.device, [])
        if conn.reusable and conn.alive and len(idle) < self._idle_per_device:
            conn.idle_since = time.monotonic()
            idle.append(conn)
        else:
            conn.close()

    def sweep(self) -> int:
        """Close the connections idle for longer than idle_s (or closed by the peer)."""
        oldest = time.monotonic() - self.idle_s
        closed = 0
        for device, idle in list(self._idle.items()):
            keep = [c for c in idle if c.idle_since >= oldest and c.alive]
            for conn in idle:
                if conn not in keep:
                    conn.close()
                    closed += 1
            if keep:
                self._idle[device] = keep
            else:
                del self._idle[device]
        return closed

    async def run_sweeper(self) -> None:
        while True:
            await asyncio.sleep(self.idle_s / 2)
            self.sweep()

    async def request(
        self, device: str, method: bytes, head: bytes, body: bytes | AsyncIterator[bytes], *,
        read_timeout: float,
    ) -> tuple[DeviceConnection, Answer]:  # fmt: skip
        """Send a request to a device's agent: the connection it went on and the answer's head.
        Give the connection back with `checkin` once the answer is read (or close it)."""
        conn = self._checkout(device)
        if conn is not None:
            try:
                return conn, await conn.request(method, head, body, read_timeout=read_timeout)
            except _Stale:
                if not (isinstance(body, bytes) and method in _IDEMPOTENT):
                    raise DeviceError(
                        502, "the device closed the connection without answering"
                    ) from None
                # Sent again once, on a new tunnel: the device never saw the first one.
        conn = await self._open(device)
        try:
            return conn, await conn.request(method, head, body, read_timeout=read_timeout)
        except _Stale:
            raise DeviceError(502, "the device closed the connection without answering") from None

    def close(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()
