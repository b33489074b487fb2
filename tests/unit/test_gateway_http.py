"""The agent's small HTTP responder, over a real loopback socket."""

from __future__ import annotations

import asyncio
import time

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


def _serving(ask, sent, routes, **options) -> list[bytes]:
    """Each request through ask(port, request) to a fresh server of routes."""

    async def run():
        server = await serve_http("127.0.0.1", 0, routes, **options)
        port = server.sockets[0].getsockname()[1]
        try:
            return [await ask(port, r) for r in sent]
        finally:
            server.close()
            await server.wait_closed()

    return asyncio.run(run())


def _exchange(*requests: bytes) -> list[bytes]:
    return _serving(_ask, requests, {"/healthz": _ok, "/boom": _boom})


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


async def _echo(request):
    return (
        200,
        "text/plain",
        b"%s %s %s %d"
        % (request.method.encode(), request.peer.encode(), request.body, len(request.body)),
    )


def _posting(*requests: bytes, read_timeout_s: float = 2.0, slow: float = 0.0) -> list[bytes]:
    async def ask(port: int, request: bytes) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        head, _, body = request.partition(b"\r\n\r\n")
        try:
            writer.write(head + b"\r\n\r\n")
            # A slow sender: its first bytes, one every `slow` seconds, then it waits (reading
            # on while writing would only meet the closed socket); else all, then end of input.
            for chunk in [body[i : i + 1] for i in range(3)] if slow else [body]:
                await asyncio.sleep(slow)
                writer.write(chunk)
                await writer.drain()
            if not slow:
                writer.write_eof()
        except OSError:
            pass  # the server gave up on us
        data = await asyncio.wait_for(reader.read(), timeout=10)
        writer.close()
        return data

    return _serving(ask, requests, {"/healthz": _ok}, requests={("POST", "/echo"): _echo},
                    max_body=16, read_timeout_s=read_timeout_s)  # fmt: skip


def test_a_body_is_bounded_by_its_declared_length_and_the_read_time():
    ok, big, missing, chunked, twice, get, post_health = _posting(
        b"POST /echo HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
        b"POST /echo HTTP/1.1\r\nContent-Length: 17\r\n\r\n" + b"x" * 17,
        b"POST /echo HTTP/1.1\r\n\r\nhello",
        b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        b"GET /echo HTTP/1.1\r\n\r\n",
        b"POST /healthz HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
    )
    assert ok.startswith(b"HTTP/1.1 200 OK\r\n") and ok.endswith(b"POST 127.0.0.1 hello 5")
    assert big.startswith(b"HTTP/1.1 413 Content Too Large\r\n")
    assert big.endswith(b"body of 17 bytes: at most 16\n")
    assert missing.startswith(b"HTTP/1.1 411 Length Required\r\n")
    assert chunked.startswith(b"HTTP/1.1 411 Length Required\r\n")
    assert twice.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert get.startswith(b"HTTP/1.1 405 Method Not Allowed\r\n")
    assert post_health.startswith(b"HTTP/1.1 405 Method Not Allowed\r\n")


def test_a_slow_sender_is_cut_off_at_the_read_time():
    started = time.monotonic()
    (slow,) = _posting(b"POST /echo HTTP/1.1\r\nContent-Length: 10\r\n\r\n0123456789",
                       read_timeout_s=0.5, slow=0.2)  # fmt: skip
    assert slow.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert time.monotonic() - started < 2.5
    # A body shorter than declared, then the sender closes: a bad request, not a hang.
    (short,) = _posting(b"POST /echo HTTP/1.1\r\nContent-Length: 10\r\n\r\n0123")
    assert short.startswith(b"HTTP/1.1 400 Bad Request\r\n")
