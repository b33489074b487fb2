"""The API's TCP tunnel, as open-balena-vpn's proxy on 3128 does: HTTP CONNECT to a device port.

    CONNECT <device>.<customer>:<port> HTTP/1.1
    Proxy-Authorization: Bearer <token>        (or Basic with the token as the password)

The token must be live, cover that device of that customer and allow that port; the device
must be online. The tunnel goes through the gateway holding the device (the same dialer as the
HTTP proxy), is audited when it ends, and is cut within a recheck period once its token is
revoked or expires. Another customer's device answers like an unknown one (404).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from .. import validation
from ..errors import InvalidValue, NotFound, RegistryUnavailable
from ..registry import ApiToken, RequestRecord
from ..streams import pipe
from .dialer import DialError, TunnelDialer

__all__ = ["ConnectProxy", "parse_request"]

log = logging.getLogger("iotistic_vpn.api.connect")

MAX_HEAD = 8192


class Refused(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


@dataclass(frozen=True)
class ConnectRequest:
    device: str
    customer: str
    port: int
    credential: str | None  # the token the client presented


def parse_request(head: bytes) -> ConnectRequest:
    """The CONNECT request's target and credential, else Refused (400/407)."""
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes any byte
        raise Refused(400, "unreadable request") from None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or parts[0] != "CONNECT" or not parts[2].startswith("HTTP/1."):
        raise Refused(400, "expected CONNECT device.customer:port HTTP/1.1")
    host, sep, port = parts[1].rpartition(":")
    device, dot, customer = host.partition(".")
    try:
        validation.device_id(device)
        validation.customer_id(customer)
    except InvalidValue as exc:
        raise Refused(400, str(exc)) from None
    if not sep or not dot or not port.isdigit() or not 0 < int(port) < 65536:
        raise Refused(400, "the target is device.customer:port")
    credential = None
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "proxy-authorization":
            credential = _credential(value.strip())
    return ConnectRequest(device, customer, int(port), credential)


def _credential(value: str) -> str | None:
    scheme, _, rest = value.partition(" ")
    if scheme.lower() == "bearer":
        return rest.strip() or None
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(rest.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        return decoded.partition(":")[2] or None  # user:token, the user is not used
    return None


class ConnectProxy:
    """The CONNECT listener of one API process."""

    def __init__(
        self,
        dialer: TunnelDialer,
        authenticate: Callable[..., Awaitable[ApiToken | None]],  # (value, *, fresh=False)
        locate: Callable[[str], Awaitable[tuple[str, str, str]]],  # device -> customer, gw, addr
        audit: Callable[[RequestRecord], None],
        *,
        recheck_s: float,
    ) -> None:
        self._dialer = dialer
        self._authenticate = authenticate
        self._locate = locate
        self._audit = audit
        self._recheck_s = recheck_s
        self._context = dialer.context()
        self._server: asyncio.base_events.Server | None = None
        self.open = 0

    async def start(self, listen: str) -> None:
        if listen.startswith("unix:"):
            self._server = await asyncio.start_unix_server(self._serve, listen[5:], limit=MAX_HEAD)
        else:
            host, _, port = listen.rpartition(":")
            self._server = await asyncio.start_server(
                self._serve, host.strip("[]"), int(port), limit=MAX_HEAD
            )
        log.info("CONNECT proxy on %s", listen)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        started = time.perf_counter()
        peer = writer.get_extra_info("peername")
        source = peer[0] if isinstance(peer, tuple) else None
        token: ApiToken | None = None
        request: ConnectRequest | None = None
        status, sent, received = 0, 0, 0
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            except (asyncio.LimitOverrunError, ValueError):
                raise Refused(431, "request head too large") from None
            except TimeoutError:
                raise Refused(408, "no request in time") from None
            request = parse_request(head)
            token = await self._authenticate(request.credential)
            if token is None:
                raise Refused(407, "a valid API token is required")
            gateway, address = await self._target(token, request)
            try:
                upstream = await self._dialer.open(
                    gateway, request.device, request.port, address=address, context=self._context
                )
            except DialError as exc:
                raise Refused(exc.answer, exc.reason) from None
            writer.write(b"HTTP/1.1 200 Connection Established\r\n\r\n")
            await writer.drain()
            status = 200
            self.open += 1
            watcher = asyncio.create_task(self._watch(request.credential, writer, upstream[1]))
            try:
                sent, received = await pipe(reader, writer, *upstream)
            finally:
                self.open -= 1
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
        except Refused as exc:
            status = exc.status
            extra = b'Proxy-Authenticate: Bearer realm="iotistic-vpn"\r\n' if status == 407 else b""
            with contextlib.suppress(OSError):
                writer.write(f"HTTP/1.1 {status} {exc.reason}\r\n".encode() + extra + b"\r\n")
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            status = status or 499  # the client went away
        finally:
            writer.close()
            if request is not None:
                self._audit(RequestRecord(
                    at=datetime.now(UTC), token_id=token.id if token else None,
                    token_name=token.name if token else None,
                    customer_id=token.customer_id if token else None,
                    device_id=request.device if status != 404 else None, method="CONNECT",
                    path=f"{request.device}.{request.customer}:{request.port}", status=status,
                    bytes_in=sent, bytes_out=received,
                    duration_ms=(time.perf_counter() - started) * 1000, source=source,
                ))  # fmt: skip

    async def _target(self, token: ApiToken, request: ConnectRequest) -> tuple[str, str]:
        try:
            customer, gateway, address = await self._locate(request.device)
        except NotFound:
            raise Refused(404, "no such device") from None
        except RegistryUnavailable:
            raise Refused(503, "registry unavailable") from None
        # Another customer's device, or one outside the token's list: exactly as unknown.
        if customer != request.customer or not token.may_reach(customer, request.device):
            raise Refused(404, "no such device")
        if request.port not in token.ports:
            raise Refused(403, f"this token may not reach port {request.port}")
        if not gateway:
            raise Refused(503, "the device is offline")
        return gateway, address

    async def _watch(self, credential: str | None, *writers: asyncio.StreamWriter) -> None:
        """End the tunnel once its token is revoked or expired."""
        while True:
            await asyncio.sleep(self._recheck_s)
            try:
                live = await self._authenticate(credential, fresh=True)
            except RegistryUnavailable:
                continue
            if live is None:
                log.warning("token revoked or expired: ending its CONNECT tunnel")
                for w in writers:
                    w.close()
                return
