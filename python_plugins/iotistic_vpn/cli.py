"""`iotistic-vpn`: the platform team's command line (typer + rich), a thin adapter.

Registry commands talk to the database (`--dsn` or IOTISTIC_VPN_DSN); `device get|post|put|
delete` go through the cloud API (`--api`/IOTISTIC_VPN_API and `--token`/IOTISTIC_VPN_TOKEN),
exactly as a customer's script would, and `device tunnel` carries stdin/stdout to a device port
through the API's CONNECT tunnel (SSH's ProxyCommand). Tables for people, `--json` for
scripts. Exit codes: 0 done, 1 failed (one line on stderr, never a traceback) or, for `ca status`
and `crl status`, something ends inside the warning window; 2 bad usage.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from .errors import IotisticVpnError

__all__ = ["app", "main"]

DSN_ENV = "IOTISTIC_VPN_DSN"
T = TypeVar("T")

app = typer.Typer(
    name="iotistic-vpn",
    help="Operate the Iotistic VPN: registry, tokens, audit, PKI status, devices via the API.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
customers = typer.Typer(help="Customers and their address blocks.", no_args_is_help=True)
devices = typer.Typer(help="Devices: addresses, online state, certificates.")
tokens = typer.Typer(help="API tokens of customers and operators.", no_args_is_help=True)
provisioning_tokens = typer.Typer(
    help="Provisioning tokens: what devices enroll themselves with.", no_args_is_help=True
)
ca = typer.Typer(help="The CA pair.", no_args_is_help=True)
crl = typer.Typer(help="The certificate revocation list.", no_args_is_help=True)
device = typer.Typer(help="Ask a device's agent, through the cloud API.", no_args_is_help=True)
for sub, name in ((customers, "customers"), (devices, "devices"), (tokens, "tokens"),
                  (provisioning_tokens, "provisioning-tokens"), (ca, "ca"), (crl, "crl"),
                  (device, "device")):  # fmt: skip
    app.add_typer(sub, name=name)


class Context:
    def __init__(self, dsn: str, as_json: bool) -> None:
        self.dsn, self.json = dsn, as_json
        # A table piped to a file or a script keeps each row on one line.
        self.out = Console(highlight=False, width=None if sys.stdout.isatty() else 250)

    @contextmanager
    def registry(self) -> Iterator[Any]:
        from .registry import Registry  # psycopg only when a command needs the registry

        with Registry(self.dsn, connect_timeout=5) as reg:
            yield reg

    def emit(self, rows: list[dict], columns: Sequence[tuple[str, str]]) -> None:
        """rows as JSON (every key) or as a table of the named columns."""
        if self.json:
            print(json.dumps(rows, indent=2, default=str))
            return
        table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
        for _, title in columns:
            table.add_column(title)
        for row in rows:
            table.add_row(*(_cell(row.get(key)) for key, _ in columns))
        self.out.print(table)


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ",".join(map(str, value)) or "-"
    return str(value)


def _ctx(typer_ctx: typer.Context) -> Context:
    return typer_ctx.find_root().obj


def _fail(message: str) -> typer.Exit:
    print(f"iotistic-vpn: {message}", file=sys.stderr)
    return typer.Exit(1)


def _run(fn: Callable[[], T]) -> T:
    """fn(), with the package's errors as one line and exit status 1."""
    try:
        return fn()
    except IotisticVpnError as exc:
        raise _fail(str(exc)) from None


@app.callback()
def _root(
    typer_ctx: typer.Context,
    dsn: Annotated[str, typer.Option(envvar=DSN_ENV, help="registry connection string")] = "",
    as_json: Annotated[bool, typer.Option("--json", help="JSON for scripts")] = False,
) -> None:
    typer_ctx.obj = Context(dsn, as_json)


@app.command()
def migrate(typer_ctx: typer.Context) -> None:
    """Apply pending registry migrations."""
    c = _ctx(typer_ctx)

    def go():
        with c.registry() as reg:
            return reg.migrate()

    applied = _run(go)
    c.out.print(f"applied: {', '.join(applied)}" if applied else "schema is up to date")


