"""The agent's renewal endpoint before anything reaches the API: who may ask, and what."""

from __future__ import annotations

import asyncio
import json

import pytest

from iotistic_vpn import conventions, pki
from iotistic_vpn.gateway.renewal import RenewalService, RenewalSettings, SessionFacts

PATH = conventions.RENEW_PATH.encode()
CSR = b"-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n"


@pytest.fixture(scope="module")
def settings(tmp_path_factory) -> RenewalSettings:
    root = tmp_path_factory.mktemp("renewal")
    ca = pki.ensure_ca(pki.CaFiles.at(root / "ca")).ca
    made = pki.ensure_gateway_cert(ca, "gw-1", root / "client", purpose="renewal-client")
    # Nothing listens on port 9: a request that passes every check here gets 502.
    return RenewalSettings("https://127.0.0.1:9", made.cert_path, made.key_path,
                           listen=("127.0.0.1", 0), read_timeout_s=1.0, max_body_bytes=2048,
                           timeout_s=2.0)  # fmt: skip


SESSIONS = {"127.0.0.1": SessionFacts("dev-a", "acme", "1234")}


def _ask(settings: RenewalSettings, sessions: dict, *requests: bytes) -> list[tuple[int, dict]]:
    async def run():
        service = RenewalService(settings, sessions.get)
        await service.start()
        port = service._server.sockets[0].getsockname()[1]
        out = []
        try:
            for request in requests:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(request)
                await writer.drain()
                data = await asyncio.wait_for(reader.read(), timeout=10)
                writer.close()
                head, _, body = data.partition(b"\r\n\r\n")
                json_body = b"application/json" in head
                out.append((int(head.split()[1]), json.loads(body) if json_body else {}))
        finally:
            await service.close()
        return out

    return asyncio.run(run())


def _post(body: bytes) -> bytes:
    return b"POST %s HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s" % (PATH, len(body), body)


def test_the_caller_is_its_session_or_nobody(settings):
    (whoami,) = _ask(settings, SESSIONS, b"GET %s HTTP/1.1\r\n\r\n" % PATH)
    assert whoami == (200, {"device": "dev-a", "customer": "acme", "serial": "1234"})
    nobody = _ask(settings, {}, b"GET %s HTTP/1.1\r\n\r\n" % PATH, _post(CSR))
    assert nobody == [(403, {"detail": "no session at 127.0.0.1"})] * 2
    adopted = {"127.0.0.1": SessionFacts("dev-a", "acme", None)}
    ((status, body),) = _ask(settings, adopted, _post(CSR))
    assert status == 503 and "not known yet" in body["detail"]


@pytest.mark.parametrize(
    ("body", "status", "detail"),
    [
        (b"", 400, "the body must be one CSR in PEM"),
        (b"hello", 400, "the body must be one CSR in PEM"),
        (CSR.replace(b"REQUEST", b"REQUES"), 400, "the body must be one CSR in PEM"),
        (b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n", 400, "PEM"),
        (CSR.replace(b"MIIB", "MIIB\u00e9".encode()), 400, "PEM"),
        (CSR + b"x" * 2048, 413, None),
        (CSR, 502, "the API cannot be reached"),  # well-formed: forwarded, and nobody answers
    ],
)
def test_hostile_bodies_are_refused_before_the_api(settings, body, status, detail):
    ((got, answer),) = _ask(settings, SESSIONS, _post(body))
    assert got == status
    if detail:
        assert detail in answer["detail"]


def test_a_body_that_never_comes_is_cut_off(settings):
    request = b"POST %s HTTP/1.1\r\nContent-Length: 500\r\n\r\n-----BEGIN" % PATH
    ((status, _),) = _ask(settings, SESSIONS, request)
    assert status == 408
