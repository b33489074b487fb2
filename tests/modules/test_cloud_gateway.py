"""roles/cloud_gateway and revoke_device.yml's cloud step through real ansible-playbook, against
moto's server (Secrets Manager, S3; tests/modules/conftest.py) and the real registry."""

from __future__ import annotations

import json
import uuid

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from iotistic_vpn import pki as pki_lib
from tests.modules.test_vpn_registry_certificates import _issue_and_record
from tests.support.ansible_run import REPO, run_playbook
from tests.support.moto import REGION, client
from tests.support.postgres import tls_cluster

pytestmark = pytest.mark.ansible

PUBLISH = [{"name": "Publish.", "ansible.builtin.include_role": {
    "name": "cloud_gateway", "tasks_from": "publish"}}]  # fmt: skip
PULL = [
    {"name": "Facts.", "ansible.builtin.setup": {"gather_subset": ["network"]}},
    {"name": "Pull.", "ansible.builtin.include_role": {
        "name": "cloud_gateway", "tasks_from": "pull"}},
    {"name": "Show.", "ansible.builtin.debug": {"msg": {
        "cert": "{{ cloud_gateway_pki.cert }}", "crl": "{{ cloud_gateway_pki.crl }}",
        "user": "{{ gateway_agent_registry_user }}", "host": "{{ gateway_agent_registry_host }}",
        "port": "{{ gateway_agent_registry_port }}",
        "sslmode": "{{ gateway_agent_registry_sslmode }}",
        "ca": "{{ gateway_agent_registry_ca_src }}"}}},
]  # fmt: skip


@pytest.fixture(scope="module")
def registry_server(tmp_path_factory):
    """A registry of its own serving TLS (for `localhost`), the CA chain standing in for RDS's."""
    with tls_cluster(tmp_path_factory.mktemp("registry-pki")) as server:
        yield server


@pytest.fixture
def stack(aws, registry_server):
    """A stack as `pulumi up` leaves it (empty secrets, the CRL bucket) and its facts; the login
    publish makes for it is dropped afterwards."""
    name = f"t{uuid.uuid4().hex[:8]}"
    names = {k: f"iotistic-vpn/{name}/gateway/{k}" for k in ("server_cert", "tls_crypt_v2",
                                                              "registry")}  # fmt: skip
    for secret in names.values():
        client(aws, "secretsmanager").create_secret(Name=secret)
    bucket = f"iotistic-vpn-{name}-crl"
    client(aws, "s3").create_bucket(
        Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION}
    )
    yield {
        "iotistic_vpn_cloud_stack": name,
        "iotistic_vpn_cloud_region": REGION,
        "iotistic_vpn_cloud_vpn_hostname": f"vpn.{name}.example.com",
        "iotistic_vpn_cloud_crl_bucket": bucket,
        "iotistic_vpn_cloud_crl_object_key": "crl/crl.pem",
        "iotistic_vpn_cloud_gateway_secrets": names,
        "iotistic_vpn_cloud_database_host": "localhost",
        "iotistic_vpn_cloud_database_port": registry_server[0].port,
        "iotistic_vpn_cloud_database_name": "postgres",
    }
    with registry_server[0].connect() as conn:
        login = sql.Identifier(f"iotistic_vpn_gw_{name}")
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(login))


@pytest.fixture
def registry_owner(registry_server) -> dict:
    """registry_db's variables for making logins in that registry as its owner, TLS verified."""
    server, chain = registry_server
    return {
        "registry_db_owner": server.user,
        "registry_db_owner_password": server.password,
        "registry_db_database": "postgres",
        "registry_db_login_host": "localhost",
        "registry_db_port": server.port,
        "registry_db_login_ssl_mode": "verify-full",
        "registry_db_login_ca_cert": str(chain),
        "cloud_gateway_registry_ca_src": str(chain),
    }


def _secret(aws, stack, key: str) -> dict:
    name = stack["iotistic_vpn_cloud_gateway_secrets"][key]
    return json.loads(client(aws, "secretsmanager").get_secret_value(SecretId=name)["SecretString"])


