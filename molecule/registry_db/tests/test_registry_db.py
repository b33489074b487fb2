"""What a platform engineer checks on a registry_db host after converge."""

import ipaddress
import json
import os

import psycopg
import pytest
from testinfra.utils.ansible_runner import AnsibleRunner

# The role's defaults; each instance's inventory variables override them.
DEFAULTS = {
    "registry_db_cluster": "main",
    "registry_db_port": 5432,
    "registry_db_hba_type": "host",
    "registry_db_database": "iotistic_vpn",
    "registry_db_owner": "iotistic_vpn",
    "registry_db_max_connections": 100,
}


@pytest.fixture(scope="module")
def hostvars(host):
    """Return this instance's role variables: the defaults under its inventory variables."""
    inventory = AnsibleRunner(os.environ["MOLECULE_INVENTORY_FILE"])
    return DEFAULTS | inventory.get_variables(host.backend.name)


@pytest.fixture(scope="module")
def config_dir(hostvars):
    return f"/etc/postgresql/15/{hostvars['registry_db_cluster']}"


@pytest.fixture(scope="module")
def address(host):
    """Return the instance's address and network on its podman interface."""
    links = json.loads(host.check_output("ip -j -4 addr show dev eth0"))
    info = links[0]["addr_info"][0]
    return ipaddress.ip_interface(f"{info['local']}/{info['prefixlen']}")


def psql(host, hostvars, sql):
    """Run one query as the postgres superuser over the local socket; return its rows."""
    port = hostvars["registry_db_port"]
    return host.check_output(f'runuser -u postgres -- psql -p {port} -XAt -c "{sql}"').splitlines()


def connect(address, hostvars, password, dbname=None, sslmode="prefer"):
    """Log in over TCP from this machine, the way a registry client does."""
    return psycopg.connect(
        host=str(address.ip),
        port=hostvars["registry_db_port"],
        dbname=dbname or hostvars["registry_db_database"],
        user=hostvars["registry_db_owner"],
        password=password,
        sslmode=sslmode,
        connect_timeout=5,
    )


def test_service_is_running_and_enabled(host, hostvars):
    service = host.service(f"postgresql@15-{hostvars['registry_db_cluster']}")
    assert service.is_running
    assert service.is_enabled


def test_server_listens_on_every_interface(host, hostvars):
    assert host.socket(f"tcp://0.0.0.0:{hostvars['registry_db_port']}").is_listening


@pytest.mark.parametrize(
    ("name", "mode"), [("pg_hba.conf", 0o640), ("conf.d/50-registry_db.conf", 0o644)]
)
def test_config_files_belong_to_postgres(host, config_dir, name, mode):
    config = host.file(f"{config_dir}/{name}")
    assert (config.user, config.group, config.mode) == ("postgres", "postgres", mode)


def test_hba_admits_the_registry_database_from_the_instance_network(
    host, hostvars, config_dir, address
):
    hba = host.file(f"{config_dir}/pg_hba.conf").content_string.splitlines()
    entry = (
        f"{hostvars['registry_db_hba_type']} {hostvars['registry_db_database']} all "
        f"{address.network} scram-sha-256"
    )
    assert entry in hba
    assert not [line for line in hba if line.split()[-1:] in (["trust"], ["md5"])]


def test_server_runs_the_configured_settings(host, hostvars):
    rows = psql(
        host,
        hostvars,
        "SELECT name || '=' || setting FROM pg_settings WHERE name IN ('listen_addresses', "
        "'port', 'max_connections', 'password_encryption') ORDER BY name",
    )
    assert rows == [
        "listen_addresses=*",
        f"max_connections={hostvars['registry_db_max_connections']}",
        "password_encryption=scram-sha-256",
        f"port={hostvars['registry_db_port']}",
    ]


def test_database_exists_owned_by_its_role_in_utf8(host, hostvars):
    rows = psql(
        host,
        hostvars,
        "SELECT datname, pg_get_userbyid(datdba), pg_encoding_to_char(encoding) FROM pg_database",
    )
    assert f"{hostvars['registry_db_database']}|{hostvars['registry_db_owner']}|UTF8" in rows


def test_owner_logs_in_is_no_superuser_and_has_a_scram_password(host, hostvars):
    rows = psql(
        host,
        hostvars,
        "SELECT rolname, rolcanlogin, rolsuper, left(rolpassword, 13) FROM pg_authid",
    )
    assert f"{hostvars['registry_db_owner']}|t|f|SCRAM-SHA-256" in rows


