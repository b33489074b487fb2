"""Throwaway PostgreSQL for the suite: one cluster per session, a fresh database per test.

initdb refuses root and the tests run as root, so the cluster lives in a temp dir owned by
`postgres` and every server binary runs through `runuser -u postgres`. TCP listens on a free
127.0.0.1 port with scram passwords (so DSNs carry a password, as in production); the unix
socket in the same dir trusts local peers. fsync and friends are off: the data is disposable.

pytest-postgresql was tried first: its executor runs through a runuser wrapper, but its
process factory puts the data dir and the password file under root-only temp dirs, so only
the pg_ctl wrapper would be left to reuse, at the price of four more pinned packages.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

PG_BIN = Path(os.environ.get("IOTISTIC_PG_BIN", "/usr/lib/postgresql/15/bin"))
TEMPLATE_DB = "registry_template"
_PREFIX = "iotistic-pg-"

__all__ = ["PgServer", "pg_server", "registry_dsn", "registry_template"]


def _as_postgres(*cmd: str | Path) -> subprocess.CompletedProcess[str]:
    """Run a server binary as the postgres user and fail loudly with its output."""
    proc = subprocess.run(
        ["runuser", "-u", "postgres", "--", *map(str, cmd)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class PgServer:
    """A running throwaway cluster: where it listens, how to log in, how to stop it."""

    base: Path
    port: int
    host: str = "127.0.0.1"
    user: str = "postgres"
    password: str = field(default_factory=lambda: secrets.token_urlsafe(16), repr=False)

    @property
    def data_dir(self) -> Path:
        return self.base / "data"

    @property
    def socket_dir(self) -> Path:
        return self.base

    @property
    def dsn(self) -> str:
        """Superuser DSN of the maintenance database."""
        return self.dsn_for("postgres")

    def dsn_for(self, dbname: str) -> str:
        """Superuser DSN (TCP, password) of one database."""
        return make_conninfo(
            host=self.host, port=self.port, user=self.user, password=self.password, dbname=dbname
        )

    def init(self, *, durable: bool = False) -> None:
        """Create the cluster (initdb) with the superuser's password from a postgres-owned file."""
        pwfile = self.base / "pwfile"
        pwfile.write_text(self.password)
        shutil.chown(pwfile, "postgres", "postgres")
        pwfile.chmod(0o600)
        _as_postgres(
            PG_BIN / "initdb", "-D", self.data_dir, "-U", self.user, f"--pwfile={pwfile}",
            "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-locale",
            "--no-sync", "--no-instructions",
        )  # fmt: skip
        pwfile.unlink()
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.socket_dir}'",
            "max_connections": "200",
            # Tests need speed, not crash safety; benchmarks that count commits ask for durable.
            "fsync": "on" if durable else "off",
            "synchronous_commit": "on" if durable else "off",
            "full_page_writes": "on" if durable else "off",
            "logging_collector": "off",
        }
        conf = "".join(f"{key} = {value}\n" for key, value in settings.items())
        with (self.data_dir / "postgresql.conf").open("a") as fh:
            fh.write(conf)

    def running(self) -> bool:
        """Whether pg_ctl sees the postmaster alive."""
        proc = subprocess.run(
            ["runuser", "-u", "postgres", "--", str(PG_BIN / "pg_ctl"), "status", "-D",
             str(self.data_dir)],
            capture_output=True, check=False,
        )  # fmt: skip
        return proc.returncode == 0

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        if not self.running():
            _as_postgres(
                PG_BIN / "pg_ctl", "start", "-w", "-t", "30", "-D", self.data_dir,
                "-l", self.base / "server.log",
            )  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (mode fast or immediate); a no-op when it is already down."""
        if self.running():
            _as_postgres(PG_BIN / "pg_ctl", "stop", "-w", "-m", mode, "-D", self.data_dir)

    def connect(self, dbname: str = "postgres") -> psycopg.Connection:
        """A superuser autocommit connection for test setup and checks."""
        return psycopg.connect(self.dsn_for(dbname), autocommit=True, connect_timeout=5)


def _sweep_orphans() -> None:
    """Stop clusters whose pytest died without cleaning up (SIGKILL, CI timeout)."""
    for owner in Path(tempfile.gettempdir()).glob(f"{_PREFIX}*/owner.pid"):
        try:
            os.kill(int(owner.read_text()), 0)
            continue  # its session is still running
        except (ProcessLookupError, ValueError):
            pass
        orphan = PgServer(base=owner.parent, port=0)
        try:
            orphan.stop("immediate")
        finally:
            shutil.rmtree(orphan.base, ignore_errors=True)


@contextmanager
def throwaway_cluster(*, durable: bool = False) -> Iterator[PgServer]:
    """A fresh PostgreSQL 15 cluster in a temp dir, always stopped and removed at the end.

    durable=True keeps fsync and synchronous commits on, for benchmarks that count commits.
    """
    _sweep_orphans()
    base = Path(tempfile.mkdtemp(prefix=_PREFIX))
    shutil.chown(base, "postgres", "postgres")
    (base / "owner.pid").write_text(str(os.getpid()))
    server = PgServer(base=base, port=_free_port())
    try:
        server.init(durable=durable)
        server.start()
        yield server
    finally:
        try:
            server.stop("immediate")
        finally:
            shutil.rmtree(base, ignore_errors=True)


@contextmanager
def tls_cluster(pki: Path) -> Iterator[tuple[PgServer, Path]]:
    """A migrated throwaway cluster serving TLS for the host name `localhost` only, with a
    certificate from a CA the package's PKI code makes in pki; yields it and the CA chain."""
    from iotistic_vpn.pki.ca import CaFiles, ensure_ca, load_issuing_ca
    from iotistic_vpn.pki.gateway import ensure_gateway_cert
    from iotistic_vpn.registry import Registry

    files = CaFiles.at(pki / "ca")
    ensure_ca(files, name="Registry test")
    ensure_gateway_cert(load_issuing_ca(files), "registry", pki / "server", dns_names=["localhost"])
    with throwaway_cluster() as server:
        for suffix in ("crt", "key"):
            target = server.data_dir / f"server.{suffix}"
            shutil.copy(pki / "server" / f"registry.{suffix}", target)
            shutil.chown(target, "postgres", "postgres")
            target.chmod(0o600)
        with server.connect() as conn:
            conn.execute("ALTER SYSTEM SET ssl = on")
            conn.execute("SELECT pg_reload_conf()")
        with server.connect() as conn:
            assert conn.execute("SHOW ssl").fetchone()[0] == "on"
        with Registry(server.dsn_for("postgres")) as reg:
            reg.migrate()
        yield server, files.chain


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """Session-wide throwaway cluster for the tests."""
    if not (PG_BIN / "initdb").exists():
        pytest.skip(f"PostgreSQL server binaries not found in {PG_BIN} (run make deps)")
    with throwaway_cluster() as server:
        yield server


@pytest.fixture(scope="session")
def registry_template(pg_server: PgServer) -> str:
    """Name of a database migrated once, cloned for every test."""
    from iotistic_vpn.registry import Registry

    with pg_server.connect() as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(TEMPLATE_DB)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(TEMPLATE_DB)))
    with Registry(pg_server.dsn_for(TEMPLATE_DB)) as registry:
        registry.migrate()
    return TEMPLATE_DB


@pytest.fixture
def registry_dsn(pg_server: PgServer, registry_template: str) -> Iterator[str]:
    """DSN of a fresh, migrated database of this test alone (a copy of the template)."""
    # A test before this one may have stopped the server on purpose; bring it back.
    pg_server.start()
    name = f"t_{uuid.uuid4().hex[:12]}"
    with pg_server.connect() as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(registry_template)
            )
        )
    yield pg_server.dsn_for(name)
    pg_server.start()
    with pg_server.connect() as conn:
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


# Every migration the package ships, in order: what migrate() applies to an empty database.
MIGRATION_DIR = (
    Path(__file__).resolve().parents[2] / "python_plugins/iotistic_vpn/registry/migrations"
)
MIGRATIONS = sorted(p.stem for p in MIGRATION_DIR.glob("*.sql"))
