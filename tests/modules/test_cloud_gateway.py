"""roles/cloud_gateway and revoke_device.yml's cloud step through real ansible-playbook, against
moto's server (Secrets Manager, S3; tests/modules/conftest.py) and the real registry."""

from __future__ import annotations

import json
import socket
import ssl
import sys
import threading
import uuid

import psycopg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from cryptography.x509.oid import ExtendedKeyUsageOID
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from iotistic_vpn import conventions
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
        "ca": "{{ gateway_agent_registry_ca_src }}",
        "renewal_url": "{{ gateway_agent_renewal_api_url }}",
        "renewal_cert": "{{ gateway_agent_renewal_cert_src }}",
        "renewal_ca": "{{ gateway_agent_renewal_ca_src }}",
        "renewal_key": "{{ gateway_agent_renewal_key | default('') }}"}}},
]  # fmt: skip


def _infra_api_secrets(enrollment: bool = False) -> dict[str, tuple[str, dict]]:
    """infra's API_SECRETS (every stack's), with enrollment also ENROLL_SECRETS and
    RENEWAL_SECRETS: what the API's task reads, JSON key by key."""
    infra = str(REPO / "infra")
    if infra not in sys.path:
        sys.path.insert(0, infra)
    from components.api_service import API_SECRETS, ENROLL_SECRETS, RENEWAL_SECRETS

    return API_SECRETS | (ENROLL_SECRETS | RENEWAL_SECRETS if enrollment else {})


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
    api = {k: f"iotistic-vpn/{name}/{path}" for k, (path, _keys) in _infra_api_secrets().items()}
    for secret in (*names.values(), *api.values()):
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
        "iotistic_vpn_cloud_api_secrets": api,
        "iotistic_vpn_cloud_database_host": "localhost",
        "iotistic_vpn_cloud_database_port": registry_server[0].port,
        "iotistic_vpn_cloud_database_name": "postgres",
    }
    with registry_server[0].connect() as conn:
        for login in (f"iotistic_vpn_gw_{name}", f"iotistic_vpn_api_{name}"):
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(login)))


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


def _group_roles_of(dsn: str) -> list[tuple[str]]:
    """Log in over TLS with dsn; the group roles that login is a member of."""
    with psycopg.connect(dsn) as conn:
        assert conn.info.pgconn.ssl_in_use
        return conn.execute(
            "SELECT r.rolname FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid"
            " WHERE m.member = (SELECT oid FROM pg_roles WHERE rolname = current_user)"
        ).fetchall()


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
    assert _group_roles_of(dsn) == [("iotistic_gateway",)]
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
    # No renewal path on this stack (enrollment off): no renewal certificate, no [renewal] table.
    assert "renewal_cert" not in _secret(aws, stack, "server_cert")
    assert (shown["renewal_url"], shown["renewal_cert"]) == ("", "")
    # Neither side prints a key or the password.
    key = (pki / f"gateways/{host}.key").read_text().strip().splitlines()[1]
    for run in (*runs, pulled):
        assert registry["password"] not in run.stdout
        assert key not in run.stdout


def _api_login(aws, stack, registry_server, dsn_keys: dict | None = None) -> tuple[dict, list]:
    """api/registry's DSN keywords, and the group roles its login has once it logged in as the
    task does (libpq's PG* environment: the registry's address, verify-full with the bundle the
    secret holds)."""
    published = json.loads(_plain_secret(aws, stack["iotistic_vpn_cloud_api_secrets"]["registry"]))
    assert set(published) == set(_infra_api_secrets()["registry"][1])
    keys = dsn_keys or conninfo_to_dict(published["dsn"])
    server, chain = registry_server
    bundle = chain.parent / f"api-bundle-{uuid.uuid4().hex}.pem"
    bundle.write_text(published["ca"])
    dsn = make_conninfo("", **keys, host="localhost", port=server.port, dbname="postgres",
                        sslmode="verify-full", sslrootcert=str(bundle))  # fmt: skip
    return keys, _group_roles_of(dsn)


