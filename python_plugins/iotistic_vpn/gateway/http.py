"""A minimal asyncio HTTP/1.1 responder: the agent's /healthz and /metrics, and the renewal
endpoint devices reach through their tunnels (gateway/renewal.py).

A few endpoints do not justify a web framework on the gateway: this reads one request, answers
it and closes the connection, with bounded header size, body size and read time. A request with
a body (POST) must say its Content-Length (no chunked bodies), at most `max_body` bytes, and the
whole request must arrive within `read_timeout_s`: a slow sender holds a connection that long
at most.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

__all__ = ["Handler", "Request", "RequestHandler", "Response", "serve_http"]

log = logging.getLogger(__name__)

Response = tuple[int, str, bytes]  # status, content type, body
Handler = Callable[[], Awaitable[Response]]
_REASONS = {200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found",
            405: "Method Not Allowed", 408: "Request Timeout", 409: "Conflict",
            411: "Length Required", 413: "Content Too Large", 422: "Unprocessable Content",
            429: "Too Many Requests", 500: "Internal Server Error", 502: "Bad Gateway",
            503: "Service Unavailable", 504: "Gateway Timeout"}  # fmt: skip
_MAX_HEADER = 8192
HEAD_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Request:
    """What a handler of (method, path) gets: who asked (the peer's address) and the body."""

    method: str
    path: str
    peer: str
    body: bytes = b""


RequestHandler = Callable[[Request], Awaitable[Response]]


class _Refused(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


async def _respond(writer: asyncio.StreamWriter, status: int, ctype: str, body: bytes) -> None:
    head = (
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
        f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
        "Cache-Control: no-store\r\nConnection: close\r\n\r\n"
    )
    writer.write(head.encode() + body)
    await writer.drain()


def _content_length(head: bytes, max_body: int) -> int:
    """The declared body length of a request head, within max_body, else _Refused."""
    length = None
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"transfer-encoding":
            raise _Refused(411, "a body needs Content-Length (no Transfer-Encoding)")
        if name == b"content-length":
            text = value.strip()
            if not text.isdigit() or (length is not None and int(text) != length):
                raise _Refused(400, "bad Content-Length")
            length = int(text)
    if length is None:
        raise _Refused(411, "a body needs Content-Length")
    if length > max_body:
        raise _Refused(413, f"body of {length} bytes: at most {max_body}")
    return length


def _handler(routes: dict[str, Handler], requests: dict[tuple[str, str], RequestHandler],
             max_body: int, read_timeout_s: float):  # fmt: skip
    async def read_request(reader: asyncio.StreamReader, peer: str) -> tuple[str, str, Request]:
        deadline = asyncio.get_running_loop().time() + read_timeout_s
        head = await asyncio.wait_for(
            reader.readuntil(b"\r\n\r\n"), timeout=min(HEAD_TIMEOUT_S, read_timeout_s)
        )
        if len(head) > _MAX_HEADER:
            raise ValueError("header too large")
        method, target, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
        path = target.split("?", 1)[0]
        body = b""
        if method == "POST" and (method, path) in requests:
            length = _content_length(head, max_body)
            left = deadline - asyncio.get_running_loop().time()
            try:
                body = await asyncio.wait_for(reader.readexactly(length), timeout=max(left, 0))
            except TimeoutError:
                raise _Refused(408, "the request body did not arrive in time") from None
        return method, path, Request(method, path, peer, body)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = (writer.get_extra_info("peername") or ("?",))[0]
        try:
            method, path, request = await read_request(reader, peer)
            if (method, path) in requests:
                status, ctype, body = await requests[method, path](request)
            elif path in routes and method in ("GET", "HEAD"):
                status, ctype, body = await routes[path]()
                body = b"" if method == "HEAD" else body
            elif path in routes or path in request_paths:
                status, ctype, body = 405, "text/plain", b"method not allowed\n"
            else:
                status, ctype, body = 404, "text/plain", f"no route {path}\n".encode()
            await _respond(writer, status, ctype, body)
        except _Refused as exc:
            with contextlib.suppress(OSError):
                await _respond(writer, exc.status, "text/plain", f"{exc}\n".encode())
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError):
            with contextlib.suppress(OSError):
                await _respond(writer, 400, "text/plain", b"bad request\n")
        except OSError:
            pass  # the client went away
        except Exception:
            log.exception("HTTP handler failed")
            with contextlib.suppress(OSError):
                await _respond(writer, 500, "text/plain", b"internal error\n")
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    request_paths = {p for _, p in requests}
    return handle


async def serve_http(
    host: str | None, port: int | None, routes: dict[str, Handler], *,
    requests: dict[tuple[str, str], RequestHandler] | None = None, max_body: int = 0,
    read_timeout_s: float = HEAD_TIMEOUT_S, sock: socket.socket | None = None,
) -> asyncio.Server:  # fmt: skip
    """Start serving on host:port (or a bound socket): `routes` answer GET and HEAD without
    looking at the request, `requests` get it, keyed by (method, path). The caller closes the
    returned server."""
    handle = _handler(routes, requests or {}, max_body, read_timeout_s)
    if sock is not None:
        return await asyncio.start_server(handle, sock=sock, limit=_MAX_HEADER)
    return await asyncio.start_server(handle, host, port, limit=_MAX_HEADER)