# -- customers ---------------------------------------------------------------------------------


@customers.command("list")
def customers_list(typer_ctx: typer.Context) -> None:
    """Customers and their blocks."""
    c = _ctx(typer_ctx)

    def go():
        with c.registry() as reg:
            return [x.as_dict() for x in reg.list_customers()]

    c.emit(_run(go), [("id", "CUSTOMER"), ("name", "NAME"), ("block", "ADDRESS BLOCK")])


@customers.command("add")
def customers_add(
    typer_ctx: typer.Context,
    customer: str,
    name: Annotated[str | None, typer.Option(help="display name (default: the id)")] = None,
    block: Annotated[str | None, typer.Option(help="pin its address block (CIDR)")] = None,
    actor: Annotated[str, typer.Option(help="who, for the audit log")] = "cli",
) -> None:
    """Create a customer with a block of its own (nothing changes if it exists)."""
    c = _ctx(typer_ctx)

    def go():
        with c.registry() as reg:
            return reg.ensure_customer(customer, actor=actor, name=name, block=block)

    result = _run(go)
    c.emit([{**result.items[0].as_dict(), "changed": result.changed}],
           [("id", "CUSTOMER"), ("name", "NAME"), ("block", "ADDRESS BLOCK"),
            ("changed", "CHANGED")])  # fmt: skip


# -- devices -----------------------------------------------------------------------------------

_DEVICE_COLUMNS = [("customer_id", "CUSTOMER"), ("id", "DEVICE"), ("vpn_address", "VPN ADDRESS"),
                   ("gateway", "GATEWAY"), ("state", "STATE"), ("connected", "ONLINE"),
                   ("last_seen", "LAST SEEN"), ("certificate_expires", "CERT EXPIRES")]  # fmt: skip


@devices.callback(invoke_without_command=True)
def devices_root(
    typer_ctx: typer.Context,
    customer: Annotated[str | None, typer.Option(help="only this customer's")] = None,
) -> None:
    """Devices (with no subcommand: the fleet table)."""
    if typer_ctx.invoked_subcommand is None:
        devices_list(typer_ctx, customer=customer)


@devices.command("list")
def devices_list(
    typer_ctx: typer.Context,
    customer: Annotated[str | None, typer.Option(help="only this customer's")] = None,
    online: Annotated[bool | None, typer.Option("--online/--offline", help="filter")] = None,
) -> None:
    """The fleet: address, gateway, online state, last seen, certificate expiry."""
    c = _ctx(typer_ctx)

    def go():
        with c.registry() as reg:
            return reg.device_statuses(customer_id=customer)

    rows = [s.as_dict() for s in _run(go) if online is None or s.device.connected == online]
    rows.sort(key=lambda r: (r["customer_id"], r["id"]))
    c.emit(rows, _DEVICE_COLUMNS)


@devices.command("show")
def devices_show(typer_ctx: typer.Context, device_id: str) -> None:
    """One device, with its certificates."""
    c = _ctx(typer_ctx)

    def go():
        with c.registry() as reg:
            found = reg.device_statuses(device_ids=[device_id])
            if not found:
                from .errors import NotFound

                raise NotFound(f"device {device_id!r} not found")
            status = found[0]
            certs = reg.certificates(status.device.customer_id, device_id)
            return status, certs

    status, certs = _run(go)
    row = status.as_dict()
    if c.json:
        print(json.dumps({**row, "certificates": [x.as_dict() for x in certs]}, indent=2))
        return
    c.emit([row], _DEVICE_COLUMNS)
    c.emit([x.as_dict() for x in certs],
           [("serial", "SERIAL"), ("not_before", "NOT BEFORE"), ("not_after", "NOT AFTER"),
            ("revoked_at", "REVOKED"), ("revocation_reason", "REASON")])  # fmt: skip