def test_publish_gives_the_api_its_own_login_and_the_fleets_tunnel_certificate(
    aws, stack, registry_owner, registry_server, tmp_path
):
    """api/registry: a DSN of the API's own login (an iotistic_api member, nothing more) that
    logs in over verify-full with the bundle beside it; api/tunnel-client: vpn_pki's `api`
    client certificate, its key and the fleet's chain. Kept on a second publish; a given
    password (spaces, quotes) rotates it, and the old one no longer logs in."""
    facts = {**stack, **registry_owner}
    plays = tmp_path / "playbooks"
    plays.mkdir()
    runs = [run_playbook(PUBLISH, plays, extra_vars=facts, env=aws) for _ in range(2)]
    assert [r.failed for r in runs] == [0, 0], runs[0].stdout
    assert runs[1].changed == 0, runs[1].stdout
    dry = run_playbook(PUBLISH, plays, extra_vars=facts, env=aws, check=True, diff=True)
    assert (dry.failed, dry.changed) == (0, 0), dry.stdout

    keys, groups = _api_login(aws, stack, registry_server)
    user = f"iotistic_vpn_api_{stack['iotistic_vpn_cloud_stack']}"
    assert set(keys) == {"user", "password"}  # libpq takes the rest from the task's PG*
    assert (keys["user"], len(keys["password"]), groups) == (user, 32, [("iotistic_api",)])

    pki = tmp_path / "build/pki"
    tunnel = json.loads(
        _plain_secret(aws, stack["iotistic_vpn_cloud_api_secrets"]["tunnel_client"])
    )
    assert set(tunnel) == set(_infra_api_secrets()["tunnel_client"][1])
    assert tunnel["cert"].strip() == (pki / "api/cloud-api.crt").read_text().strip()
    cert = x509.load_pem_x509_certificate(tunnel["cert"].encode())
    key = load_pem_private_key(tunnel["key"].encode(), None)
    assert key.public_key() == cert.public_key()
    assert ExtendedKeyUsageOID.CLIENT_AUTH in pki_lib.certificate_purposes(cert)
    assert tunnel["ca"].strip() == (pki / "ca/ca-chain.crt").read_text().strip()
    secret_line = tunnel["key"].strip().splitlines()[1]
    for run in (*runs, dry):
        assert keys["password"] not in run.stdout
        assert secret_line not in run.stdout

    rotated = "a pass phrase with 'quotes' and spaces"
    rotation = {**facts, "cloud_gateway_api_registry_password": rotated}
    run = run_playbook(PUBLISH, plays, extra_vars=rotation, env=aws)
    assert (run.failed, run.changed > 0) == (0, True), run.stdout
    assert rotated not in run.stdout
    new_keys, groups = _api_login(aws, stack, registry_server)
    assert (new_keys["password"], groups) == (rotated, [("iotistic_api",)])
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        _api_login(aws, stack, registry_server, keys)


def test_a_pipeline_publish_without_the_apis_certificate_stops_before_changing_anything(
    aws, stack, registry_owner, tmp_path
):
    """A restored PKI (cloud_gateway_pki_must_exist) that lacks the API's tunnel key stops publish,
    naming it, before a certificate of its own is issued or a secret written."""
    facts = {**stack, **registry_owner}
    plays = tmp_path / "playbooks"
    plays.mkdir()
    first = run_playbook(PUBLISH, plays, extra_vars=facts, env=aws)
    assert first.failed == 0, first.stdout
    pki = tmp_path / "build/pki"
    (pki / "api/cloud-api.key").unlink()
    cert = (pki / "api/cloud-api.crt").read_bytes()
    sm = client(aws, "secretsmanager")
    names = [*stack["iotistic_vpn_cloud_api_secrets"].values(),
             *stack["iotistic_vpn_cloud_gateway_secrets"].values()]  # fmt: skip
    versions = {n: sm.get_secret_value(SecretId=n)["VersionId"] for n in names}
    restored = {**facts, "vpn_pki_dir": str(pki), "cloud_gateway_pki_must_exist": True}
    run = run_playbook(PUBLISH, plays, extra_vars=restored, env=aws)
    assert run.failed == 1
    (msg,) = [r["msg"] for r in run.tasks.values() if r.get("failed")]
    assert f"vpn_pki_dir '{pki}' must hold the API's tunnel certificate and key" in msg
    assert "api/cloud-api.key" in msg
    assert run.changed == 0, run.stdout
    assert not (pki / "api/cloud-api.key").exists()
    assert (pki / "api/cloud-api.crt").read_bytes() == cert
    assert {n: sm.get_secret_value(SecretId=n)["VersionId"] for n in names} == versions


def test_publish_refuses_verify_full_without_a_ca_bundle_and_names_the_value(aws, stack, tmp_path):
    facts = {**stack, "cloud_gateway_registry_ca_src": str(tmp_path / "no-bundle.pem")}
    run = run_playbook(PUBLISH, tmp_path, extra_vars=facts, env=aws)
    assert run.failed == 1
    (msg,) = [r["msg"] for r in run.tasks.values() if r.get("failed")]
    assert "cloud_gateway_registry_sslmode 'verify-full'" in msg
    assert f"'{tmp_path / 'no-bundle.pem'}', which is not a file" in msg
    with pytest.raises(client(aws, "secretsmanager").exceptions.ResourceNotFoundException):
        _secret(aws, stack, "registry")


