"""The cloud API as its own process beside a namespaced gateway, reached over a unix socket.

The API runs in the gateway harness's `api` namespace (so it dials the gateway's tunnel service
over the private bridge, as it would across a VPC) and listens on a unix socket, the one path
from the test's namespace into it: real HTTP, nothing in the host's network.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import httpx
from psycopg.conninfo import make_conninfo

from iotistic_vpn.registry import Registry
from tests.support.gateway_harness import AGENT_ENV, Gateway, wait_until
from tests.support.netns import Process

__all__ = ["Api", "gateway_with_api", "start_api"]


class Api:
    def __init__(
        self, gw: Gateway, dsn: str, socket: Path, process: Process, port: int | None = None
    ) -> None:
        self.gw, self.dsn, self.socket, self.process = gw, dsn, socket, process
        self.port = port  # set: the API is on 127.0.0.1:port inside the api namespace, no socket

    def client(self, token: str | None = None, **kwargs) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(
            transport=httpx.HTTPTransport(uds=str(self.socket)),
            base_url="http://api",
            headers=headers,
            timeout=kwargs.pop("timeout", 15),
            **kwargs,
        )

    def token(self, name: str, customer: str | None, **scope) -> str:
        with Registry(self.dsn) as reg:
            _, issued = reg.ensure_token(name, customer_id=customer, actor="test", **scope)
        return issued.value

    def log(self) -> str:
        return self.process.text()

    def connect(self, target: str, auth: str | None, *, timeout: float = 10):
        """A CONNECT through the API's TCP tunnel: (status line, socket once established)."""
        import socket

        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(str(self.gw.work / "connect.sock"))
        head = f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n"
        if auth:
            head += f"Proxy-Authorization: {auth}\r\n"
        sock.sendall((head + "\r\n").encode())
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
        status = answer.split(b"\r\n", 1)[0].decode()
        if " 200 " not in status + " ":
            sock.close()
            return status, None
        return status, sock


def start_api(
    gw: Gateway,
    pg,
    *,
    read_timeout: float = 5.0,
    max_body: int = 1 << 20,
    port: int | None = None,
    connect_listen: str | None = None,
    device_idle_s: float = 30.0,
    env: dict[str, str] | None = None,
) -> Api:
    """The API process for this gateway, up when /healthz answers.

    port: listen on 127.0.0.1:port inside the api namespace instead of the unix socket, for
    clients run in that namespace (Api.client() needs the socket). connect_listen: the CONNECT
    proxy's IOTISTIC_API_CONNECT_PROXY_LISTEN (default unix:<work>/connect.sock). env: more
    IOTISTIC_API_* settings (enrollment's).
    """
    dsn = make_conninfo(host=str(pg.socket_dir), port=pg.port, user="postgres",
                        password=pg.password, dbname=gw.dbname)  # fmt: skip
    socket = gw.work / "api.sock"
    fleet = gw.fleet
    env = {
        **AGENT_ENV,
        "IOTISTIC_API_REGISTRY_DSN": dsn,
        "IOTISTIC_API_TUNNEL_CERT": fleet.api.cert_path,
        "IOTISTIC_API_TUNNEL_KEY": fleet.api.key_path,
        "IOTISTIC_API_TUNNEL_CA": str(fleet.chain),
        # The harness's gateway answers on its bridge address; its certificate names gw-1.
        "IOTISTIC_API_GATEWAY_ADDRESS": str(gw.ns.address),
        "IOTISTIC_API_READ_TIMEOUT_S": str(read_timeout),
        "IOTISTIC_API_CONNECT_TIMEOUT_S": "3",
        "IOTISTIC_API_MAX_BODY_BYTES": str(max_body),
        "IOTISTIC_API_DEVICE_IDLE_S": str(device_idle_s),
        "IOTISTIC_API_AUDIT_SPOOL": str(gw.work / "api-audit.db"),
        "IOTISTIC_API_CONNECT_PROXY_LISTEN": connect_listen or f"unix:{gw.work / 'connect.sock'}",
        **(env or {}),
    }
    listen = (
        ["--uds", str(socket)] if port is None else ["--host", "127.0.0.1", "--port", str(port)]
    )
    # IOTISTIC_API_PROFILE=FILE: the API runs under cProfile, its stats written to FILE at exit.
    profile = AGENT_ENV.get("IOTISTIC_API_PROFILE")
    profiled = ["-m", "cProfile", "-o", profile] if profile else []
    process = gw.api_ns.start(
        [AGENT_ENV.get("IOTISTIC_API_PYTHON", _python()), *profiled, "-m", "iotistic_vpn.api",
         *listen, "--metrics-port", "0"],
        gw.work / "api.log", env,
    )  # fmt: skip
    api = Api(gw, dsn, socket, process, port)

    def healthy() -> bool:
        if port is not None:
            url = f"http://127.0.0.1:{port}/healthz"
            return (
                gw.api_ns.run(["curl", "-sf", "--max-time", "2", url], check=False).returncode == 0
            )
        if not socket.exists():
            return False
        with contextlib.suppress(httpx.HTTPError), api.client() as c:
            return c.get("/healthz").status_code == 200
        return False

    wait_until(healthy, 20, "the API to answer /healthz")
    return api


def _python() -> str:
    import sys

    return sys.executable


def gateway_with_api(start_gateway, pg_server, **api_options):
    """A gateway with dev-a (acme) and dev-g (globex) online and the API beside it."""
    from tests.support.gateway_harness import UP, eventually

    gw = start_gateway()
    devices = {name: gw.device(name, i % 2) for i, name in enumerate(("dev-a", "dev-g"))}
    for dev in devices.values():
        dev.client.wait_for(UP)
    for name in devices:
        eventually(lambda n=name: gw.db(n) == (True, "gw-1", "active"), f"{name} online")
    return gw, start_api(gw, pg_server, read_timeout=3, **api_options), devices