@devices.command("revoke")
def devices_revoke(
    typer_ctx: typer.Context,
    device_ids: list[str],
    reason: Annotated[str, typer.Option(help="RFC 5280 reason")] = "unspecified",
    actor: Annotated[str, typer.Option(help="who, for the audit log")] = "cli",
) -> None:
    """Revoke devices and their certificates in the registry (gateways hear it from the
    change feed and end the tunnels at once; publish the CRL with playbooks/revoke_device.yml)."""
    c = _ctx(typer_ctx)

    def go():
        with c.registry() as reg, reg.transaction():
            by_customer: dict[str, list[str]] = {}
            for device_id in device_ids:
                found = reg.find_device(device_id)
                by_customer.setdefault(found.customer_id, []).append(device_id)
            changed = []
            for customer_id, ids in by_customer.items():
                changed += reg.revoke_devices(customer_id, ids, actor=actor, reason=reason).changes
            return changed

    changes = _run(go)
    c.emit([{"action": ch.action, "target": ch.target} for ch in changes],
           [("action", "ACTION"), ("target", "TARGET")])  # fmt: skip


@devices.command("rotate")
def devices_rotate(
    device_ids: list[str],
    playbooks: Annotated[Path | None, typer.Option(help="the checkout's playbooks/")] = None,
    inventory: Annotated[str | None, typer.Option("-i", "--inventory")] = None,
    dry_run: Annotated[bool, typer.Option("--check", help="ansible's check mode")] = False,
    within_days: Annotated[
        int, typer.Option(help="rotate certificates ending within this many days")
    ] = 729,
) -> None:
    """Give devices a new certificate on the same key (playbooks/rotate_certs.yml), with a
    progress line per task. The default window, a day short of the 730-day validity, takes
    every certificate but one issued today (vpn_pki refuses a window as long as the validity)."""
    from .validation import device_id

    _run(lambda: [device_id(d) for d in device_ids])
    book = (playbooks or Path(__file__).resolve().parents[2] / "playbooks") / "rotate_certs.yml"
    if not book.is_file():
        raise _fail(f"{book} not found: run from a checkout or give --playbooks")
    argv = [str(Path(sys.executable).with_name("ansible-playbook")), str(book),
            "--limit", ",".join(device_ids), "-e", f"renew_within_days={within_days}"]  # fmt: skip
    if inventory:
        argv += ["-i", inventory]
    if dry_run:
        argv.append("--check")
    raise typer.Exit(_follow_playbook(argv, cwd=book.parent.parent))


def _follow_playbook(argv: list[str], cwd: Path) -> int:
    """Run ansible-playbook with a rich status line per task; its log goes to a file."""
    import subprocess

    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    log_path = cwd / "build" / "iotistic-vpn-rotate.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with (
        log_path.open("w") as log,
        Progress(
            SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), transient=True
        ) as progress,
    ):
        task = progress.add_task("starting ansible-playbook", total=None)
        proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)  # fmt: skip
        recap = []
        for line in proc.stdout:
            log.write(line)
            if line.startswith("TASK ["):
                progress.update(task, description=line.strip(" *\n")[:100])
            elif recap or line.startswith("PLAY RECAP"):
                recap.append(line.rstrip())
        code = proc.wait()
    for line in recap:
        print(line)
    if code:
        print(f"iotistic-vpn: ansible-playbook failed ({code}); its log: {log_path}",
              file=sys.stderr)  # fmt: skip
    return 1 if code else 0


# -- tokens ------------------------------------------------------------------------------------

_TOKEN_COLUMNS = [("id", "ID"), ("name", "NAME"), ("customer_id", "CUSTOMER"),
                  ("devices", "DEVICES"), ("ports", "PORTS"), ("read_only", "READ ONLY"),
                  ("expires_at", "EXPIRES"), ("revoked_at", "REVOKED")]  # fmt: skip


@tokens.command("list")
def tokens_list(
    typer_ctx: typer.Context,
    customer: Annotated[str | None, typer.Option(help="only this customer's")] = None,
    all_: Annotated[bool, typer.Option("--all", help="include revoked tokens")] = False,
) -> None:
    """Tokens (never their secrets)."""
    c = _ctx(typer_ctx)

    def go():
        with c.registry() as reg:
            return reg.list_tokens(customer, include_revoked=all_)

    c.emit([t.as_dict() for t in _run(go)], _TOKEN_COLUMNS)


