"""The cloud API: a customer's token, the devices it may see, and their agents through tunnels.

    GET  /v1/devices                          the token's devices: online, address, gateway, ...
    GET  /v1/devices/{device}                 one of them (another customer's: 404, like unknown)
    ANY  /v1/devices/{device}/proxy/{path}    forwarded to the device's agent, streamed both ways
    GET/POST /v1/tokens, DELETE /v1/tokens/{id}   operator tokens only
    GET  /v1/audit                            the token's customer's audit log (operators: all)
    POST /v1/enroll, /v1/provisioning-tokens  devices enrolling themselves (api/enroll.py)
    POST /v1/renewals                         a gateway renews a device's certificate (api/renew.py)
    GET  /healthz

Every request is audited (iotistic_vpn.api.audit) and counted (iotistic_vpn.api.metrics).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import AwareDatetime, BaseModel, BeforeValidator, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from .. import conventions
from ..errors import InvalidValue, NotFound, RegistryUnavailable
from ..registry import ApiToken, DeviceStatus, Registry, RequestRecord
from .audit import AuditWriter
from .cache import TtlCache
from .connect_proxy import ConnectProxy
from .device_http import DeviceError, DevicePool
from .dialer import TunnelDialer
from .follow import CacheFollower
from .forward import PROXY_METHODS, PROXY_ROUTE, ProxyFastPath, StreamWatch, bearer
from .forward import openapi_operation as proxy_operation
from .metrics import ApiMetrics
from .registry_pool import RegistryPool
from .settings import ApiSettings

__all__ = ["ApiServer", "create_app"]

log = logging.getLogger("iotistic_vpn.api")


# -- response models (the OpenAPI schema schemathesis checks the API against) ------------------


class DeviceOut(BaseModel):
    id: str
    customer: str
    state: str
    online: bool
    vpn_address: str
    gateway: str | None
    last_seen: datetime | None
    certificate_expires: datetime | None

    @classmethod
    def of(cls, status: DeviceStatus) -> DeviceOut:
        d = status.device
        return cls(
            id=d.id, customer=d.customer_id, state=d.state, online=d.connected,
            vpn_address=d.vpn_address, gateway=d.gateway, last_seen=d.last_seen,
            certificate_expires=status.certificate_expires,
        )  # fmt: skip


class TokenOut(BaseModel):
    id: str
    name: str
    customer: str | None
    devices: list[str] | None
    ports: list[int]
    read_only: bool
    expires_at: datetime | None
    created_at: datetime
    revoked_at: datetime | None

    @classmethod
    def of(cls, t: ApiToken) -> TokenOut:
        return cls(
            id=t.id, name=t.name, customer=t.customer_id,
            devices=None if t.devices is None else list(t.devices), ports=list(t.ports),
            read_only=t.read_only, expires_at=t.expires_at, created_at=t.created_at,
            revoked_at=t.revoked_at,
        )  # fmt: skip


def _iso_time(value: object) -> object:
    """Times are ISO 8601 text only: a bare number is not taken for a unix time."""
    if not isinstance(value, str | datetime):
        raise ValueError("use an ISO 8601 time such as 2026-12-01T00:00:00Z")
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            raise ValueError("use an ISO 8601 time such as 2026-12-01T00:00:00Z") from None
    return value


IsoTime = Annotated[AwareDatetime, BeforeValidator(_iso_time)]
CustomerId = Annotated[str, Field(pattern=conventions.CUSTOMER_ID_PATTERN)]
DeviceId = Annotated[str, Field(pattern=conventions.DEVICE_ID_PATTERN)]
Port = Annotated[int, Field(ge=1, le=65535)]
TokenId = Annotated[str, Field(pattern=r"^[0-9a-f]{16}$")]


class NewToken(BaseModel):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,62}$")
    customer: CustomerId | None = Field(None, description="None: an operator token")
    devices: list[DeviceId] | None = None
    ports: list[Port] = Field(default_factory=lambda: [conventions.DEVICE_AGENT_PORT], min_length=1)
    read_only: bool = True
    expires_at: IsoTime | None = None


class IssuedTokenOut(TokenOut):
    token: str | None = Field(description="the token itself: shown once, at creation")


class AuditOut(BaseModel):
    id: int
    at: datetime
    actor: str
    action: str
    target: str
    customer: str | None
    device: str | None
    token: str | None
    detail: dict


class Problem(BaseModel):
    detail: str


# -- the app -----------------------------------------------------------------------------------


class Api:
    """The app's state: registry pool, device pool over tunnels, audit, metrics."""

    def __init__(self, settings: ApiSettings) -> None:
        self.settings = settings
        self.registry = RegistryPool(
            settings.registry_dsn.get_secret_value(),
            settings.registry_pool_size,
            statement_timeout_s=settings.registry_statement_timeout_s,
            lock_timeout_s=settings.registry_lock_timeout_s,
        )
        self.dialer = TunnelDialer(
            str(settings.tunnel_cert), str(settings.tunnel_key), str(settings.tunnel_ca),
            connect_timeout_s=settings.connect_timeout_s, port=settings.tunnel_port,
            tls_name=settings.gateway_tls_name,
        )  # fmt: skip
        self.devices = DevicePool(self.dialer, self.locate, idle_s=settings.device_idle_s,
                                  port=conventions.DEVICE_AGENT_PORT)  # fmt: skip
        # Answers for the hot path (a token, a device's scope): one registry round trip per
        # request less. The change feed drops them when their token or device changes; a
        # device gone offline shows within token_recheck_s.
        self.token_cache = TtlCache(settings.token_recheck_s)
        self.lookup_cache = TtlCache(settings.token_recheck_s)
        self.follower = CacheFollower(
            self.registry, self.registry.listener(),
            self.token_cache, self.lookup_cache,
            short_s=settings.token_recheck_s, long_s=settings.token_cache_s,
        )  # fmt: skip
        self.audit = AuditWriter(
            self.registry, settings.audit_spool, settings.audit_retention_months
        )
        self.metrics = ApiMetrics(lambda: self.audit.backlog)
        self.streams = StreamWatch(self.authenticate, settings.token_recheck_s)
        self.connect = ConnectProxy(
            self.dialer, self.authenticate, self.whereabouts, self.audit.record,
            recheck_s=settings.token_recheck_s,
        )  # fmt: skip

    async def whereabouts(self, device: str) -> tuple[str, str, str]:
        """(customer, gateway or "" when offline, address to dial it at) of a device."""
        found = await self.registry.run(lambda reg: reg.find_device(device))
        if not found.connected or found.gateway is None:
            return found.customer_id, "", ""
        return found.customer_id, found.gateway, self.settings.gateway_host(found.gateway)

    async def locate(self, device: str) -> tuple[str, str]:
        """The gateway holding a device now and the address to dial it at (for the device
        pool's new connections), else DeviceError."""
        try:
            _, gateway, address = await self.whereabouts(device)
        except NotFound:
            raise DeviceError(404, f"device {device!r} not found") from None
        except RegistryUnavailable as exc:
            raise DeviceError(503, str(exc)) from None
        if not gateway:
            raise DeviceError(503, f"device {device!r} is offline")
        return gateway, address

    async def device_scope(
        self, token: ApiToken, device: str
    ) -> tuple[list[DeviceStatus], str | None]:
        """(the device's status if the token may see it, else [], and its agent's API key),
        reused for token_recheck_s like the token itself."""

        def look_up(reg: Registry):
            found = _visible_in(reg, token, device)
            return found, reg.agent_key(device) if found else None

        return await self.lookup_cache.fetch((token.id, device), lambda: self.registry.run(look_up))

    async def authenticate(self, value: str | None, *, fresh: bool = False) -> ApiToken | None:
        """The live token a presented string is, or None. Answers are reused for
        token_recheck_s (half a second), so a revocation is seen within that; watchers of
        open streams ask fresh."""
        if not value:
            return None

        async def load() -> tuple[ApiToken | None]:
            return (await self.registry.run(lambda reg: reg.authenticate(value)),)

        if not fresh:
            return (await self.token_cache.fetch(value, load))[0]
        answer = await load()
        self.token_cache.put(value, answer)
        return answer[0]


