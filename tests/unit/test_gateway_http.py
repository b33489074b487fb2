"""The agent's small HTTP responder, over a real loopback socket."""

from __future__ import annotations

import asyncio

from iotistic_vpn.gateway.http import serve_http


async def _ok():
    return 200, "application/json", b'{"ok": true}\n'


async def _boom():
    raise RuntimeError("handler bug")


async def _ask(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), timeout=5)
    writer.close()
    return data


def _exchange(*requests: bytes) -> list[bytes]:
    async def run():
        server = await serve_http("127.0.0.1", 0, {"/healthz": _ok, "/boom": _boom})
        port = server.sockets[0].getsockname()[1]
        try:
            return [await _ask(port, r) for r in requests]
        finally:
            server.close()
            await server.wait_closed()

    return asyncio.run(run())


def test_routes_methods_and_bad_requests():
    ok, query, head, missing, post, boom, garbage = _exchange(
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /healthz?verbose=1 HTTP/1.0\r\n\r\n",
        b"HEAD /healthz HTTP/1.1\r\n\r\n",
        b"GET /nope HTTP/1.1\r\n\r\n",
        b"POST /healthz HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
        b"GET /boom HTTP/1.1\r\n\r\n",
        b"\r\n\r\n",
    )
    assert ok.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Content-Type: application/json\r\nContent-Length: 13\r\n" in ok
    assert ok.endswith(b'\r\n\r\n{"ok": true}\n')
    assert query.startswith(b"HTTP/1.1 200 OK\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and head.endswith(b"\r\n\r\n")
    assert missing.startswith(b"HTTP/1.1 404 Not Found\r\n") and missing.endswith(
        b"no route /nope\n"
    )
    assert post.startswith(b"HTTP/1.1 405 Method Not Allowed\r\n")
    assert boom.startswith(b"HTTP/1.1 500 Internal Server Error\r\n")
    assert garbage.startswith(b"HTTP/1.1 400 Bad Request\r\n")