@tokens.command("create")
def tokens_create(
    typer_ctx: typer.Context,
    name: str,
    customer: Annotated[str | None, typer.Option(help="scope (none: an operator token)")] = None,
    device: Annotated[list[str] | None, typer.Option(help="limit to this device (repeat)")] = None,
    port: Annotated[
        list[int] | None, typer.Option(help="device port (repeat; default 48484)")
    ] = None,
    read_write: Annotated[bool, typer.Option(help="allow POST/PUT/PATCH/DELETE")] = False,
    expires: Annotated[str | None, typer.Option(help="ISO 8601 time, with its zone")] = None,
    actor: Annotated[str, typer.Option(help="who, for the audit log")] = "cli",
) -> None:
    """Create a token; its value is printed once, now."""
    from .conventions import DEVICE_AGENT_PORT
    from .validation import aware_time

    c = _ctx(typer_ctx)

    def go():
        when = None if expires is None else aware_time(expires, "expiry")
        with c.registry() as reg:
            return reg.ensure_token(
                name, customer_id=customer, actor=actor, devices=device or None,
                ports=port or [DEVICE_AGENT_PORT], read_only=not read_write, expires_at=when,
            )  # fmt: skip

    result, issued = _run(go)
    if issued is None:
        raise _fail(f"a live token named {name!r} exists already (its value was shown once)")
    if c.json:
        print(json.dumps({**result.items[0].as_dict(), "token": issued.value}, indent=2))
    else:
        c.emit([result.items[0].as_dict()], _TOKEN_COLUMNS)
        c.out.print(f"token (shown once): {issued.value}", markup=False)


@tokens.command("revoke")
def tokens_revoke(
    typer_ctx: typer.Context,
    token_id: str,
    actor: Annotated[str, typer.Option(help="who, for the audit log")] = "cli",
) -> None:
    """Revoke a token by id; the API refuses it from its next request."""
    c = _ctx(typer_ctx)

    def go():
        with c.registry() as reg:
            return reg.revoke_token(token_id, actor=actor)

    result = _run(go)
    c.emit([{**result.items[0].as_dict(), "changed": result.changed}], _TOKEN_COLUMNS)


# -- provisioning tokens -----------------------------------------------------------------------

_PROVISIONING_COLUMNS = [("id", "ID"), ("customer_id", "CUSTOMER"), ("name", "NAME"),
                         ("uses", "USES"), ("max_uses", "MAX"), ("device_pattern", "DEVICES"),
                         ("expires_at", "EXPIRES"), ("revoked_at", "REVOKED")]  # fmt: skip


@provisioning_tokens.command("list")
def provisioning_tokens_list(
    typer_ctx: typer.Context,
    customer: Annotated[str | None, typer.Option(help="only this customer's")] = None,
    all_: Annotated[bool, typer.Option("--all", help="include revoked tokens")] = False,
) -> None:
    """Provisioning tokens and their uses (never their secrets)."""
    c = _ctx(typer_ctx)

    def go():
        with c.registry() as reg:
            return reg.list_provisioning_tokens(customer, include_revoked=all_)

    c.emit([t.as_dict() for t in _run(go)], _PROVISIONING_COLUMNS)


@provisioning_tokens.command("create")
def provisioning_tokens_create(
    typer_ctx: typer.Context,
    customer: str,
    name: str,
    max_uses: Annotated[int, typer.Option(help="devices it may enroll")] = 1,
    devices: Annotated[str | None, typer.Option(help="device-id glob, e.g. 'pump-*'")] = None,
    expires: Annotated[str | None, typer.Option(help="ISO 8601 time, with its zone")] = None,
    days: Annotated[int, typer.Option(help="valid this many days (without --expires)")] = 7,
    actor: Annotated[str, typer.Option(help="who, for the audit log")] = "cli",
) -> None:
    """Create a provisioning token; its value is printed once, now."""
    c = _ctx(typer_ctx)

    def go():
        from .validation import aware_time

        when = (
            aware_time(expires, "expiry")
            if expires
            else dt.datetime.now(dt.UTC) + dt.timedelta(days=days)
        )
        with c.registry() as reg:
            return reg.ensure_provisioning_token(
                customer, name, actor=actor, expires_at=when, max_uses=max_uses,
                device_pattern=devices,
            )  # fmt: skip

    result, issued = _run(go)
    if issued is None:
        raise _fail(f"a live provisioning token named {name!r} exists already for {customer!r}"
                    " (its value was shown once)")  # fmt: skip
    if c.json:
        print(json.dumps({**result.items[0].as_dict(), "token": issued.value}, indent=2))
    else:
        c.emit([result.items[0].as_dict()], _PROVISIONING_COLUMNS)
        c.out.print(f"token (shown once): {issued.value}", markup=False)