def _bearer(request: Request) -> str | None:
    return bearer(request.headers.raw)


async def _api(request: Request) -> Api:  # async: FastAPI runs a plain def in a thread
    return request.app.state.api


async def _token(request: Request, api: Annotated[Api, Depends(_api)]) -> ApiToken:
    """The request's live token, else 401 (missing, malformed, unknown, revoked, expired)."""
    try:
        token = await api.authenticate(_bearer(request))
    except RegistryUnavailable:
        raise HTTPException(503, "registry unavailable, try again shortly") from None
    if token is None:
        raise HTTPException(401, "a valid API token is required", {"WWW-Authenticate": "Bearer"})
    request.state.token = token
    return token


async def _operator(token: Annotated[ApiToken, Depends(_token)]) -> ApiToken:
    if not token.operator:
        raise HTTPException(403, "this needs an operator token")
    return token


ApiDep = Annotated[Api, Depends(_api)]
TokenDep = Annotated[ApiToken, Depends(_token)]
OperatorDep = Annotated[ApiToken, Depends(_operator)]


def _not_found(device: str) -> HTTPException:
    # The same answer for a device of another customer as for one that does not exist.
    return HTTPException(404, f"device {device!r} not found")


def _visible_in(reg: Registry, token: ApiToken, device: str | None = None) -> list[DeviceStatus]:
    """The token's devices (one of them, if device), from one registry query."""
    ids = [device] if device is not None else token.devices
    try:
        found = reg.device_statuses(customer_id=token.customer_id, device_ids=ids)
    except InvalidValue:
        return []
    return [s for s in found if token.may_reach(s.device.customer_id, s.device.id)]