def test_publish_makes_the_stacks_one_login_and_pull_hands_the_gateway_what_it_wrote(
    aws, stack, registry_owner, registry_server, tmp_path
):
    """One registry login for every gateway of the stack, its password kept; verify-full with
    the bundle publish was given, read back by the pull."""
    facts = {**stack, **registry_owner}
    # Playbooks in tmp_path/playbooks: vpn_pki's default PKI directory is tmp_path/build/pki.
    plays = tmp_path / "playbooks"
    plays.mkdir()
    runs = [run_playbook(PUBLISH, plays, extra_vars=facts, env=aws) for _ in range(2)]
    assert [r.failed for r in runs] == [0, 0], runs[0].stdout
    assert runs[0].changed > 0 and runs[1].changed == 0, runs[1].stdout
    registry = _secret(aws, stack, "registry")
    user = f"iotistic_vpn_gw_{stack['iotistic_vpn_cloud_stack']}"
    assert (registry["user"], registry["sslmode"]) == (user, "verify-full")
    server, chain = registry_server
    assert registry["ca"].strip() == chain.read_text().strip()
    # The login exists, logs in (verify-full, as the agent) with the published password, and is
    # a gateway, nothing more.
    dsn = make_conninfo(
        host="localhost", port=server.port, dbname="postgres", user=user,
        password=registry["password"], sslmode="verify-full", sslrootcert=str(chain),
    )  # fmt: skip
    with psycopg.connect(dsn) as conn:
        assert conn.info.pgconn.ssl_in_use
        groups = conn.execute(
            "SELECT r.rolname FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid"
            " WHERE m.member = (SELECT oid FROM pg_roles WHERE rolname = current_user)"
        ).fetchall()
    assert groups == [("iotistic_gateway",)]
    assert len(registry["password"]) == 32

    pulled = run_playbook(PULL, plays, extra_vars=stack, env=aws)
    assert pulled.failed == 0, pulled.stdout
    assert pulled.changed == 0
    shown = pulled.tasks["Show."]["msg"]
    pki = tmp_path / "build/pki"
    host = stack["iotistic_vpn_cloud_vpn_hostname"]
    assert shown["cert"].strip() == (pki / f"gateways/{host}.crt").read_text().strip()
    assert shown["crl"].strip() == (pki / "crl.pem").read_text().strip()
    assert (shown["user"], shown["host"], shown["port"], shown["sslmode"]) == (
        user, "localhost", server.port, "verify-full")  # fmt: skip
    assert shown["ca"] == registry["ca"]
    # Neither side prints a key or the password.
    key = (pki / f"gateways/{host}.key").read_text().strip().splitlines()[1]
    for run in (*runs, pulled):
        assert registry["password"] not in run.stdout
        assert key not in run.stdout


def test_publish_refuses_verify_full_without_a_ca_bundle_and_names_the_value(aws, stack, tmp_path):
    facts = {**stack, "cloud_gateway_registry_ca_src": str(tmp_path / "no-bundle.pem")}
    run = run_playbook(PUBLISH, tmp_path, extra_vars=facts, env=aws)
    assert run.failed == 1
    (msg,) = [r["msg"] for r in run.tasks.values() if r.get("failed")]
    assert "cloud_gateway_registry_sslmode 'verify-full'" in msg
    assert f"'{tmp_path / 'no-bundle.pem'}', which is not a file" in msg
    with pytest.raises(client(aws, "secretsmanager").exceptions.ResourceNotFoundException):
        _secret(aws, stack, "registry")


def test_a_pull_refuses_a_registry_secret_without_its_bundle(aws, stack, tmp_path):
    """A secret written by hand (or before bundles) with verify-full and no CA stops the pull."""
    values = {
        "server_cert": {"cert": "c", "key": "k", "ca_chain": "a"},
        "tls_crypt_v2": {"key": "t"},
        "registry": {"user": "gw", "password": "p" * 16, "host": "db", "port": 5432,
                     "dbname": "iotistic_vpn", "sslmode": "verify-full"},
    }  # fmt: skip
    for key, value in values.items():
        client(aws, "secretsmanager").put_secret_value(
            SecretId=stack["iotistic_vpn_cloud_gateway_secrets"][key],
            SecretString=json.dumps(value),
        )
    pulled = run_playbook(PULL, tmp_path, extra_vars=stack, env=aws)
    assert pulled.failed == 1
    (msg,) = [r["msg"] for r in pulled.tasks.values() if r.get("failed")]
    assert stack["iotistic_vpn_cloud_gateway_secrets"]["registry"] in msg
    assert "sslmode 'verify-full' but holds no CA bundle" in msg


def test_revoke_puts_the_new_crl_where_the_cloud_gateways_read_it(
    aws, stack, registry_dsn, tmp_path
):
    """playbooks/revoke_device.yml with the stack's facts: the CRL in S3 lists the serial."""
    pki = tmp_path / "pki"
    setup = run_playbook(_issue_and_record(pki), tmp_path, extra_vars={"dsn": registry_dsn})
    assert setup.failed == 0, setup.stdout
    serials = {c["device"]: c["serial"] for c in setup.tasks["Certificates."]["certificates"]}
    facts = {**stack, "device_id": "pump-2", "vpn_pki_dir": str(pki),
             "vpn_pki_registry": {"dsn": registry_dsn}}  # fmt: skip
    revoke = REPO / "playbooks/revoke_device.yml"
    runs = [run_playbook(revoke, tmp_path, extra_vars=facts, env=aws) for _ in range(2)]
    assert [r.failed for r in runs] == [0, 0], runs[0].stdout
    assert runs[1].changed == 0, runs[1].stdout
    body = (
        client(aws, "s3")
        .get_object(Bucket=stack["iotistic_vpn_cloud_crl_bucket"], Key="crl/crl.pem")["Body"]
        .read()
    )
    assert body.strip() == (pki / "crl.pem").read_bytes().strip()
    listed = {e.serial for e in pki_lib.crl_revocations(pki_lib.pem_crl(body, "crl"))}
    assert listed == {int(serials["pump-2"])}