@provisioning_tokens.command("revoke")
def provisioning_tokens_revoke(
    typer_ctx: typer.Context,
    token_id: str,
    actor: Annotated[str, typer.Option(help="who, for the audit log")] = "cli",
) -> None:
    """Revoke a provisioning token by id: no device enrolls with it from now on."""
    c = _ctx(typer_ctx)

    def go():
        with c.registry() as reg:
            return reg.revoke_provisioning_token(token_id, actor=actor)

    result = _run(go)
    c.emit([{**result.items[0].as_dict(), "changed": result.changed}], _PROVISIONING_COLUMNS)


# -- audit -------------------------------------------------------------------------------------


@app.command()
def audit(
    typer_ctx: typer.Context,
    customer: Annotated[str | None, typer.Option()] = None,
    device_id: Annotated[str | None, typer.Option("--device")] = None,
    token_id: Annotated[str | None, typer.Option("--token")] = None,
    since: Annotated[str | None, typer.Option(help="ISO 8601 time")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10000)] = 50,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="print new entries")] = False,
    interval: Annotated[float, typer.Option(help="--follow: seconds between polls")] = 1.0,
    max_polls: Annotated[int, typer.Option(hidden=True)] = 0,
) -> None:
    """The audit log: changes and API requests (newest last)."""
    c = _ctx(typer_ctx)
    columns = [("id", "ID"), ("at", "AT"), ("actor", "ACTOR"), ("action", "ACTION"),
               ("target", "TARGET"), ("status", "STATUS"), ("path", "PATH")]  # fmt: skip
    when = _run(lambda: _iso(since)) if since else None
    filters = {"customer_id": customer, "device_id": device_id, "token_id": token_id}

    def read(after: int | None) -> list[dict]:
        def go():
            with c.registry() as reg:
                if after is None:
                    return list(reversed(reg.audit_log(limit=limit, since=when, **filters)))
                return reg.audit_log(limit=limit, after_id=after, **filters)

        return [_audit_row(e) for e in _run(go)]

    rows = read(None)
    c.emit(rows, columns)
    last = rows[-1]["id"] if rows else 0
    polls = 0
    while follow and (max_polls == 0 or polls < max_polls):
        time.sleep(interval)
        polls += 1
        fresh = read(last)
        if fresh:
            c.emit(fresh, columns)
            last = fresh[-1]["id"]


def _iso(value: str) -> dt.datetime:
    from .errors import InvalidValue

    try:
        return dt.datetime.fromisoformat(value)
    except ValueError:
        raise InvalidValue("time", value, "use ISO 8601") from None


def _audit_row(entry) -> dict:
    row = entry.as_dict()
    row["status"] = entry.detail.get("status")
    row["path"] = entry.detail.get("path")
    return row


# -- PKI status --------------------------------------------------------------------------------

_EXPIRY_COLUMNS = [("what", "WHAT"), ("ends", "ENDS"), ("days_left", "DAYS LEFT"),
                   ("state", "STATE"), ("detail", "DETAIL"), ("path", "FILE")]  # fmt: skip


