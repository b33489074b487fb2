"""`iotistic-vpn`: the operator's command line over the registry (a thin adapter)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from .errors import IotisticVpnError
from .registry import Device, Registry

__all__ = ["format_table", "main"]

DSN_ENV = "IOTISTIC_VPN_DSN"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Left-aligned columns, as `column -t` would print them."""
    cells = [[str(h) for h in headers]] + [["-" if v is None else str(v) for v in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
             for row in cells]  # fmt: skip
    return "\n".join(lines)


def _device_rows(devices: Sequence[Device]) -> list[list[object]]:
    return [
        [d.customer_id, d.id, d.vpn_address, d.gateway, d.state,
         "yes" if d.connected else "no"]
        for d in sorted(devices, key=lambda d: (d.customer_id, d.id))
    ]  # fmt: skip


def _cmd_migrate(reg: Registry, args: argparse.Namespace) -> int:
    applied = reg.migrate()
    print(f"applied: {', '.join(applied)}" if applied else "schema is up to date")
    return 0


def _cmd_devices(reg: Registry, args: argparse.Namespace) -> int:
    devices = reg.list_devices(customer_id=args.customer, state=args.state)
    if args.json:
        print(json.dumps([d.as_dict() for d in devices], indent=2))
    else:
        headers = ["CUSTOMER", "DEVICE", "VPN ADDRESS", "GATEWAY", "STATE", "CONNECTED"]
        print(format_table(headers, _device_rows(devices)))
    return 0


def _cmd_customers(reg: Registry, args: argparse.Namespace) -> int:
    rows = [[c.id, c.name, c.block] for c in reg.list_customers()]
    print(format_table(["CUSTOMER", "NAME", "ADDRESS BLOCK"], rows))
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="iotistic-vpn", description=__doc__)
    parser.add_argument(
        "--dsn",
        default=os.environ.get(DSN_ENV, ""),
        help=f"registry connection string (default ${DSN_ENV}, then libpq's PG* variables)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("migrate", help="apply pending registry migrations").set_defaults(
        func=_cmd_migrate
    )
    devices = sub.add_parser("devices", help="list devices, their addresses and state")
    devices.add_argument("--customer")
    devices.add_argument("--state", choices=["provisioned", "active", "revoked"])
    devices.add_argument("--json", action="store_true")
    devices.set_defaults(func=_cmd_devices)
    sub.add_parser("customers", help="list customers and their blocks").set_defaults(
        func=_cmd_customers
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        with Registry(args.dsn, connect_timeout=5) as reg:
            return args.func(reg, args)
    except IotisticVpnError as exc:
        print(f"iotistic-vpn: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
