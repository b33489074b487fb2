"""The agent's renewal endpoint: devices renew their certificates through their tunnels.

It listens on the gateway's first tunnel address (conventions.RENEW_PORT; the role's nftables
lets only tun interfaces reach it) and knows each caller by the tunnel alone: the request's
source address must be the VPN address of an established session this agent admitted (OpenVPN
drops packets a client sends from any other address), and that session's device, customer and
certificate serial are what goes to the API. An address with no session is refused (403).

    GET  /v1/renewal   the caller's session: {"device", "customer", "serial"} (the client
                       checks that its tunnel came up with its new certificate)
    POST /v1/renewal   body: the CSR (PEM), at most max_body_bytes; the API's answer
                       (certificate, chain, serial, not_after) or its refusal, as it came

The API is called with the gateway's renewal client certificate (clientAuth plus
conventions.RENEWAL_CLIENT_EKU, made for the gateway's own key), the one credential its
POST /v1/renewals takes; the CA stays in the API.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import socket
import ssl
import urllib.parse
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from .. import conventions
from .http import Request, Response, serve_http

__all__ = ["RenewalService", "RenewalSettings", "SessionFacts", "default_listen"]

log = logging.getLogger("iotistic_vpn.gateway")
_PEM_BEGIN = b"-----BEGIN CERTIFICATE REQUEST-----"
_PEM_END = b"-----END CERTIFICATE REQUEST-----"
_JSON = "application/json"
# Linux: bind an address the host does not have yet (the tun comes up after the agent starts).
IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)


def default_listen() -> tuple[str, int]:
    """The gateways' first tunnel address (instance 0's, on every gateway) and RENEW_PORT."""
    return conventions.gateway_instances(1)[0].address, conventions.RENEW_PORT


@dataclass(frozen=True)
class RenewalSettings:
    api_url: str  # https://HOST[:PORT]: the API's own HTTPS listener (client certificates)
    cert: str  # the gateway's renewal client certificate
    key: str  # its key: the gateway's own
    ca: str | None = None  # what the API's server certificate is checked with (None: system's)
    listen: tuple[str, int] = default_listen()
    timeout_s: float = 30.0  # the API's answer
    read_timeout_s: float = 10.0  # a device's whole request
    max_body_bytes: int = 16 * 1024  # the API's own bound on a CSR
    max_in_flight: int = 8  # renewals forwarded at once; more answer 503


@dataclass(frozen=True)
class SessionFacts:
    """What the agent knows of the session at an address."""

    device: str
    customer: str
    serial: str | None  # None: adopted after a restart, learnt at its next renegotiation


class RenewalService:
    """The tunnel-side listener; `session_at(address)` is the agent's session lookup."""

    def __init__(
        self, settings: RenewalSettings, session_at: Callable[[str], SessionFacts | None]
    ) -> None:
        self.settings, self.session_at = settings, session_at
        parts = urllib.parse.urlsplit(settings.api_url)
        self._host, self._port = parts.hostname or "", parts.port or 443
        self._path = parts.path.rstrip("/") + "/v1/renewals"
        self._context = ssl.create_default_context(cafile=settings.ca)
        self._context.load_cert_chain(settings.cert, settings.key)  # a bad file fails at start
        self._pool = ThreadPoolExecutor(settings.max_in_flight, "renewal")
        self._slots = asyncio.Semaphore(settings.max_in_flight)
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        host, port = self.settings.listen
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
        sock.bind((host, port))
        sock.listen(64)
        sock.setblocking(False)
        routes = {("GET", conventions.RENEW_PATH): self._whoami,
                  ("POST", conventions.RENEW_PATH): self._renew}  # fmt: skip
        self._server = await serve_http(
            None, None, {}, requests=routes, max_body=self.settings.max_body_bytes,
            read_timeout_s=self.settings.read_timeout_s, sock=sock,
        )  # fmt: skip

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _session(self, request: Request) -> SessionFacts | Response:
        facts = self.session_at(request.peer)
        if facts is None:
            log.warning("renewal from %s refused: no session of this gateway has that address",
                        request.peer)  # fmt: skip
            return _problem(403, f"no session at {request.peer}")
        if facts.serial is None:
            return _problem(503, "this session's certificate is not known yet; try again later")
        return facts

    async def _whoami(self, request: Request) -> Response:
        facts = self._session(request)
        if not isinstance(facts, SessionFacts):
            return facts
        return 200, _JSON, _json(vars(facts))

    async def _renew(self, request: Request) -> Response:
        facts = self._session(request)
        if not isinstance(facts, SessionFacts):
            return facts
        csr = request.body.strip()
        if not (csr.startswith(_PEM_BEGIN) and csr.endswith(_PEM_END) and csr.isascii()):
            log.warning("renewal for %s from %s refused: the body is not a PEM CSR",
                        facts.device, request.peer)  # fmt: skip
            return _problem(400, "the body must be one CSR in PEM")
        if self._slots.locked():
            return _problem(503, "too many renewals at once; try again shortly")
        body = {"device": facts.device, "customer": facts.customer, "serial": facts.serial,
                "csr": csr.decode()}  # fmt: skip
        async with self._slots:
            loop = asyncio.get_running_loop()
            status, answer = await loop.run_in_executor(self._pool, self._forward, body)
        outcome = answer.get("serial") if status == 200 else answer.get("detail")
        log.info("renewal for %s of %s (serial %s) from %s: %d %s", facts.device,
                 facts.customer, facts.serial, request.peer, status, outcome)  # fmt: skip
        return status, _JSON, _json(answer)

    def _forward(self, body: dict) -> tuple[int, dict]:
        """POST /v1/renewals to the API (a worker thread): (status, JSON answer)."""
        conn = http.client.HTTPSConnection(
            self._host, self._port, context=self._context, timeout=self.settings.timeout_s
        )
        try:
            conn.request("POST", self._path, json.dumps(body).encode(),
                         {"Content-Type": _JSON, "Accept": _JSON})  # fmt: skip
            answer = conn.getresponse()
            data = answer.read(1 << 20)
            try:
                parsed = json.loads(data)
            except ValueError:
                parsed = None
            if not isinstance(parsed, dict):
                return 502, {"detail": f"the API answered {answer.status} without JSON"}
            return answer.status, parsed
        except TimeoutError:
            return 504, {"detail": "the API did not answer in time"}
        except (OSError, http.client.HTTPException) as exc:
            log.warning("renewal: cannot reach the API at %s: %s", self.settings.api_url, exc)
            return 502, {"detail": "the API cannot be reached"}
        finally:
            conn.close()


def _json(value: dict) -> bytes:
    return json.dumps(value).encode() + b"\n"


def _problem(status: int, detail: str) -> Response:
    return status, _JSON, _json({"detail": detail})