def test_a_pipeline_publish_without_the_restored_pki_makes_no_ca_and_names_the_directory(
    aws, enrolling_stack, registry_owner, tmp_path
):
    """cloud_gateway_pki_must_exist (deploy-stack.yml): an empty PKI directory stops publish
    before anything is issued or written."""
    pki = tmp_path / "pki"
    facts = {**enrolling_stack, **registry_owner, "vpn_pki_dir": str(pki),
             "cloud_gateway_pki_must_exist": True}  # fmt: skip
    run = run_playbook(PUBLISH, tmp_path, extra_vars=facts, env=aws)
    assert run.failed == 1
    (msg,) = [r["msg"] for r in run.tasks.values() if r.get("failed")]
    assert f"cloud_gateway_pki_must_exist is set, so vpn_pki_dir '{pki}' must hold" in msg
    host = f"renew.{enrolling_stack['iotistic_vpn_cloud_stack']}.example.com"
    assert f"api/{host}.key" in msg
    assert not pki.exists()
    with pytest.raises(client(aws, "secretsmanager").exceptions.ResourceNotFoundException):
        _secret(aws, enrolling_stack, "server_cert")


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


@pytest.fixture
def enrolling_stack(aws, stack):
    """The same stack with api.enrollment on: the API's secrets, pki/ca-key and the renewal URL
    infra exports (empty containers, as `pulumi up` leaves them)."""
    name = stack["iotistic_vpn_cloud_stack"]
    enroll = {k: f"iotistic-vpn/{name}/{path}"
              for k, (path, _keys) in _infra_api_secrets(enrollment=True).items()
              if k not in stack["iotistic_vpn_cloud_api_secrets"]}  # fmt: skip
    api = stack["iotistic_vpn_cloud_api_secrets"] | enroll
    ca_key = f"iotistic-vpn/{name}/pki/ca-key"
    for secret in (*enroll.values(), ca_key):
        client(aws, "secretsmanager").create_secret(Name=secret)
    host = f"renew.{name}.example.com"
    return {
        **stack,
        "iotistic_vpn_cloud_api_secrets": api,
        "iotistic_vpn_cloud_ca_key_secret_name": ca_key,
        "iotistic_vpn_cloud_api_renewal_url": f"https://{host}:{conventions.API_TLS_PORT}",
    }


def _plain_secret(aws, name: str) -> str:
    return client(aws, "secretsmanager").get_secret_value(SecretId=name)["SecretString"]


def _handshake(server: ssl.SSLContext, client_ctx: ssl.SSLContext, host: str) -> x509.Certificate:
    """Mutual TLS over a socket pair; return the client certificate the server verified."""
    left, right = socket.socketpair()
    seen = {}

    def serve() -> None:
        with server.wrap_socket(left, server_side=True) as tls:
            seen["peer"] = tls.getpeercert(binary_form=True)

    thread = threading.Thread(target=serve)
    thread.start()
    with client_ctx.wrap_socket(right, server_hostname=host):
        pass
    thread.join(10)
    return x509.load_der_x509_certificate(seen["peer"])


