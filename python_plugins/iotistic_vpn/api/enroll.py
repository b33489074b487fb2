"""Enrollment and provisioning tokens on the API (logic in iotistic_vpn.enrollment).

    POST   /v1/enroll                            a device, with a provisioning token, enrolls
    POST   /v1/devices/{device}/bundle           the same, the key made here: one .ovpn file
    GET    /v1/provisioning-tokens               list (operators: all; a customer's admin: its own)
    POST   /v1/provisioning-tokens               create (the token shown once)
    DELETE /v1/provisioning-tokens/{token_id}    revoke

A customer's token may manage its own customer's provisioning tokens when it could provision
anyway: not read-only and not limited to some devices (a provisioning token mints devices of
the whole customer). Operators manage every customer's.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import re
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from .. import bundle, conventions, enrollment
from ..errors import IotisticVpnError, RegistryUnavailable
from ..registry import ApiToken, ProvisioningToken, Registry
from .app import ApiDep, CustomerId, IsoTime, Problem, TokenDep, _bearer, _registry
from .ratelimit import RateLimiter
from .settings import ApiSettings

__all__ = ["Enrollment", "install_enrollment"]

log = logging.getLogger("iotistic_vpn.api.enroll")
router = APIRouter()
_TOKEN_ID_RE = re.compile(r"ivpp_([0-9a-f]{16})_")
MAX_CSR_CHARS = 16 * 1024


class Enrollment:
    """The enrollment's PKI (None: enrollment off) and its rate limits."""

    def __init__(self, settings: ApiSettings) -> None:
        self.pki: enrollment.EnrollmentPki | None = None
        given = (settings.enroll_pki_dir, settings.enroll_tls_crypt_server_key,
                 settings.enroll_remotes)  # fmt: skip
        if all(given):
            # A bad file stops the API at start, naming it; nothing given leaves enrollment off.
            self.pki = enrollment.EnrollmentPki.load(
                settings.enroll_pki_dir, settings.enroll_tls_crypt_server_key,
                settings.enroll_remotes, settings.enroll_ca_passphrase_file,
            )  # fmt: skip
            self.pki = dataclasses.replace(
                self.pki, validity=dt.timedelta(days=settings.enroll_validity_days),
                renew_within=dt.timedelta(days=settings.enroll_renew_within_days),
            )  # fmt: skip
        elif any(given):
            log.warning(
                "enrollment is off: set IOTISTIC_API_ENROLL_PKI_DIR,"
                " IOTISTIC_API_ENROLL_TLS_CRYPT_SERVER_KEY and IOTISTIC_API_ENROLL_REMOTES"
            )
        self.per_token = RateLimiter(settings.enroll_rate_per_token,
                                     settings.enroll_burst_per_token)  # fmt: skip
        self.per_source = RateLimiter(settings.enroll_rate_per_source,
                                      settings.enroll_burst_per_source)  # fmt: skip

    @property
    def enabled(self) -> bool:
        return self.pki is not None


def install_enrollment(app: FastAPI, settings: ApiSettings) -> None:
    """Mount the enrollment routes; /healthz reads app.state.enrollment.enabled."""
    app.state.enrollment = Enrollment(settings)
    app.include_router(router)


# -- models ------------------------------------------------------------------------------------


class EnrollIn(BaseModel):
    device: str | None = Field(None, max_length=63, description="the device id asked for")
    serial: str | None = Field(None, max_length=60, description="or a hardware serial: sn-<serial>")
    csr: str = Field(max_length=MAX_CSR_CHARS, description="PEM; its key never leaves the device")
    renew: bool = Field(False, description="a new certificate now (a re-key needs it)")


class RemoteOut(BaseModel):
    host: str
    port: int
    proto: str


class EnrolledOut(BaseModel):
    device: str
    customer: str
    address: str
    certificate: str
    ca_chain: str
    tls_crypt_v2_key: str
    remotes: list[RemoteOut]
    not_after: str


