"""/v1/devices/{device}/proxy/{path}: a customer's request forwarded to the device's agent.

Served as plain ASGI in front of FastAPI's router (ProxyFastPath): this path is what the
product is for and has a few hundred microseconds in all (bench/bench_api.py), and FastAPI's
dependency injection, request objects and StreamingResponse's task group cost more than that
on their own. Its checks are these, in this order, the same for the dashboard (`forward`):

  405 a method the proxy does not carry; 401 no live token (503: registry away); 404 not one of
  the token's devices (another customer's answers exactly the same); 403 a method the token may
  not use; 400 a path or query that must not be forwarded (iotistic_vpn.api.proxy); 503 the
  device is offline; 413 a body over the limit, 431 headers over theirs; then the device's own
  answer, streamed, or 502 / 503 / 504 when there is none (iotistic_vpn.api.device_http).

The OpenAPI schema documents the path (openapi_operation), FastAPI serving everything else.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

from .. import conventions
from ..errors import RegistryUnavailable
from ..registry import ApiToken
from .device_http import DeviceError
from .proxy import (
    MAX_REQUEST_HEAD,
    BadPath,
    device_target,
    head_size,
    request_headers,
    response_headers,
)

if TYPE_CHECKING:
    from .app import Api

__all__ = [
    "PROXY_METHODS", "PROXY_ROUTE", "ProxyFastPath", "StreamWatch", "bearer", "forward",
    "openapi_operation", "problem",
]  # fmt: skip

log = logging.getLogger("iotistic_vpn.api")

PROXY_ROUTE = "/v1/devices/{device}/proxy/{path:path}"
PROXY_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
_ALLOW = ", ".join(PROXY_METHODS).encode()
_PREFIX = "/v1/devices/"

Send = Callable[[dict[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]


class _Route:
    """What AuditAndCount reads a request's route template from (FastAPI sets its APIRoute)."""

    path = PROXY_ROUTE


_ROUTE = _Route()


