"""The gateway agent's registry connection verifies the server (verify-full), on a real server.

A cluster of its own serves TLS with a certificate from a CA made by the package's PKI code, the
way the lab's registry does (vpn_pki's registry entry point); the agent's RegistryConfig builds
the connection string exactly as the running agent does.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from iotistic_vpn.errors import RegistryUnavailable
from iotistic_vpn.gateway.config import RegistryConfig
from iotistic_vpn.pki.ca import CaFiles, ensure_ca
from iotistic_vpn.registry import Registry
from tests.support.postgres import PgServer, tls_cluster

pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory) -> Iterator[tuple[PgServer, Path]]:
    """A cluster serving TLS for the host name `localhost` only; yields it and its CA chain."""
    with tls_cluster(tmp_path_factory.mktemp("registry-pki")) as server:
        yield server


def _agent_registry(server: PgServer, host: str, root: Path, sslmode="verify-full") -> Registry:
    config = RegistryConfig(
        host=host, port=server.port, user=server.user, password=server.password,
        dbname="postgres", sslmode=sslmode, sslrootcert=root,
    )  # fmt: skip
    return Registry(config.conninfo("iotistic-gateway-agent gw-1"), connect_timeout=5)


def test_the_agent_reads_a_registry_whose_certificate_is_for_its_host_name(tls_server):
    server, root = tls_server
    with _agent_registry(server, "localhost", root) as reg:
        assert reg.gateway_snapshot().devices == {}
        with reg._tx() as conn:
            assert conn.execute(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
            ).fetchone()[0]


def test_the_agent_refuses_a_registry_whose_certificate_is_for_another_host(tls_server):
    server, root = tls_server
    # Same server, reached by an address its certificate does not name.
    with (
        _agent_registry(server, "127.0.0.1", root) as reg,
        pytest.raises(
            RegistryUnavailable,
            match=r'server certificate for "localhost".* does not match host name "127\.0\.0\.1"',
        ) as exc,
    ):
        reg.gateway_snapshot()
    assert server.password not in str(exc.value)


def test_the_agent_refuses_a_registry_its_root_did_not_sign(tls_server, tmp_path):
    server, _ = tls_server
    other = CaFiles.at(tmp_path / "other")
    ensure_ca(other, name="Someone else")
    with (
        _agent_registry(server, "localhost", other.chain) as reg,
        pytest.raises(RegistryUnavailable, match="certificate verify failed"),
    ):
        reg.gateway_snapshot()


def test_the_agent_names_a_missing_root_certificate(tls_server, tmp_path):
    server, _ = tls_server
    missing = tmp_path / "registry-ca.pem"
    with (
        _agent_registry(server, "localhost", missing) as reg,
        pytest.raises(RegistryUnavailable, match=re.escape(f'root certificate file "{missing}"')),
    ):
        reg.gateway_snapshot()