class ProvisioningTokenOut(BaseModel):
    id: str
    name: str
    customer: str
    expires_at: str
    max_uses: int
    uses: int
    device_pattern: str | None
    created_at: str
    revoked_at: str | None

    @classmethod
    def of(cls, t: ProvisioningToken) -> ProvisioningTokenOut:
        d = t.as_dict()
        return cls(**{**d, "customer": d["customer_id"]})


class IssuedProvisioningTokenOut(ProvisioningTokenOut):
    token: str | None = Field(description="the token itself: shown once, at creation")


class NewProvisioningToken(BaseModel):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,62}$")
    customer: CustomerId | None = Field(None, description="an operator's: required")
    expires_at: IsoTime
    max_uses: int = Field(1, ge=1, le=1_000_000)
    device_pattern: str | None = Field(
        None, pattern=r"^[a-z0-9*?-]{1,63}$", description="a glob of device ids (* and ?)"
    )


# -- enrollment --------------------------------------------------------------------------------


class InvalidProblem(BaseModel):
    """422: the request's shape (FastAPI's list of errors) or a refused CSR or id (text)."""

    detail: str | list[dict]


def _enrollment(request: Request) -> Enrollment:
    return request.app.state.enrollment


_ENROLL_RESPONSES = {
    200: {"model": EnrolledOut, "description": "enrolled again: same address"},
    401: {"model": Problem}, 403: {"model": Problem}, 409: {"model": Problem},
    422: {"model": InvalidProblem}, 429: {"model": Problem},
}  # fmt: skip


@router.post("/v1/enroll", response_model=EnrolledOut, status_code=201,
             responses=_ENROLL_RESPONSES)  # fmt: skip
async def enroll(body: EnrollIn, request: Request, api: ApiDep) -> JSONResponse:
    req = enrollment.EnrollmentRequest(body.device, body.serial, body.csr, body.renew)
    done = await _enrolling(request, api, req, lambda reg, ca, value, source: enrollment.handle(
        reg, ca, value, req, source))  # fmt: skip
    return JSONResponse(done.answer(), status_code=201 if done.created else 200)


class BundleIn(BaseModel):
    renew: bool = Field(
        False, description="a device that has one already: a new key and certificate"
    )


_BUNDLE_RESPONSES = {
    201: {"content": {bundle.MEDIA_TYPE: {"schema": {"type": "string"}}},
          "description": "the .ovpn file, its key inline"},
    200: {"content": {bundle.MEDIA_TYPE: {"schema": {"type": "string"}}},
          "description": "the device had one: a new key (renew)"},
    **{k: v for k, v in _ENROLL_RESPONSES.items() if k != 200},
}  # fmt: skip


@router.post("/v1/devices/{device}/bundle", status_code=201, response_class=Response,
             responses=_BUNDLE_RESPONSES)  # fmt: skip
async def device_bundle(
    device: Annotated[str, Path(max_length=63)], body: BundleIn, request: Request, api: ApiDep
) -> Response:
    """Provision a device on the server (the key made here) and return one inline .ovpn."""
    req = enrollment.EnrollmentRequest(device, None, "", body.renew)
    done, ovpn = await _enrolling(request, api, req, lambda reg, ca, value, source: bundle.bundle(
        reg, ca, value, device, renew=body.renew, source=source))  # fmt: skip
    return Response(ovpn, status_code=201 if done.created else 200, media_type=bundle.MEDIA_TYPE,
                    headers={"Cache-Control": "no-store"})  # fmt: skip


async def _enrolling(request: Request, api, req: enrollment.EnrollmentRequest, work):
    """work(registry, pki, token string, source) in a worker thread, behind the rate limits,
    its refusals as problems."""
    state = _enrollment(request)
    if state.pki is None:
        raise HTTPException(503, "enrollment is off on this API (no enrollment PKI configured)")
    value = _bearer(request)
    source = request.client.host if request.client else None
    match = _TOKEN_ID_RE.match(value or "")
    wait = max(state.per_source.take(f"source:{source}"),
               state.per_token.take(f"token:{match.group(1)}") if match else 0.0)  # fmt: skip
    try:
        if wait:
            await api.registry.run(lambda reg: _audit_limited(reg, match, req, source))
            raise HTTPException(429, f"too many enrollments from {source} or with this token:"
                                f" retry in {wait:.1f} s",
                                {"Retry-After": RateLimiter.retry_after(wait)})  # fmt: skip
        done = await api.registry.run(lambda reg: work(reg, state.pki, value, source))
    except enrollment.EnrollmentRefused as exc:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        raise HTTPException(exc.status, str(exc), headers) from None
    except RegistryUnavailable:
        raise HTTPException(503, "registry unavailable, try again shortly") from None
    except IotisticVpnError as exc:
        raise HTTPException(409, str(exc)) from None
    request.state.device = req.device
    return done