def _expiries(typer_ctx: typer.Context, items, warn_days: int) -> None:
    c = _ctx(typer_ctx)
    window = dt.timedelta(days=warn_days)
    rows = [
        {"what": e.what, "ends": e.ends.isoformat(), "days_left": round(e.days_left(), 1),
         "state": e.state(window), "detail": e.detail, "path": e.path}
        for e in items
    ]  # fmt: skip
    c.emit(rows, _EXPIRY_COLUMNS)
    if any(r["state"] != "ok" for r in rows):
        raise typer.Exit(1)


@ca.command("status")
def ca_status(
    typer_ctx: typer.Context,
    ca_dir: Annotated[Path, typer.Option(help="the CA directory (vpn_ca's path)")] = Path(
        "build/pki/ca"
    ),
    warn_days: Annotated[int, typer.Option(min=0)] = 90,
) -> None:
    """When the root and issuing CA end; exit 1 inside the warning window."""
    from . import pki

    _expiries(typer_ctx, _run(lambda: pki.ca_status(ca_dir)), warn_days)


@crl.command("status")
def crl_status(
    typer_ctx: typer.Context,
    path: Annotated[Path, typer.Option("--crl", help="the CRL file")] = Path("build/pki/crl.pem"),
    warn_days: Annotated[int, typer.Option(min=0)] = 7,
) -> None:
    """When the CRL's nextUpdate comes; exit 1 inside the warning window."""
    from . import pki

    _expiries(typer_ctx, [_run(lambda: pki.crl_status(path))], warn_days)


# -- a device through the API ------------------------------------------------------------------

ApiUrl = Annotated[str, typer.Option("--api", envvar="IOTISTIC_VPN_API", help="the API's URL")]
ApiToken = Annotated[str, typer.Option(envvar="IOTISTIC_VPN_TOKEN", help="an API token")]
Data = Annotated[str | None, typer.Option(help="request body ('@file' reads a file)")]


def _through_api(method: str, api: str, token: str, device_id: str, path: str, data: str | None):
    import httpx

    body = None
    if data is not None:
        body = Path(data[1:]).read_bytes() if data.startswith("@") else data.encode()
    url = f"{api.rstrip('/')}/v1/devices/{device_id}/proxy/{path.lstrip('/')}"
    try:
        with httpx.Client(timeout=30) as client:
            response = client.request(method, url, content=body,
                                      headers={"Authorization": f"Bearer {token}"})  # fmt: skip
    except httpx.HTTPError as exc:
        raise _fail(f"{api}: {exc}") from None
    sys.stdout.write(response.text if response.text.endswith("\n") or not response.text
                     else response.text + "\n")  # fmt: skip
    if response.is_error:
        raise _fail(f"{method} {path} on {device_id}: HTTP {response.status_code}")


def _verb(method: str):
    def command(device_id: str, path: str, api: ApiUrl, token: ApiToken, data: Data = None):
        _through_api(method, api, token, device_id, path, data)

    command.__doc__ = f"{method} PATH on the device's agent, through the API."
    return command


for _method in ("get", "post", "put", "delete"):
    device.command(_method)(_verb(_method.upper()))


@device.command("tunnel")
def device_tunnel(
    device_id: str,
    port: int,
    customer: Annotated[str, typer.Option(help="the device's customer")],
    proxy: Annotated[
        str,
        typer.Option(
            envvar="IOTISTIC_VPN_TUNNEL_PROXY",
            help="the API's tunnel listener: host:port or unix:PATH",
        ),
    ],
    token: ApiToken,
    tls: Annotated[bool, typer.Option(help="the listener speaks TLS")] = False,
    ca: Annotated[Path | None, typer.Option(help="root that verifies the listener")] = None,
) -> None:
    """Carry stdin/stdout to PORT of the device through the API (SSH's ProxyCommand)."""
    from . import connect_client

    where = connect_client.Proxy(proxy, tls=tls, ca_file=str(ca) if ca else None)
    sock, early = _run(lambda: connect_client.open_tunnel(where, device_id, customer, port, token))
    connect_client.splice(sock, early)


def main(argv: list[str] | None = None) -> int:
    """The entry point: usage errors exit 2 (typer's message), failures 1 (one line)."""
    try:
        app(args=argv, prog_name="iotistic-vpn")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
