"""The cloud API as its own process on loopback, against the suite's PostgreSQL, no gateway.

For what needs no tunnel (the OpenAPI schema, enrollment, tokens): devices are unknown or
offline here. `api_login` makes a login of the API's group role, so the API runs with
exactly the registry rights production gives it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from psycopg import sql
from psycopg.conninfo import make_conninfo

from iotistic_vpn import conventions, pki
from iotistic_vpn.registry import Registry

__all__ = [
    "api_login",
    "free_port",
    "loopback_api",
    "make_csr",
    "openssl_verify",
    "scratch_database",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def api_login(pg_server, dbname: str) -> str:
    """The DSN of a new login in the API's group role (iotistic_api) on dbname."""
    name, password = f"api-{uuid.uuid4().hex[:8]}", secrets.token_urlsafe(16)
    with pg_server.connect() as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {} IN ROLE {}").format(
                sql.Identifier(name), sql.Literal(password),
                sql.Identifier(conventions.REGISTRY_API_ROLE),
            )
        )  # fmt: skip
    return make_conninfo(host=pg_server.host, port=pg_server.port, dbname=dbname, user=name,
                         password=password)  # fmt: skip


@contextlib.contextmanager
def loopback_api(
    work: Path, dsn: str, env: dict[str, str] | None = None, port: int | None = None
) -> Iterator[str]:
    """The API on 127.0.0.1 (base URL yielded) once /healthz answers; stopped after."""
    work.mkdir(parents=True, exist_ok=True)
    ca = pki.ensure_ca(pki.CaFiles.at(work / "tunnel-ca")).ca
    client = pki.ensure_gateway_cert(ca, "cloud-api", work / "api", purpose="tunnel-client")
    port = port or free_port()
    full_env = {
        **os.environ,
        "IOTISTIC_API_REGISTRY_DSN": dsn,
        "IOTISTIC_API_TUNNEL_CERT": client.cert_path,
        "IOTISTIC_API_TUNNEL_KEY": client.key_path,
        "IOTISTIC_API_TUNNEL_CA": str(work / "tunnel-ca" / pki.CA_CHAIN),
        "IOTISTIC_API_AUDIT_SPOOL": str(work / "audit.db"),
        "IOTISTIC_API_CONNECT_PROXY_LISTEN": "",
        **(env or {}),
    }
    log_path = work / "api.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "iotistic_vpn.api", "--host", "127.0.0.1", "--port",
             str(port), "--metrics-port", "0"],
            env=full_env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 20
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                        break
                assert time.monotonic() < deadline and proc.poll() is None, log_path.read_text()
                time.sleep(0.1)
            yield base
        finally:
            proc.terminate()
            proc.wait(10)


@contextlib.contextmanager
def scratch_database(pg_server, prefix: str) -> Iterator[str]:
    """A migrated database of its own (DSN yielded, as the owner), dropped after."""
    dbname = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with pg_server.connect() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    dsn = pg_server.dsn_for(dbname)
    with Registry(dsn) as reg:
        reg.migrate()
    try:
        yield dsn
    finally:
        with pg_server.connect() as conn:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(dbname)))


def make_csr(key=None, subject: list | None = None) -> tuple[str, object]:
    """A CSR (PEM) for key (a new EC P-256 one by default) with subject's (oid, value) pairs."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(oid, value) for oid, value in subject or []])
    csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM).decode(), key


def openssl_verify(work: Path, chain_pem: str, cert_pem: str) -> None:
    """Assert that openssl verifies cert_pem as a TLS client certificate under chain_pem."""
    (work / "chain.pem").write_text(chain_pem)
    (work / "leaf.crt").write_text(cert_pem)
    verify = subprocess.run(["openssl", "verify", "-CAfile", work / "chain.pem", "-purpose",
                             "sslclient", work / "leaf.crt"],
                            capture_output=True, text=True, check=False)  # fmt: skip
    assert verify.returncode == 0, verify.stdout + verify.stderr