def test_owner_logs_in_over_tcp_with_its_password(address, hostvars):
    with connect(address, hostvars, hostvars["registry_db_owner_password"]) as conn:
        row = conn.execute("SELECT current_user, current_database()").fetchone()
    assert row == (hostvars["registry_db_owner"], hostvars["registry_db_database"])


def test_wrong_password_is_refused(address, hostvars):
    owner = hostvars["registry_db_owner"]
    with pytest.raises(
        psycopg.OperationalError, match=f'password authentication failed for user "{owner}"'
    ):
        connect(address, hostvars, "not-the-password")


def test_other_databases_are_not_reachable_over_the_network(address, hostvars):
    with pytest.raises(
        psycopg.OperationalError, match=r'no pg_hba\.conf entry for host .* database "postgres"'
    ):
        connect(address, hostvars, hostvars["registry_db_owner_password"], dbname="postgres")


def test_hostssl_refuses_clients_without_tls(address, hostvars):
    if hostvars["registry_db_hba_type"] != "hostssl":
        pytest.skip("plain TCP is allowed with registry_db_hba_type=host")
    with pytest.raises(psycopg.OperationalError, match=r"no pg_hba\.conf entry .* no encryption"):
        connect(address, hostvars, hostvars["registry_db_owner_password"], sslmode="disable")


# -- TLS, group roles and logins (migration 0007, the `logins` entry point) -------------------


def _login(hostvars, name):
    return next(login for login in hostvars["registry_db_logins"] if login["name"] == name)


def test_the_server_key_is_postgres_own(host, config_dir):
    key = host.file(f"{config_dir}/registry-server.key")
    assert (key.user, key.group, key.mode) == ("postgres", "postgres", 0o600)


def _verified(address, hostvars, host):
    """Log in as the owner, verifying the server against the registry's CA for `host`."""
    return psycopg.connect(
        host=host, hostaddr=str(address.ip), port=hostvars["registry_db_port"],
        dbname=hostvars["registry_db_database"], user=hostvars["registry_db_owner"],
        password=hostvars["registry_db_owner_password"], sslmode="verify-full",
        sslrootcert=f"{hostvars['registry_db_tls_dir']}/ca/ca-chain.crt", connect_timeout=5,
    )  # fmt: skip


def test_the_server_is_verified_by_its_name_against_the_registry_ca(address, hostvars):
    # hostaddr reaches the instance; host is the name verify-full checks the certificate for.
    with _verified(address, hostvars, hostvars["registry_db_tls_dns_names"][0]) as conn:
        assert conn.pgconn.ssl_in_use
    with pytest.raises(psycopg.OperationalError, match="does not match host name"):
        _verified(address, hostvars, "another-host.molecule.test")


def test_the_group_roles_cannot_log_in(host, hostvars):
    rows = psql(
        host, hostvars, "SELECT rolname || '=' || rolcanlogin FROM pg_roles"
        " WHERE rolname IN ('iotistic_gateway', 'iotistic_api', 'iotistic_operator') ORDER BY 1",
    )  # fmt: skip
    assert rows == ["iotistic_api=false", "iotistic_gateway=false", "iotistic_operator=false"]


def test_each_login_is_a_member_of_its_group_and_the_revoked_one_is_gone(host, hostvars):
    rows = psql(
        host, hostvars, "SELECT m.rolname || '>' || g.rolname FROM pg_auth_members a"
        " JOIN pg_roles m ON m.oid = a.member JOIN pg_roles g ON g.oid = a.roleid"
        " WHERE m.rolname LIKE 'molecule-%' ORDER BY 1",
    )  # fmt: skip
    assert rows == [
        "molecule-api>iotistic_api",
        "molecule-gw-1>iotistic_gateway",
        "molecule-gw-2>iotistic_gateway",
    ]
    assert psql(
        host, hostvars, "SELECT count(*) FROM pg_roles WHERE rolname = 'molecule-gw-old'"
    ) == ["0"]


def test_a_gateway_login_reads_its_view_and_cannot_unrevoke(address, hostvars):
    login = _login(hostvars, "molecule-gw-1")
    with psycopg.connect(
        host=str(address.ip), port=hostvars["registry_db_port"],
        dbname=hostvars["registry_db_database"], user=login["name"], password=login["password"],
        sslmode="require", connect_timeout=5, autocommit=True,
    ) as conn:  # fmt: skip
        conn.execute("SELECT count(*) FROM devices").fetchone()
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("UPDATE certificates SET revoked_at = NULL, revocation_reason = NULL")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT * FROM api_tokens")
