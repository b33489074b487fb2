"""A minimal asyncio HTTP/1.1 responder for the agent's /healthz and /metrics.

Two read-only GET endpoints do not justify a web framework on the gateway: this reads one
request, answers it and closes the connection, with bounded header size and read time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

__all__ = ["Handler", "Response", "serve_http"]

log = logging.getLogger(__name__)

Response = tuple[int, str, bytes]  # status, content type, body
Handler = Callable[[], Awaitable[Response]]
_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 400: "Bad Request",
            500: "Internal Server Error", 503: "Service Unavailable"}  # fmt: skip
_MAX_HEADER = 8192


async def _respond(writer: asyncio.StreamWriter, status: int, ctype: str, body: bytes) -> None:
    head = (
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
        f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
        "Cache-Control: no-store\r\nConnection: close\r\n\r\n"
    )
    writer.write(head.encode() + body)
    await writer.drain()


def _handler(routes: dict[str, Handler]):
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
            if len(head) > _MAX_HEADER:
                raise ValueError("header too large")
            method, target, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
            path = target.split("?", 1)[0]
            if path not in routes:
                await _respond(writer, 404, "text/plain", f"no route {path}\n".encode())
            elif method not in ("GET", "HEAD"):
                await _respond(writer, 405, "text/plain", b"GET only\n")
            else:
                status, ctype, body = await routes[path]()
                await _respond(writer, status, ctype, b"" if method == "HEAD" else body)
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

    return handle


async def serve_http(host: str, port: int, routes: dict[str, Handler]) -> asyncio.Server:
    """Start serving routes on host:port; the caller closes the returned server."""
    return await asyncio.start_server(_handler(routes), host, port, limit=_MAX_HEADER)