def bearer(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The token of an `Authorization: Bearer` header, if there is one."""
    for name, value in headers:
        if name.lower() == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if scheme.lower() == "bearer" and token.strip() else None
    return None


async def problem(send: Send, status: int, detail: str, headers=()) -> None:
    """An error answer as the rest of the API gives it: {"detail": ...} as JSON."""
    body = json.dumps({"detail": detail}, ensure_ascii=False, separators=(",", ":")).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", b"%d" % len(body)), *headers,
    ]})  # fmt: skip
    await send({"type": "http.response.body", "body": body})


def _split(scope: dict[str, Any]) -> tuple[str, bytes] | None:
    """(device, the raw path after /proxy/) of a proxy request, else None."""
    path: str = scope["path"]
    if not path.startswith(_PREFIX):
        return None
    device, sep, rest = path[len(_PREFIX) :].partition("/")
    if not (device and sep and rest.startswith("proxy/")):
        return None
    raw: bytes = scope.get("raw_path") or path.encode()
    parts = raw.split(b"/", 5)  # b"", b"v1", b"devices", DEVICE, b"proxy", TAIL
    return device, parts[5] if len(parts) == 6 and parts[4] == b"proxy" else b""


class ProxyFastPath:
    """ASGI middleware: proxy requests served by `forward`, everything else passed on."""

    def __init__(self, app, api: Api) -> None:
        self.app, self.api = app, api

    async def __call__(self, scope, receive, send) -> None:
        split = _split(scope) if scope["type"] == "http" else None
        if split is None:
            await self.app(scope, receive, send)
            return
        scope["route"] = _ROUTE
        if scope["method"] not in PROXY_METHODS:
            await problem(send, 405, "Method Not Allowed", [(b"allow", _ALLOW)])
            return
        try:
            token = await self.api.authenticate(bearer(scope["headers"]))
        except RegistryUnavailable:
            await problem(send, 503, "registry unavailable, try again shortly")
            return
        if token is None:
            await problem(send, 401, "a valid API token is required",
                          [(b"www-authenticate", b"Bearer")])  # fmt: skip
            return
        scope["state"]["token"] = token
        await forward(self.api, token, split[0], scope, receive, send, raw_tail=split[1])


async def forward(
    api: Api, token: ApiToken, device: str, scope: dict[str, Any], receive: Receive, send: Send,
    *, raw_tail: bytes,
) -> None:  # fmt: skip
    """Forward one request to a device's agent on behalf of token, the answer through send."""
    settings = api.settings
    state = scope.setdefault("state", {})
    method: str = scope["method"]
    try:
        found, agent_key = await api.device_scope(token, device)
    except RegistryUnavailable:
        await problem(send, 503, "registry unavailable, try again shortly")
        return
    if not found:
        # The same answer for a device of another customer as for one that does not exist.
        await problem(send, 404, f"device {device!r} not found")
        return
    state["device"] = device
    if not token.may(method, conventions.DEVICE_AGENT_PORT):
        await problem(send, 403, f"this token may not {method} on the device's agent")
        return
    try:
        target = device_target(raw_tail, scope.get("query_string", b""))
    except BadPath as exc:
        await problem(send, 400, str(exc))
        return
    if not found[0].device.connected:
        await problem(send, 503, f"device {device!r} is offline")
        return
    if head_size(scope["headers"]) > MAX_REQUEST_HEAD:
        await problem(send, 431, f"request headers over {MAX_REQUEST_HEAD} bytes")
        return
    headers = request_headers(scope["headers"])
    length = next((v for n, v in scope["headers"] if n.lower() == b"content-length"), None)
    if length is not None and (not length.isdigit() or int(length) > settings.max_body_bytes):
        await problem(send, 413, f"request body over {settings.max_body_bytes} bytes")
        return
    body = await _body(receive, state, length, settings.max_body_bytes)
    if body is None:
        await problem(send, 413, f"request body over {settings.max_body_bytes} bytes")
        return
    headers.append((b"Host", f"{device}:{conventions.DEVICE_AGENT_PORT}".encode()))
    if agent_key is not None:
        # The device's own API key, never the customer's token (which request_headers dropped).
        headers.append((b"Authorization", f"Bearer {agent_key}".encode()))
    if length is not None:
        headers.append((b"Content-Length", length))
    elif body:
        headers.append((b"Content-Length", b"%d" % len(body)))
    head = b"".join([
        method.encode(), b" ", target.encode(), b" HTTP/1.1\r\n",
        *(b"%s: %s\r\n" % pair for pair in headers), b"\r\n",
    ])  # fmt: skip
    try:
        conn, answer = await api.devices.request(
            device, method.encode(), head, body, read_timeout=settings.read_timeout_s
        )
    except DeviceError as exc:
        await problem(send, exc.status, f"device {device!r}: {exc.reason}")
        return
    try:
        returned = [(n.lower(), v) for n, v in response_headers(answer.headers)]
        await send({"type": "http.response.start", "status": answer.status, "headers": returned})
        if answer.complete:
            # The whole answer arrived with its head (the small-GET case): one message.
            await send({"type": "http.response.body", "body": b"".join(
                [c async for c in answer.chunks(settings.read_timeout_s)])})  # fmt: skip
        else:
            await _stream(api, bearer(scope["headers"]), conn, answer, receive, send)
    finally:
        conn.release(answer)
        api.devices.checkin(conn)


async def _body(
    receive: Receive, state: dict, length: bytes | None, limit: int
) -> bytes | AsyncIterator[bytes] | None:
    """The client's body: bytes when it came in one piece, else a stream of its pieces (a
    declared length, checked before, streams through as it arrives); None: over the limit."""
    message = await receive()
    first = message.get("body", b"")
    state["bytes_in"] = len(first)
    if not message.get("more_body"):
        return first
    if length is not None:
        return _rest(receive, state, first)
    # No declared length (chunked): read whole, bounded, so an oversized one reaches nothing.
    chunks = [first]
    while message.get("more_body"):
        message = await receive()
        chunks.append(message.get("body", b""))
        state["bytes_in"] += len(chunks[-1])
        if state["bytes_in"] > limit:
            return None
    return b"".join(chunks)


async def _rest(receive: Receive, state: dict, first: bytes) -> AsyncIterator[bytes]:
    yield first
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise DeviceError(400, "the client went away mid-request")
        chunk = message.get("body", b"")
        state["bytes_in"] += len(chunk)
        if chunk:
            yield chunk
        if not message.get("more_body"):
            return


async def _stream(api: Api, value: str | None, conn, answer, receive, send) -> None:
    """An answer that is still arriving: passed on piece by piece until it ends, the client
    leaves or the token stops being valid (StreamWatch cuts the tunnel: the read ends)."""
    gone = asyncio.ensure_future(_disconnected(receive, conn.cut))
    if value is not None:
        api.streams.add(value, conn.cut)
    api.metrics.open_streams.inc()
    try:
        async for chunk in answer.chunks(api.settings.read_timeout_s):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    except DeviceError as exc:
        # Returning without the answer's end makes the server drop the connection, so the client
        # sees a cut answer as cut (a chunked one would otherwise look complete).
        if not conn.was_cut:
            log.warning("answer from device %s ended early: %s", conn.device, exc.reason)
    finally:
        api.metrics.open_streams.dec()
        if value is not None:
            api.streams.discard(value, conn.cut)
        gone.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await gone


async def _disconnected(receive: Receive, cut: Callable[[], None]) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    cut()


class StreamWatch:
    """Open answers by the token they were asked with: one task re-checks those tokens every
    recheck_s and cuts the answers of any revoked or expired (not one task per answer)."""

    def __init__(self, authenticate, recheck_s: float) -> None:
        self._authenticate, self._recheck_s = authenticate, recheck_s
        self._open: dict[str, set[Callable[[], None]]] = {}

    def add(self, value: str, cut: Callable[[], None]) -> None:
        self._open.setdefault(value, set()).add(cut)

    def discard(self, value: str, cut: Callable[[], None]) -> None:
        cuts = self._open.get(value)
        if cuts is not None:
            cuts.discard(cut)
            if not cuts:
                del self._open[value]

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._recheck_s)
            for value in list(self._open):
                try:
                    live = await self._authenticate(value, fresh=True)
                except RegistryUnavailable:
                    continue  # a database outage is not a revocation
                if live is None:
                    cuts = self._open.pop(value, set())
                    log.warning("token revoked or expired: ending %d open answer(s)", len(cuts))
                    for cut in cuts:
                        cut()


def openapi_operation(method: str) -> dict[str, Any]:
    """The proxy path's entry in the OpenAPI schema (FastAPI does not route it, so it does not
    describe it): any body in, the device's answer out, and the API's own refusals."""
    problem_ref = {"content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/Problem"}}}}  # fmt: skip
    refusals = {
        "400": "A path or query that must not be forwarded", "401": "No live token",
        "403": "A method the token may not use", "404": "Not one of the token's devices",
        "405": "A method the proxy does not carry", "413": "A body over the limit",
        "431": "Request headers over the limit",
        "502": "The device's answer was broken", "503": "The device is offline",
        "504": "The device did not answer in time",
    }  # fmt: skip
    return {
        "summary": f"{method} a path of the device's agent",
        "operationId": f"proxy_{method.lower()}",
        "parameters": [
            {"name": "device", "in": "path", "required": True, "schema": {"type": "string"}},
            {"name": "path", "in": "path", "required": True, "schema": {"type": "string"}},
        ],
        "responses": {
            "200": {"description": "The device agent's answer, as it gave it"},
            **{code: {"description": text, **problem_ref} for code, text in refusals.items()},
        },
    }