async def _visible(api: Api, token: ApiToken, device: str | None = None) -> list[DeviceStatus]:
    try:
        return await api.registry.run(lambda reg: _visible_in(reg, token, device))
    except RegistryUnavailable:
        raise HTTPException(503, "registry unavailable, try again shortly") from None


class ApiServer:
    """What uvicorn runs: every request counted and audited (AuditAndCount), the proxy path
    served in front of FastAPI (iotistic_vpn.api.forward), everything else by FastAPI."""

    def __init__(self, fastapi: FastAPI, api: Api) -> None:
        self.fastapi, self.api = fastapi, api
        self._front = AuditAndCount(ProxyFastPath(fastapi, api), api)

    async def __call__(self, scope, receive, send) -> None:
        await self._front(scope, receive, send)


def create_app(settings: ApiSettings) -> ApiServer:
    api = Api(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        api.registry.open()
        api.audit.start()
        watch = asyncio.create_task(api.streams.run())
        sweeper = asyncio.create_task(api.devices.run_sweeper())
        follower = asyncio.create_task(api.follower.run())
        if settings.connect_proxy_listen:
            await api.connect.start(settings.connect_proxy_listen)
        try:
            yield
        finally:
            watch.cancel()
            sweeper.cancel()
            follower.cancel()
            await api.connect.close()
            api.devices.close()
            await api.audit.close()
            api.registry.close()

    app = FastAPI(
        title="Iotistic VPN",
        version="1",
        summary="Reach your devices' agents through the VPN, per customer token.",
        lifespan=lifespan,
        responses={400: {"model": Problem}, 401: {"model": Problem}, 503: {"model": Problem}},
    )
    app.state.api = api

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            # Starlette names the methods of one route; a path served by several lists them all.
            routes = [r for r in app.routes if isinstance(r, APIRoute)]
            matching = [r for r in routes if r.matches(request.scope)[0] != Match.NONE]
            methods = sorted({m for r in matching for m in r.methods})
            headers["Allow"] = ", ".join(methods)
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=headers)

    @app.get("/healthz", response_model=dict)
    async def healthz() -> JSONResponse:
        try:
            await api.registry.run(lambda reg: reg.schema_version())
            registry = True
        except RegistryUnavailable:
            registry = False
        body = {"status": "ok" if registry else "degraded", "registry_reachable": registry,
                "audit_backlog": api.audit.backlog,
                "enrollment": app.state.enrollment.enabled}  # fmt: skip
        return JSONResponse(body, status_code=200 if registry else 503)

    @app.get("/v1/devices", response_model=list[DeviceOut])
    async def list_devices(api: ApiDep, token: TokenDep) -> list[DeviceOut]:
        return [DeviceOut.of(s) for s in await _visible(api, token)]

    @app.get("/v1/devices/{device}", response_model=DeviceOut, responses={404: {"model": Problem}})
    async def get_device(device: str, request: Request, api: ApiDep, token: TokenDep) -> DeviceOut:
        found = await _visible(api, token, device)
        if not found:
            raise _not_found(device)
        request.state.device = device
        return DeviceOut.of(found[0])

    @app.get("/v1/tokens", response_model=list[TokenOut])
    async def list_tokens(
        api: ApiDep,
        _: OperatorDep,
        customer: Annotated[str | None, Query(pattern=conventions.CUSTOMER_ID_PATTERN)] = None,
        include_revoked: bool = False,
    ) -> list[TokenOut]:
        tokens = await _registry(
            api, lambda reg: reg.list_tokens(customer, include_revoked=include_revoked)
        )
        return [TokenOut.of(t) for t in tokens]

    @app.post("/v1/tokens", response_model=IssuedTokenOut, status_code=201,
              responses={200: {"model": IssuedTokenOut}, 403: {"model": Problem},
                         404: {"model": Problem}})  # fmt: skip
    async def create_token(body: NewToken, api: ApiDep, op: OperatorDep) -> JSONResponse:
        actor = f"token:{op.id}"

        def create(reg: Registry):
            return reg.ensure_token(
                body.name, customer_id=body.customer, actor=actor, devices=body.devices,
                ports=body.ports, read_only=body.read_only, expires_at=body.expires_at,
            )  # fmt: skip

        result, issued = await _registry(api, create)
        out = IssuedTokenOut(**TokenOut.of(result.items[0]).model_dump(),
                             token=issued.value if issued else None)  # fmt: skip
        return JSONResponse(out.model_dump(mode="json"), status_code=201 if issued else 200)

    @app.delete(
        "/v1/tokens/{token_id}", response_model=TokenOut, responses={404: {"model": Problem}}
    )
    async def revoke_token(
        token_id: Annotated[str, Path(pattern=r"^[0-9a-f]{16}$")], api: ApiDep, op: OperatorDep
    ) -> TokenOut:
        result = await _registry(
            api, lambda reg: reg.revoke_token(token_id, actor=f"token:{op.id}")
        )
        return TokenOut.of(result.items[0])

    @app.get("/v1/audit", response_model=list[AuditOut])
    async def audit(
        api: ApiDep,
        token: TokenDep,
        device: Annotated[str | None, Query(pattern=conventions.DEVICE_ID_PATTERN)] = None,
        token_id: Annotated[str | None, Query(alias="token", pattern=r"^[0-9a-f]{16}$")] = None,
        since: IsoTime | None = None,
        until: IsoTime | None = None,
        after_id: Annotated[int | None, Query(ge=0)] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> list[AuditOut]:
        if device is not None and token.devices is not None and device not in token.devices:
            return []
        entries = await _registry(api, lambda reg: reg.audit_log(
            customer_id=token.customer_id, device_id=device, token_id=token_id, since=since,
            until=until, after_id=after_id, limit=limit,
        ))  # fmt: skip
        return [
            AuditOut(
                id=e.id,
                at=e.at,
                actor=e.actor,
                action=e.action,
                target=e.target,
                customer=e.customer_id,
                device=e.device_id,
                token=e.token_id,
                detail=e.detail,
            )
            for e in entries
            if token.devices is None or e.device_id is None or e.device_id in token.devices
        ]

    # Imported here: the dashboard builds on this module's proxy path and device queries.
    from .dashboard import install_dashboard

    install_dashboard(app)  # /dashboard (HTML, cookie sessions), outside the OpenAPI schema
    from .enroll import install_enrollment

    install_enrollment(app, settings)  # /v1/enroll, /v1/provisioning-tokens
    from .renew import install_renewal

    install_renewal(app)  # /v1/renewals, gateways only (their TLS client certificate)
    _document_proxy(app)
    return ApiServer(app, api)


def _document_proxy(app: FastAPI) -> None:
    """Add the proxy path, served in front of the router (iotistic_vpn.api.forward), to the
    schema FastAPI builds from its routes."""
    build = app.openapi

    def openapi() -> dict:
        schema = build()  # FastAPI's, cached: the entry is added to it once
        path = PROXY_ROUTE.replace("{path:path}", "{path}")
        schema["paths"].setdefault(path, {m.lower(): proxy_operation(m) for m in PROXY_METHODS})
        return schema

    app.openapi = openapi


async def _registry(api: Api, fn):
    """A registry call with its errors as HTTP answers."""
    try:
        return await api.registry.run(fn)
    except NotFound as exc:
        raise HTTPException(404, str(exc)) from None
    except InvalidValue as exc:
        raise HTTPException(400, str(exc)) from None
    except RegistryUnavailable:
        raise HTTPException(503, "registry unavailable, try again shortly") from None


class AuditAndCount:
    """Every request counted and audited once its answer is sent (plain ASGI: it wraps `send`
    and never buffers a body, which Starlette's BaseHTTPMiddleware costs per request)."""

    def __init__(self, app, api: Api) -> None:
        self.app, self.api = app, api

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        state = scope.setdefault("state", {})
        state.update(token=None, device=None, bytes_in=0)
        answer = {"status": 500, "sent": 0}

        async def counting_send(message) -> None:
            if message["type"] == "http.response.start":
                answer["status"] = message["status"]
            elif message["type"] == "http.response.body":
                answer["sent"] += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            self._done(scope, state, answer["status"], answer["sent"], started)

    def _done(self, scope, state: dict, status: int, sent: int, started: float) -> None:
        elapsed = time.perf_counter() - started
        template = getattr(scope.get("route"), "path", "unmatched")
        self.api.metrics.observe(template, scope["method"], status, elapsed,
                                 state.get("bytes_in", 0), sent)  # fmt: skip
        if template == "/healthz":
            return
        token: ApiToken | None = state.get("token")
        client = scope.get("client")
        self.api.audit.record(RequestRecord(
            at=datetime.now(UTC), token_id=token.id if token else None,
            token_name=token.name if token else None,
            customer_id=token.customer_id if token else None, device_id=state.get("device"),
            method=scope["method"], path=scope["path"], status=status,
            bytes_in=state.get("bytes_in", 0), bytes_out=sent, duration_ms=elapsed * 1000,
            source=client[0] if client else None,
        ))  # fmt: skip
