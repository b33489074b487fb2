"""A stand-in for the customer's device agent on :48484, for the lab and the tests.

It answers a balena-supervisor-like API (`/ping`, `/v1/device`, `/v1/restart`) and restarts
nothing, over HTTP/1.1 keep-alive as real agents do. For the tests it also has `/v1/echo`
(what arrived: method, path, headers, body size), `/v1/blob?bytes=N` (N bytes, for
throughput), `/v1/stall` (accepts and never answers), `/v1/drip` (a line a second, as a long
poll) and `/debug/requests` (the last request lines it saw, so a test can assert that nothing
reached the device). Standard library only: it runs on the lab's devices without a virtual
environment.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

__all__ = ["main", "make_handler"]


def make_handler(
    identity: dict[str, str], api_key: str | None = None
) -> type[BaseHTTPRequestHandler]:
    """A request handler answering for the device described by identity.

    With api_key, every request must carry `Authorization: Bearer <api_key>` (as balena's
    supervisor API asks), else 401.
    """
    started = time.time()
    seen: deque[str] = deque(maxlen=200)
    stalled = threading.Event()  # never set: /v1/stall waits on it until the client gives up

    class Handler(BaseHTTPRequestHandler):
        server_version = "iotistic-device-agent/1"
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            # Headers and body go out as two writes: without this the body waits for the
            # peer's delayed ACK of the headers (about 40 ms per keep-alive answer).
            self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def _body(self) -> bytes:
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def _route(self) -> str:
            seen.append(f"{self.command} {self.path}")
            route = self.path.split("?", 1)[0]
            authorised = self.headers.get("Authorization") == f"Bearer {api_key}"
            if api_key is not None and route != "/debug/requests" and not authorised:
                return "/unauthorized"
            return route

        def _echo(self) -> None:
            body = self._body()
            headers = dict(self.headers.items())
            self._send(
                200,
                {"method": self.command, "path": self.path, "headers": headers,
                 "body_bytes": len(body)},
            )  # fmt: skip

        def _send(self, status: int, body: object) -> None:
            data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
            ctype = "text/plain" if isinstance(body, str) else "application/json"
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            route = self._route()
            if route == "/unauthorized":
                self._send(401, {"error": "a valid agent API key is required"})
            elif route == "/ping":
                self._send(200, "OK")
            elif route == "/v1/echo":
                self._echo()
            elif route == "/debug/requests":
                self._send(200, {"requests": list(seen)})
            elif route == "/v1/stall":
                stalled.wait(120)
                self.close_connection = True
            elif route == "/v1/blob":
                self._blob()
            elif route == "/v1/drip":
                self._drip()
            elif route == "/v1/device":
                self._send(
                    200,
                    {
                        **identity,
                        "status": "Idle",
                        "uptime_s": int(time.time() - started),
                        "peer": self.client_address[0],
                    },
                )
            else:
                self._send(404, {"error": f"no route {self.path}"})

        def do_POST(self) -> None:
            route = self._route()
            if route == "/unauthorized":
                self._body()
                self._send(401, {"error": "a valid agent API key is required"})
                return
            if route == "/v1/echo":
                self._echo()
                return
            self._body()  # read it all, so the next request on this connection parses
            if route == "/v1/restart":
                # A stand-in: acknowledge like the real agent, restart nothing.
                self._send(200, {"Data": "OK", "Error": None})
            else:
                self._send(404, {"error": f"no route {self.path}"})

        do_PUT = do_PATCH = do_DELETE = do_POST

        def _drip(self) -> None:
            """A long poll: one line a second for 30 s (what a streaming log endpoint does)."""
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(30 * 6))
            self.end_headers()
            for i in range(30):
                self.wfile.write(f"{i:05d}\n".encode())
                self.wfile.flush()
                time.sleep(1)

        def _blob(self) -> None:
            query = dict(
                q.split("=", 1) for q in self.path.partition("?")[2].split("&") if "=" in q
            )
            if not query.get("bytes", "0").isdigit():
                self._send(400, {"error": "bytes must be a whole number"})
                return
            size = min(int(query.get("bytes", "0")), 1 << 31)
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(size))
            self.end_headers()
            chunk = b"\0" * 65536
            while size > 0:
                self.wfile.write(chunk[: min(size, len(chunk))])
                size -= len(chunk)

        def log_message(self, format: str, *args: object) -> None:
            pass  # journald gets nothing per request; the gateway side logs access

    return Handler


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bind", default="0.0.0.0")  # noqa: S104 - reached only via the tunnel
    parser.add_argument("--port", type=int, default=48484)
    parser.add_argument("--device-id", default=os.environ.get("DEVICE_ID", socket.gethostname()))
    parser.add_argument("--customer-id", default=os.environ.get("CUSTOMER_ID", ""))
    parser.add_argument("--api-key-file", help="require this API key (file of one line)")
    args = parser.parse_args(argv)
    identity = {"device_id": args.device_id, "customer_id": args.customer_id}
    api_key = None
    if args.api_key_file:
        with open(args.api_key_file, encoding="ascii") as fh:
            api_key = fh.read().strip()
    server = ThreadingHTTPServer((args.bind, args.port), make_handler(identity, api_key))
    print(f"listening on {args.bind}:{args.port}", flush=True)  # bound: requests may come
    server.serve_forever()


if __name__ == "__main__":
    main()