def _audit_limited(reg: Registry, match, req, source: str | None) -> None:
    reg.record_enrollment(
        "enroll.refused", token_id=match.group(1) if match else None, customer_id=None,
        device_id=None, detail={"source": source, "status": 429, "reason": "rate",
                                "asked": enrollment.asked_for(req)},
    )  # fmt: skip


# -- provisioning tokens -----------------------------------------------------------------------


async def _manager(token: TokenDep) -> ApiToken:
    """An operator token, or a customer's token that could provision its devices itself."""
    if token.operator or (not token.read_only and token.devices is None):
        return token
    raise HTTPException(
        403, "this needs an operator token or a customer token that is not read-only and spans"
        " all of its customer's devices",
    )  # fmt: skip


ManagerDep = Annotated[ApiToken, Depends(_manager)]


@router.get("/v1/provisioning-tokens", response_model=list[ProvisioningTokenOut],
            responses={403: {"model": Problem}})  # fmt: skip
async def list_provisioning_tokens(
    api: ApiDep,
    token: ManagerDep,
    customer: Annotated[str | None, Query(pattern=conventions.CUSTOMER_ID_PATTERN)] = None,
    include_revoked: bool = False,
) -> list[ProvisioningTokenOut]:
    if not token.operator:
        customer = token.customer_id  # a customer's admin sees its own only, whatever it asks
    found = await _registry(api, lambda reg: reg.list_provisioning_tokens(
        customer, include_revoked=include_revoked))  # fmt: skip
    return [ProvisioningTokenOut.of(t) for t in found]


_CREATED = {200: {"model": IssuedProvisioningTokenOut}, 403: {"model": Problem},
            404: {"model": Problem}}  # fmt: skip


@router.post("/v1/provisioning-tokens", response_model=IssuedProvisioningTokenOut,
             status_code=201, responses=_CREATED)  # fmt: skip
async def create_provisioning_token(
    body: NewProvisioningToken, api: ApiDep, token: ManagerDep
) -> JSONResponse:
    customer = body.customer
    if not token.operator:
        if customer not in (None, token.customer_id):
            raise HTTPException(403, f"this token manages customer {token.customer_id!r} only,"
                                f" not {customer!r}")  # fmt: skip
        customer = token.customer_id
    elif customer is None:
        raise HTTPException(400, "an operator token must name the customer")
    result, issued = await _registry(api, lambda reg: reg.ensure_provisioning_token(
        customer, body.name, actor=f"token:{token.id}", expires_at=body.expires_at,
        max_uses=body.max_uses, device_pattern=body.device_pattern,
    ))  # fmt: skip
    out = IssuedProvisioningTokenOut(**ProvisioningTokenOut.of(result.items[0]).model_dump(),
                                     token=issued.value if issued else None)  # fmt: skip
    return JSONResponse(out.model_dump(mode="json"), status_code=201 if issued else 200)


@router.delete("/v1/provisioning-tokens/{token_id}", response_model=ProvisioningTokenOut,
               responses={403: {"model": Problem}, 404: {"model": Problem}})  # fmt: skip
async def revoke_provisioning_token(
    token_id: Annotated[str, Path(pattern=r"^[0-9a-f]{16}$")], api: ApiDep, token: ManagerDep
) -> ProvisioningTokenOut:
    result = await _registry(api, lambda reg: reg.revoke_provisioning_token(
        token_id, actor=f"token:{token.id}", customer_id=token.customer_id))  # fmt: skip
    return ProvisioningTokenOut.of(result.items[0])
