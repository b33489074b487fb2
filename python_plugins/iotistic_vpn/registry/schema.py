"""Versioned SQL migrations (migrations/*.sql), applied in order under an advisory lock."""

from __future__ import annotations

import hashlib
import importlib.resources
import re

from ..addressing import gateway_network
from .connection import RegistryConflict

# Advisory lock keys (arbitrary, fixed): schema migrations and customer block allocation.
_MIGRATION_LOCK = 0x10715_0001
_MIGRATION_RE = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")


class Schema:
    """Schema migrations."""

    def migrate(self) -> list[str]:
        """Apply pending migrations in order, in one transaction; return the ones applied."""
        migrations = _migrations()
        with self._tx() as conn:
            # Concurrent callers queue here; the second one finds everything applied.
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version int PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = dict(conn.execute("SELECT name, checksum FROM schema_migrations").fetchall())
            # The pool this registry allocates from, for the migrations that store it (0007).
            pool, gateways = str(self.pool), str(gateway_network(self.pool))
            conn.execute(
                "SELECT set_config('iotistic_vpn.pool', %s, true),"
                " set_config('iotistic_vpn.gateway_network', %s, true)",
                (pool, gateways),
            )
            applied = []
            for version, name, text in migrations:
                checksum = hashlib.sha256(text.encode()).hexdigest()
                if name in done:
                    if done[name] != checksum:
                        raise RegistryConflict(
                            f"migration {name} was changed after it was applied to {self.target}"
                        )
                    continue
                conn.execute(text)
                conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                    (version, name, checksum),
                )
                applied.append(name)
            # The stored pool follows this registry's; a pool that would leave a customer's
            # block outside is refused by the database (registry_settings_keep_blocks).
            if conn.execute("SELECT to_regclass('registry_settings')").fetchone()[0]:
                conn.execute(
                    "UPDATE registry_settings SET pool = %s, gateway_network = %s"
                    " WHERE (pool, gateway_network) IS DISTINCT FROM (%s::cidr, %s::cidr)",
                    (pool, gateways, pool, gateways),
                )
        return applied

    def schema_version(self) -> int:
        """Highest applied migration version, 0 for an empty database."""
        with self._tx() as conn:
            exists = conn.execute("SELECT to_regclass('schema_migrations')").fetchone()[0]
            if exists is None:
                return 0
            return conn.execute(
                "SELECT coalesce(max(version), 0) FROM schema_migrations"
            ).fetchone()[0]


def _migrations() -> list[tuple[int, str, str]]:
    """(version, name, sql) of every shipped migration, in order."""
    folder = importlib.resources.files(__package__).joinpath("migrations")
    if not folder.is_dir():
        # Ansible bundles only the .py files of module_utils; the SQL then comes from the
        # iotistic-vpn package installed next to the interpreter that runs the module.
        try:
            folder = importlib.resources.files("iotistic_vpn.registry").joinpath("migrations")
        except ModuleNotFoundError:
            raise RegistryConflict(
                "the schema migrations ship with the iotistic-vpn package: install it for the "
                "Python that runs this code"
            ) from None
    found = []
    for entry in folder.iterdir():
        match = _MIGRATION_RE.fullmatch(entry.name)
        if match:
            found.append((int(match.group(1)), entry.name.removesuffix(".sql"), entry.read_text()))
    if not found:
        raise RegistryConflict(f"no migrations found in {folder}")
    return sorted(found)