def test_publish_with_enrollment_writes_the_apis_secrets_and_the_gateways_renewal_path(
    aws, enrolling_stack, registry_owner, tmp_path
):
    """The issuing CA (its key decrypted, never the root key), the API listener's certificate
    for the renewal host and the fleet's renewal client certificate: a gateway's agent and the
    API's listener complete a mutual TLS handshake with exactly what publish and pull hand out."""
    facts = {**enrolling_stack, **registry_owner, "vpn_pki_ca_passphrase": "correct horse battery"}
    plays = tmp_path / "playbooks"
    plays.mkdir()
    runs = [run_playbook(PUBLISH, plays, extra_vars=facts, env=aws) for _ in range(2)]
    assert [r.failed for r in runs] == [0, 0], runs[0].stdout
    assert runs[0].changed > 0 and runs[1].changed == 0, runs[1].stdout
    dry = run_playbook(PUBLISH, plays, extra_vars=facts, env=aws, check=True, diff=True)
    assert (dry.failed, dry.changed) == (0, 0), dry.stdout

    pki = tmp_path / "build/pki"
    api = enrolling_stack["iotistic_vpn_cloud_api_secrets"]
    # pki/ca-key: the issuing CA's key as plain PEM (the task signs unattended), its pair.
    ca_key_pem = _plain_secret(aws, enrolling_stack["iotistic_vpn_cloud_ca_key_secret_name"])
    ca_key = load_pem_private_key(ca_key_pem.encode(), None)
    ca_cert = x509.load_pem_x509_certificate((pki / "ca/ca.crt").read_bytes())
    assert ca_key.public_key() == ca_cert.public_key()
    # Each API secret holds exactly the JSON keys infra injects into the task.
    infra = _infra_api_secrets(enrollment=True)
    enroll_ca = json.loads(_plain_secret(aws, api["enroll_ca"]))
    renewal = json.loads(_plain_secret(aws, api["renewal_server"]))
    assert set(enroll_ca) == set(infra["enroll_ca"][1])
    assert set(renewal) == set(infra["renewal_server"][1])
    for key, file in (("cert", "ca.crt"), ("chain", "ca-chain.crt"), ("root", "root.crt")):
        assert enroll_ca[key].strip() == (pki / "ca" / file).read_text().strip(), key
    # The root key is in no secret (nor in any output).
    root_key = (pki / "ca/root.key").read_text().strip().splitlines()[1]
    names = [*api.values(), *enrolling_stack["iotistic_vpn_cloud_gateway_secrets"].values(),
             enrolling_stack["iotistic_vpn_cloud_ca_key_secret_name"]]  # fmt: skip
    assert not [n for n in names if root_key in _plain_secret(aws, n)]

    # The listener's certificate: serverAuth for the renewal URL's host, from the fleet's CA.
    host = f"renew.{enrolling_stack['iotistic_vpn_cloud_stack']}.example.com"
    listener = x509.load_pem_x509_certificate(renewal["cert"].encode())
    assert pki_lib.gateway_dns_names(listener) == [host]
    assert pki_lib.certificate_purposes(listener) == (ExtendedKeyUsageOID.SERVER_AUTH,)
    assert renewal["ca"].strip() == (pki / "ca/ca-chain.crt").read_text().strip()
    # The fleet's renewal client certificate is for the key every gateway serves with.
    server = _secret(aws, enrolling_stack, "server_cert")
    client_cert = x509.load_pem_x509_certificate(server["renewal_cert"].encode())
    assert client_cert.public_key() == x509.load_pem_x509_certificate(
        server["cert"].encode()).public_key()  # fmt: skip
    assert conventions.RENEWAL_CLIENT_EKU in {
        oid.dotted_string for oid in pki_lib.certificate_purposes(client_cert)
    }

    # The pull hands gateway_agent the URL, the client certificate and the chain (the key: the
    # server key openvpn_gateway installs).
    pulled = run_playbook(PULL, plays, extra_vars=enrolling_stack, env=aws)
    assert (pulled.failed, pulled.changed) == (0, 0), pulled.stdout
    shown = pulled.tasks["Show."]["msg"]
    assert shown["renewal_url"] == enrolling_stack["iotistic_vpn_cloud_api_renewal_url"]
    assert shown["renewal_cert"] == server["renewal_cert"]
    assert shown["renewal_ca"] == server["ca_chain"]
    assert shown["renewal_key"] == ""

    # What the API's listener (api/__main__.py: the client CA, a certificate asked for) and the
    # agent (gateway/renewal.py: the chain, its certificate and key) make of them, by name.
    files = tmp_path / "tls"
    files.mkdir()
    for name, text in {
        "listener.crt": renewal["cert"],
        "listener.key": renewal["key"],
        "client-ca.pem": renewal["ca"],
        "agent.crt": shown["renewal_cert"],
        "agent.key": server["key"],
        "agent-ca.pem": shown["renewal_ca"],
    }.items():
        (files / name).write_text(text)  # fmt: skip
    api_side = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=files / "client-ca.pem")
    api_side.load_cert_chain(files / "listener.crt", files / "listener.key")
    api_side.verify_mode = ssl.CERT_OPTIONAL
    agent = ssl.create_default_context(cafile=files / "agent-ca.pem")
    agent.load_cert_chain(files / "agent.crt", files / "agent.key")
    assert _handshake(api_side, agent, host).serial_number == client_cert.serial_number
    # Neither side prints a key.
    for run in (*runs, dry, pulled):
        assert ca_key_pem.strip().splitlines()[1] not in run.stdout
        assert renewal["key"].strip().splitlines()[1] not in run.stdout


@pytest.mark.parametrize(
    ("url", "secrets"),
    [
        ("http://renew.example.com:9443", None),
        ("", None),
        ("https://renew.example.com:9443", {}),
    ],
)
def test_publish_refuses_mismatched_enrollment_facts_naming_them(
    aws, enrolling_stack, url, secrets, tmp_path
):
    """A renewal URL that is not https://HOST:PORT, or enrollment without one (or the reverse)."""
    facts = {**enrolling_stack, "iotistic_vpn_cloud_api_renewal_url": url}
    if secrets is not None:
        facts["iotistic_vpn_cloud_api_secrets"] = secrets
    run = run_playbook(PUBLISH, tmp_path, extra_vars=facts, env=aws)
    assert run.failed == 1
    (msg,) = [r["msg"] for r in run.tasks.values() if r.get("failed")]
    assert f"given '{url}' with API secrets" in msg
    assert "iotistic_vpn_cloud_api_renewal_url must be https://HOST:PORT" in msg
