"""Run the cloud API: `python -m iotistic_vpn.api` (settings from IOTISTIC_API_* variables)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import ssl
import sys

import uvicorn
from prometheus_client import start_http_server
from pydantic import ValidationError

from ..errors import IotisticVpnError
from .app import create_app
from .renew import ClientCertH11Protocol
from .settings import ApiSettings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m iotistic_vpn.api", description=__doc__)
    parser.add_argument("--host", default="0.0.0.0")  # noqa: S104 - behind the load balancer
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--uds", help="listen on this unix socket instead of host:port")
    parser.add_argument("--metrics-port", type=int, default=9108, help="0: no metrics listener")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
    try:
        settings = ApiSettings()
    except ValidationError as exc:
        # One line per bad variable, never its value (the DSN holds a password).
        for error in exc.errors():
            name = "IOTISTIC_API_" + "_".join(str(p) for p in error["loc"]).upper()
            print(f"{name}: {error['msg']}", file=sys.stderr)
        return 2
    try:
        app = create_app(settings)
    except IotisticVpnError as exc:  # a file the settings name is missing or bad
        print(f"iotistic_vpn.api: {exc}", file=sys.stderr)
        return 2
    if args.metrics_port:
        start_http_server(args.metrics_port, registry=app.api.metrics.registry)
    common = {"log_level": "info", "access_log": False, "proxy_headers": True,
              "server_header": False}  # fmt: skip
    configs = [uvicorn.Config(app, host=args.host, port=args.port, uds=args.uds, **common)]
    if settings.tls_listen:
        host, port = settings.tls_address()
        # Gateways renew their devices' certificates with a client certificate (api/renew.py);
        # devices enrolling present none, so it is asked for, not required.
        client_ca = {}
        if settings.tls_client_ca:
            client_ca = {"ssl_ca_certs": str(settings.tls_client_ca),
                         "ssl_cert_reqs": ssl.CERT_OPTIONAL}  # fmt: skip
        # The same app, its startup and shutdown run once (by the plain listener's server).
        configs.append(uvicorn.Config(app, host=host, port=port, lifespan="off",
                                      ssl_certfile=settings.tls_cert, ssl_keyfile=settings.tls_key,
                                      http=ClientCertH11Protocol, **client_ca,
                                      **common))  # fmt: skip
    asyncio.run(_serve([uvicorn.Server(config) for config in configs]))
    return 0


async def _serve(servers: list[uvicorn.Server]) -> None:
    """Every listener until one ends (a signal reaches the last one installed): then all."""
    tasks = [asyncio.create_task(server.serve()) for server in servers]
    _, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for server in servers:
        server.should_exit = True
    await asyncio.gather(*pending)


if __name__ == "__main__":
    sys.exit(main())
