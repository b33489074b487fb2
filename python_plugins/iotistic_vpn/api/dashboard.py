"""The customer dashboard: sign in with an API token, the fleet live, a device's agent, restart.

    GET  /                                     redirect to /dashboard/
    GET  /dashboard/login, POST /dashboard/login, POST /dashboard/logout
    GET  /dashboard/                           the fleet (the table refreshes from fleet.json)
    GET  /dashboard/fleet.json                 the fleet's rows, as the table shows them
    GET  /dashboard/devices/{device}           its agent's /v1/device, restart, recent audit
    GET/POST /dashboard/devices/{device}/restart   the confirm page / the restart itself

Stateless: the session cookie holds the API token sealed with Fernet (AES + HMAC, with a time
stamp) under a per-process key, or IOTISTIC_API_DASHBOARD_KEY when several replicas share
sessions. Sealed rather than the bare token, so a copied cookie is not a bearer token for /v1,
stops working after SESSION_TTL_S and whenever the key changes. The token is re-checked with
the registry on every request, so a revoked token ends its sessions at once.

CSRF: every POST carries a synchronizer token, HMAC(key, nonce), where the nonce lives in the
sealed session (signed in) or in a pre-session cookie (the sign-in form); a POST without it is
403 and changes nothing. The device's agent is reached through the API's own proxy path
(iotistic_vpn.api.forward), never a second HTTP client.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs

from cryptography.fernet import Fernet, InvalidToken
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from .. import conventions
from ..errors import InvalidValue, RegistryUnavailable
from ..registry import ApiToken, AuditEntry, DeviceStatus
from .app import Api, _visible
from .forward import forward

__all__ = ["install_dashboard"]

HERE = Path(__file__).resolve().parent
SESSION_COOKIE = "__Host-ivpn_session"  # __Host-: Secure, Path=/, no Domain: no cookie tossing
CSRF_COOKIE = "__Host-ivpn_csrf"  # the sign-in form's nonce, before there is a session
SESSION_TTL_S = 8 * 3600
REFRESH_MS = 3000
KEY_VARIABLE = "IOTISTIC_API_DASHBOARD_KEY"
MAX_FORM_BYTES = 4096
MAX_AGENT_BYTES = 64 * 1024  # what the device page shows of the agent's answer
AUDIT_ROWS = 20
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self';"
        " connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

router = APIRouter(prefix="/dashboard", include_in_schema=False)
templates = Jinja2Templates(directory=HERE / "templates")


class Dashboard:
    """The dashboard's keys: sealing sessions and signing CSRF tokens."""

    def __init__(self, key: bytes | None = None) -> None:
        key = key or Fernet.generate_key()
        self.fernet = Fernet(key)
        self._csrf_key = hashlib.sha256(b"iotistic-dashboard-csrf\0" + key).digest()

    @classmethod
    def from_environment(cls) -> Dashboard:
        value = os.environ.get(KEY_VARIABLE, "").strip()
        if not value:
            return cls()
        try:
            Fernet(value.encode())
        except ValueError:
            # Names the variable, never its value.
            raise ValueError(
                f"{KEY_VARIABLE}: not a Fernet key (32 bytes, URL-safe base64)"
            ) from None
        return cls(value.encode())

    def seal(self, token: str, nonce: str) -> str:
        return self.fernet.encrypt(json.dumps({"t": token, "n": nonce}).encode()).decode()

    def unseal(self, cookie: str | None) -> tuple[str, str] | None:
        """(token, nonce) of a session cookie this process sealed within the TTL, else None."""
        if not cookie:
            return None
        try:
            data = json.loads(self.fernet.decrypt(cookie.encode(), ttl=SESSION_TTL_S))
            return str(data["t"]), str(data["n"])
        except (InvalidToken, ValueError, KeyError, TypeError):
            return None

    def csrf(self, nonce: str) -> str:
        digest = hmac.new(self._csrf_key, nonce.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    def csrf_ok(self, nonce: str | None, presented: str | None) -> bool:
        return bool(nonce and presented) and hmac.compare_digest(self.csrf(nonce), presented)


@dataclass(frozen=True)
class Session:
    token: ApiToken
    # The token string: for the proxy's stream watcher only; never rendered, never in a repr.
    value: str = field(repr=False)
    nonce: str = field(repr=False)


def install_dashboard(app: FastAPI) -> None:
    """Mount the dashboard's routes, its static files and the redirect from / on the API."""
    app.state.dashboard = Dashboard.from_environment()
    app.include_router(router)
    app.mount("/dashboard/static", _Static(directory=HERE / "static"), name="dashboard-static")
    app.add_api_route("/", _home, methods=["GET"], include_in_schema=False)


async def _home() -> Response:
    return _harden(RedirectResponse("/dashboard/", status_code=303))


class _Static(StaticFiles):
    """Static files with the dashboard's headers (nosniff above all)."""

    async def get_response(self, path: str, scope) -> Response:
        response = await super().get_response(path, scope)
        for name in ("X-Content-Type-Options", "Referrer-Policy", "X-Frame-Options"):
            response.headers[name] = SECURITY_HEADERS[name]
        return response


# -- plumbing ----------------------------------------------------------------------------------


def _harden(response: Response) -> Response:
    response.headers.update(SECURITY_HEADERS)
    return response


def _set_cookie(response: Response, name: str, value: str, max_age: int) -> None:
    response.set_cookie(name, value, max_age=max_age, path="/", secure=True, httponly=True,
                        samesite="strict")  # fmt: skip


def _drop_cookie(response: Response, name: str) -> None:
    response.delete_cookie(name, path="/", secure=True, httponly=True, samesite="strict")


def _redirect(url: str) -> Response:
    return _harden(RedirectResponse(url, status_code=303))


def _page(request: Request, name: str, context: dict[str, Any], status: int = 200) -> Response:
    return _harden(templates.TemplateResponse(request, name, context, status_code=status))


def _error(request: Request, session: Session | None, status: int, title: str, message: str):
    return _page(
        request, "error.html", _context(request, session, title=title, message=message), status
    )


def _dashboard(request: Request) -> Dashboard:
    return request.app.state.dashboard


def _api(request: Request) -> Api:
    return request.app.state.api


async def _session(request: Request) -> Session | None:
    """The request's live session, else None (no cookie, tampered, expired, token revoked)."""
    sealed = _dashboard(request).unseal(request.cookies.get(SESSION_COOKIE))
    if sealed is None:
        return None
    value, nonce = sealed
    try:
        token = await _api(request).authenticate(value)
    except RegistryUnavailable:
        raise HTTPException(503, "registry unavailable, try again shortly") from None
    if token is None:
        return None
    request.state.token = token  # the audit log names who called
    return Session(token, value, nonce)


SessionDep = Annotated[Session | None, Depends(_session)]


async def _form(request: Request) -> dict[str, str]:
    """An urlencoded form body (bounded); anything else is an empty form."""
    if request.headers.get("content-type", "").split(";")[0].strip() != (
        "application/x-www-form-urlencoded"
    ):
        return {}
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise HTTPException(413, f"form over {MAX_FORM_BYTES} bytes")
    request.state.bytes_in = len(body)  # the audit log counts the form
    try:
        fields = parse_qs(body.decode(), max_num_fields=8, strict_parsing=False)
    except (UnicodeDecodeError, ValueError):
        return {}
    return {k: v[0] for k, v in fields.items() if v}


def _context(request: Request, session: Session | None, **extra: Any) -> dict[str, Any]:
    view = None
    if session is not None:
        view = {"name": session.token.name, "customer": session.token.customer_id,
                "read_only": session.token.read_only,
                "csrf": _dashboard(request).csrf(session.nonce)}  # fmt: skip
    return {"session": view, **extra}


def _when(value: datetime | None, *, date_only: bool = False) -> str:
    if value is None:
        return "never" if not date_only else "none"
    return value.strftime("%Y-%m-%d" if date_only else "%Y-%m-%d %H:%M:%S UTC")


def _row(status: DeviceStatus) -> dict[str, Any]:
    """A fleet table row, the same for the first render and for fleet.json."""
    d = status.device
    return {
        "id": d.id, "href": f"/dashboard/devices/{d.id}", "online": d.connected,
        "last_seen": _when(d.last_seen), "vpn_address": d.vpn_address,
        "gateway": d.gateway or "none", "state": d.state,
        "certificate_expires": _when(status.certificate_expires, date_only=True),
    }  # fmt: skip


def _audit_row(entry: AuditEntry) -> dict[str, Any]:
    detail = entry.detail or {}
    if entry.action == "request":
        return {
            "at": _when(entry.at),
            "who": detail.get("token") or entry.actor,
            "what": f"{detail.get('method', '')} {detail.get('path', '')}",
            "status": detail.get("status", ""),
            "bytes": f"{detail.get('bytes_in', 0)} in / {detail.get('bytes_out', 0)} out",
        }
    return {"at": _when(entry.at), "who": entry.actor, "what": entry.action, "status": "",
            "bytes": ""}  # fmt: skip


async def _agent(
    api: Api, session: Session, device: str, method: str, path: str, body: bytes = b""
) -> tuple[int, bytes]:
    """Ask the device's agent through the API's own proxy path: (status, answer, bounded).

    A request of the dashboard's own making goes through forward.forward exactly as
    /v1/devices/{device}/proxy/{path} does: the same checks, tunnel pool, timeouts, and the
    token's stream watcher (hence its Authorization header, which the proxy never forwards).
    """
    raw = f"/v1/devices/{device}/proxy/{path}".encode()
    headers = [(b"authorization", f"Bearer {session.value}".encode()),
               (b"accept", b"application/json")]  # fmt: skip
    if body:
        headers += [(b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode())]  # fmt: skip
    scope = {"type": "http", "http_version": "1.1", "method": method, "scheme": "http",
             "path": raw.decode(), "raw_path": raw, "query_string": b"", "headers": headers,
             "client": None, "server": None, "state": {}}  # fmt: skip
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            await asyncio.Event().wait()  # no disconnect: the page waits for its answer
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    answer: dict[str, Any] = {"status": 502, "chunks": [], "size": 0}

    async def collect(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            answer["status"] = message["status"]
        elif answer["size"] < MAX_AGENT_BYTES:
            answer["chunks"].append(message.get("body", b""))
            answer["size"] += len(answer["chunks"][-1])

    await forward(api, session.token, device, scope, receive, collect,
                  raw_tail=path.encode())  # fmt: skip
    return answer["status"], b"".join(answer["chunks"])[:MAX_AGENT_BYTES]


async def _device(api: Api, session: Session, device: str) -> DeviceStatus | None:
    """The session's device by that id; another customer's or an unknown one: None alike."""
    found = await _visible(api, session.token, device)
    return found[0] if found else None


def _not_found(request: Request, session: Session) -> Response:
    # One page for another customer's device and for one that does not exist: it names
    # neither, so the two are byte for byte the same.
    return _error(request, session, 404, "Not found", "There is no such device in your fleet.")


def _may_restart(token: ApiToken) -> bool:
    return token.may("POST", conventions.DEVICE_AGENT_PORT)


# -- routes ------------------------------------------------------------------------------------


@router.get("/login")
async def login_page(request: Request, session: SessionDep) -> Response:
    if session is not None:
        return _redirect("/dashboard/")
    return _login(request, None, 200)


def _login(request: Request, problem: str | None, status: int) -> Response:
    nonce = request.cookies.get(CSRF_COOKIE) or secrets.token_urlsafe(32)
    context = {"session": None, "problem": problem, "csrf": _dashboard(request).csrf(nonce)}
    response = _page(request, "login.html", context, status)
    _set_cookie(response, CSRF_COOKIE, nonce, 3600)
    return response


@router.post("/login")
async def login(request: Request) -> Response:
    form = await _form(request)
    if not _dashboard(request).csrf_ok(request.cookies.get(CSRF_COOKIE), form.get("csrf")):
        return _error(request, None, 403, "Refused", "The form had expired: sign in again.")
    value = form.get("token", "").strip()
    try:
        token = await _api(request).authenticate(value) if value else None
    except RegistryUnavailable:
        return _error(request, None, 503, "Unavailable", "The registry is unavailable.")
    if token is None:
        return _login(request, "That token was not accepted.", 401)
    request.state.token = token
    response = _redirect("/dashboard/")
    # A fresh nonce for the session: the sign-in form's one dies with its cookie.
    sealed = _dashboard(request).seal(value, secrets.token_urlsafe(32))
    _set_cookie(response, SESSION_COOKIE, sealed, SESSION_TTL_S)
    _drop_cookie(response, CSRF_COOKIE)
    return response


@router.post("/logout")
async def logout(request: Request, session: SessionDep) -> Response:
    form = await _form(request)
    if session is None:
        return _redirect("/dashboard/login")
    if not _dashboard(request).csrf_ok(session.nonce, form.get("csrf")):
        return _error(request, session, 403, "Refused", "That form was not ours: nothing done.")
    response = _redirect("/dashboard/login")
    _drop_cookie(response, SESSION_COOKIE)
    return response


@router.get("/")
async def fleet_page(request: Request, session: SessionDep) -> Response:
    if session is None:
        return _redirect("/dashboard/login")
    rows = [_row(s) for s in await _visible(_api(request), session.token)]
    return _page(request, "fleet.html", _context(request, session, rows=rows,
                                                 refresh_ms=REFRESH_MS))  # fmt: skip


@router.get("/fleet.json")
async def fleet_json(request: Request, session: SessionDep) -> Response:
    if session is None:
        return _harden(JSONResponse({"detail": "sign in"}, status_code=401))
    rows = [_row(s) for s in await _visible(_api(request), session.token)]
    return _harden(JSONResponse({"devices": rows}))


@router.get("/devices/{device}")
async def device_page(device: str, request: Request, session: SessionDep) -> Response:
    if session is None:
        return _redirect("/dashboard/login")
    api = _api(request)
    status = await _device(api, session, device)
    if status is None:
        return _not_found(request, session)
    request.state.device = device
    agent: dict[str, Any] = {}
    if status.device.connected:
        try:
            code, body = await _agent(api, session, device, "GET", "v1/device")
            agent = {"status": code, "text": _pretty(body)}
        except HTTPException as exc:
            agent = {"status": exc.status_code, "problem": str(exc.detail)}
    else:
        agent = {"status": 503, "problem": "The device is offline."}
    try:
        entries = await api.registry.run(lambda reg: reg.audit_log(
            customer_id=session.token.customer_id, device_id=device, limit=AUDIT_ROWS))  # fmt: skip
    except (RegistryUnavailable, InvalidValue):
        entries = []
    restarted = request.query_params.get("restart")
    return _page(request, "device.html", _context(
        request, session, device=_row(status), agent=agent,
        audit=[_audit_row(e) for e in entries], may_restart=_may_restart(session.token),
        restarted=restarted if restarted in ("ok", "failed") else None,
    ))  # fmt: skip


@router.get("/devices/{device}/restart")
async def restart_page(device: str, request: Request, session: SessionDep) -> Response:
    """The confirm step without JavaScript (the device page opens it as a <dialog>)."""
    if session is None:
        return _redirect("/dashboard/login")
    status = await _device(_api(request), session, device)
    if status is None:
        return _not_found(request, session)
    if not _may_restart(session.token):
        return _error(request, session, 403, "Refused", "This token is read-only.")
    return _page(request, "restart.html", _context(request, session, device=_row(status)))


@router.post("/devices/{device}/restart")
async def restart(device: str, request: Request, session: SessionDep) -> Response:
    form = await _form(request)
    if session is None:
        return _redirect("/dashboard/login")
    if not _dashboard(request).csrf_ok(session.nonce, form.get("csrf")):
        return _error(request, session, 403, "Refused", "That form was not ours: nothing done.")
    api = _api(request)
    if await _device(api, session, device) is None:
        return _not_found(request, session)
    request.state.device = device
    if not _may_restart(session.token):
        return _error(request, session, 403, "Refused", "This token is read-only.")
    try:
        code, _ = await _agent(api, session, device, "POST", "v1/restart", b'{"force": false}')
    except HTTPException:
        code = 0
    outcome = "ok" if 200 <= code < 300 else "failed"
    return _redirect(f"/dashboard/devices/{device}?restart={outcome}")


def _pretty(body: bytes) -> str:
    text = body.decode("utf-8", errors="replace")
    try:
        return json.dumps(json.loads(text), indent=2, sort_keys=True)
    except ValueError:
        return text
