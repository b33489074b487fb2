"""Renewal through the tunnel on the API (logic in iotistic_vpn.renewal).

    POST /v1/renewals    a gateway, for a device connected through it, renews its certificate

Only on the API's own HTTPS listener with IOTISTIC_API_TLS_CLIENT_CA set: the caller is the
gateway its TLS client certificate names (a renewal client certificate, see
conventions.RENEWAL_CLIENT_EKU), read from the connection by ClientCertH11Protocol. The plain
listener (and a load balancer terminating TLS) carries no client certificate: 401.
"""

from __future__ import annotations

import ssl

from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from uvicorn.protocols.http.h11_impl import H11Protocol

from .. import renewal
from ..errors import RegistryUnavailable
from .app import ApiDep, Problem
from .enroll import MAX_CSR_CHARS, InvalidProblem

__all__ = ["ClientCertH11Protocol", "install_renewal"]

router = APIRouter()


class ClientCertH11Protocol(H11Protocol):
    """uvicorn's h11 protocol that hands the TLS peer's certificate (verified by the listener's
    context) to the app as the ASGI TLS extension's `client_cert_chain` (the leaf only)."""

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        tls = {"client_cert_chain": [ssl.DER_cert_to_PEM_cert(der)] if der else []}
        app = self.app

        async def with_peer(scope, receive, send) -> None:
            scope["extensions"] = {**(scope.get("extensions") or {}), "tls": tls}
            await app(scope, receive, send)

        self.app = with_peer


def install_renewal(app: FastAPI) -> None:
    """Mount POST /v1/renewals; it signs with enrollment's PKI (app.state.enrollment)."""
    app.include_router(router)


class RenewalIn(BaseModel):
    device: str = Field(max_length=63, description="the session's device, as the gateway saw it")
    customer: str = Field(max_length=32, description="its customer (the certificate's O)")
    serial: str = Field(max_length=60, description="the session's certificate serial, decimal")
    csr: str = Field(max_length=MAX_CSR_CHARS, description="PEM; its key never leaves the device")


_RESPONSES = {
    401: {"model": Problem}, 403: {"model": Problem}, 404: {"model": Problem},
    409: {"model": Problem}, 422: {"model": InvalidProblem}, 503: {"model": Problem},
}  # fmt: skip


def _peer_certificate(request: Request) -> str | None:
    chain = ((request.scope.get("extensions") or {}).get("tls") or {}).get("client_cert_chain")
    return chain[0] if chain else None


@router.post("/v1/renewals", response_model=renewal.Renewed, responses=_RESPONSES)
async def renew(body: RenewalIn, request: Request, api: ApiDep) -> JSONResponse:
    state = request.app.state.enrollment
    if state.pki is None:
        raise HTTPException(503, "renewal is off on this API (no enrollment PKI configured)")
    req = renewal.RenewalRequest(body.device, body.customer, body.serial, body.csr)
    cert = _peer_certificate(request)
    source = request.client.host if request.client else None
    try:
        done = await api.registry.run(lambda reg: renewal.handle(reg, state.pki, cert, req, source))
    except renewal.RenewalRefused as exc:
        headers = {"Retry-After": "2"} if exc.status == 503 else None
        raise HTTPException(exc.status, str(exc), headers) from None
    except RegistryUnavailable:
        raise HTTPException(503, "registry unavailable, try again shortly") from None
    request.state.device = req.device
    return JSONResponse(done.answer())
