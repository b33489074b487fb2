"""A stand-in for the customer's device agent on :48484, for the lab and the tests.

It answers a balena-supervisor-like API (`/ping`, `/v1/device`, `/v1/restart`) and restarts
nothing. Standard library only: it runs on the lab's devices without a virtual environment.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

__all__ = ["main", "make_handler"]


def make_handler(identity: dict[str, str]) -> type[BaseHTTPRequestHandler]:
    """A request handler answering for the device described by identity."""
    started = time.time()

    class Handler(BaseHTTPRequestHandler):
        server_version = "iotistic-device-agent/1"

        def _send(self, status: int, body: object) -> None:
            data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
            ctype = "text/plain" if isinstance(body, str) else "application/json"
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path == "/ping":
                self._send(200, "OK")
            elif self.path == "/v1/device":
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
            if self.path == "/v1/restart":
                # A stand-in: acknowledge like the real agent, restart nothing.
                self._send(200, {"Data": "OK", "Error": None})
            else:
                self._send(404, {"error": f"no route {self.path}"})

        def log_message(self, format: str, *args: object) -> None:
            pass  # journald gets nothing per request; the gateway side logs access

    return Handler


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bind", default="0.0.0.0")  # noqa: S104 - reached only via the tunnel
    parser.add_argument("--port", type=int, default=48484)
    parser.add_argument("--device-id", default=os.environ.get("DEVICE_ID", socket.gethostname()))
    parser.add_argument("--customer-id", default=os.environ.get("CUSTOMER_ID", ""))
    args = parser.parse_args(argv)
    identity = {"device_id": args.device_id, "customer_id": args.customer_id}
    ThreadingHTTPServer((args.bind, args.port), make_handler(identity)).serve_forever()


if __name__ == "__main__":
    main()
