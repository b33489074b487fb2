"""Enrollment benchmark: N devices enroll themselves in parallel through POST /v1/enroll.

The real API process (uvicorn, one worker, as a login of the iotistic_api role) against a
durable (fsync on) throwaway PostgreSQL, one provisioning token for all of them, C clients at
once, each device with its own key and CSR (made before the clock starts). The anchor is raw
`cryptography` verifying and signing the same CSRs in this process (bench_pki.raw_issue).
Prints devices enrolled per second, the anchor's rate and their ratio; asserts nothing.

  .venv/bin/python bench/bench_enroll.py [--devices 500] [--clients 16]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402

from bench.bench_pki import make_csrs, raw_issue  # noqa: E402
from iotistic_vpn import pki  # noqa: E402
from iotistic_vpn.pki import tlscrypt  # noqa: E402
from iotistic_vpn.registry import Registry  # noqa: E402
from tests.support.loopback_api import api_login, loopback_api  # noqa: E402
from tests.support.postgres import throwaway_cluster  # noqa: E402

WORK = REPO / "build" / "bench-enroll"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=500)
    parser.add_argument("--clients", type=int, default=16)
    args = parser.parse_args()
    shutil.rmtree(WORK, ignore_errors=True)
    ca = pki.ensure_ca(pki.CaFiles.at(WORK / "ca")).ca
    (WORK / "tc.key").write_bytes(tlscrypt.generate_server_key())
    csrs = [c.decode() for c in make_csrs(args.devices)]
    start = time.perf_counter()
    for i, csr in enumerate(csrs):
        raw_issue(ca, csr.encode(), "acme", f"anchor-{i}")
    anchor = args.devices / (time.perf_counter() - start)
    with throwaway_cluster(durable=True) as pg:
        with pg.connect() as conn:
            conn.execute("CREATE DATABASE bench_enroll")
        dsn = pg.dsn_for("bench_enroll")
        with Registry(dsn) as reg:
            reg.migrate()
            reg.ensure_customer("acme", actor="bench")
            _, token = reg.ensure_provisioning_token(
                "acme", "bench", actor="bench", max_uses=args.devices,
                expires_at=datetime.now(UTC) + timedelta(hours=1),
            )  # fmt: skip
        env = {
            "IOTISTIC_API_ENROLL_PKI_DIR": str(WORK / "ca"),
            "IOTISTIC_API_ENROLL_TLS_CRYPT_SERVER_KEY": str(WORK / "tc.key"),
            "IOTISTIC_API_ENROLL_REMOTES": "vpn.example.net",
            "IOTISTIC_API_ENROLL_BURST_PER_TOKEN": str(args.devices),
            "IOTISTIC_API_ENROLL_BURST_PER_SOURCE": str(args.devices),
        }
        with loopback_api(WORK / "api", api_login(pg, "bench_enroll"), env) as base:
            auth = {"Authorization": f"Bearer {token.value}"}
            limits = httpx.Limits(max_connections=args.clients)
            client = httpx.Client(base_url=base, timeout=60, limits=limits, headers=auth)

            def enroll(i: int) -> int:
                body = {"device": f"dev-{i}", "csr": csrs[i]}
                return client.post("/v1/enroll", json=body).status_code

            start = time.perf_counter()
            with ThreadPoolExecutor(args.clients) as pool:
                statuses = list(pool.map(enroll, range(args.devices)))
            elapsed = time.perf_counter() - start
        with Registry(dsn) as reg:
            registered = len(reg.device_statuses(customer_id="acme"))
    rate = args.devices / elapsed
    print(f"{args.devices} devices, {args.clients} clients: {elapsed:.2f} s,"
          f" {rate:.0f} enrolled/s ({statuses.count(201)} answered 201, {registered} in the"
          f" registry)")  # fmt: skip
    print(f"raw cryptography verify+sign, one process: {anchor:.0f}/s; ratio {rate / anchor:.3f}")
    return 0 if statuses.count(201) == args.devices == registered else 1


if __name__ == "__main__":
    sys.exit(main())
