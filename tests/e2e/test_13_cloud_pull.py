"""A cloud gateway configures itself: ansible-pull against moto as the AWS stand-in, no SSH.

The production path of docs/cloud.md, with moto's server (Secrets Manager and S3 over HTTP, on
the lab network's host address) in place of AWS:

1. the stack: the gateway secrets' containers and the CRL bucket, named as infra names them
   (`pulumi up` makes them empty);
2. publish, on the control node: playbooks/cloud_gateway_secrets.yml issues the fleet's server
   certificate with the lab's CA and writes the secrets and the CRL; a second run changes
   nothing, and no secret holds a CA key;
3. a fresh gateway container from the lab's image, with no SSH key (nobody can log in) and the
   repository as a local bare clone: the files infra's cloud-config writes are written as
   cloud-init would, then its ansible-pull wrapper runs with AWS_ENDPOINT_URL at moto. The one
   step the lab skips is the wrapper's pip install (no package index here): the Ansible venv
   the control node runs is mounted read-only where the wrapper finds it, as on a second boot;
4. the gateway answers /healthz 200, its agent reads the registry as the stack's one gateway
   login over TLS verified against the lab registry's CA (published as the bundle, as RDS's is),
   a lab device connects through it with its registry address, and a second pull after a
   republished CRL changes that file alone, restarting nothing.

The container and moto are removed whatever happens; the device goes back to its own client.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from cryptography import x509

from iotistic_vpn import conventions
from tests.e2e.lab import (
    CLIENT_UNIT,
    GATEWAY_HTTP_PORT,
    GATEWAYS,
    LAB_LABEL,
    NETWORK,
    REPO,
    ansible_playbook,
    in_container,
    lab_address,
    lab_devices,
    podman,
    wait_for,
    wait_system_running,
)
from tests.support.moto import REGION, client, moto_server

sys.path.insert(0, str(REPO / "infra"))
from components.gateway_fleet import render_user_data
from components.pki_store import CRL_OBJECT_KEY, GATEWAY_SECRETS

GATEWAY = "lab-gw-cloud"
REGISTRY = "lab-registry"
REGISTRY_CA = REPO / "build/lab/registry-tls/ca/ca-chain.crt"  # inventory/lab's lab_registry_ca
GATEWAY_ADDRESS = "198.18.20.25"  # free in inventory/lab, inside the lab's subnet
STACK = "lab"
LOGIN = f"iotistic_vpn_gw_{STACK}"  # the stack's one gateway login (roles/cloud_gateway)
BUCKET = "iotistic-vpn-lab-crl"
VPN_HOSTNAME = "vpn.lab.iotistic.test"
# Moved onto the cloud gateway for the test, then back to its own client.
DEVICE = "globex-meter-3"
DEVICE_CONF = "/run/cloud-pull.conf"
DEVICE_PID = "/run/cloud-pull.pid"
BARE = "/srv/iotistic-vpn.git"
VENV = (REPO / ".venv").resolve()
PYTHON_HOME = Path(sys.base_prefix)  # the venv's interpreter, which the venv's scripts name
PULL = "/usr/local/sbin/iotistic-vpn-pull"
RECAP = re.compile(r"^localhost\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)")


@contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


@pytest.fixture(scope="module")
def aws(tmp_path_factory) -> Iterator[dict[str, str]]:
    """moto's server on the lab network's host address: the AWS environment both sides use."""
    fmt = "{{range .Subnets}}{{.Gateway}}{{end}}"
    host = podman("network", "inspect", NETWORK, "--format", fmt, check=True).stdout.strip()
    with moto_server(host, tmp_path_factory.mktemp("moto") / "moto.log") as env:
        yield env


@pytest.fixture(scope="module")
def stack(aws) -> dict[str, object]:
    """What `pulumi up` leaves: empty secret containers and the CRL bucket; the stack's facts."""
    secrets = client(aws, "secretsmanager")
    names = {key: f"iotistic-vpn/{STACK}/{path}" for key, path in GATEWAY_SECRETS.items()}
    for name in names.values():
        secrets.create_secret(Name=name, Description="made by the test, as by pulumi up")
    client(aws, "s3").create_bucket(
        Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION}
    )
    # infra/__main__.py's cloud_vars, with the lab's registry in place of RDS.
    return {
        "iotistic_vpn_cloud_stack": STACK,
        "iotistic_vpn_cloud_region": REGION,
        "iotistic_vpn_cloud_vpn_hostname": VPN_HOSTNAME,
        "iotistic_vpn_cloud_crl_bucket": BUCKET,
        "iotistic_vpn_cloud_crl_object_key": CRL_OBJECT_KEY,
        "iotistic_vpn_cloud_gateway_secrets": names,
        # By the name its certificate carries (the container's /etc/hosts), as RDS's endpoint.
        "iotistic_vpn_cloud_database_host": REGISTRY,
        "iotistic_vpn_cloud_database_port": 5432,
        "iotistic_vpn_cloud_database_name": "iotistic_vpn",
        "iotistic_vpn_cloud_metric_namespace": "IotisticVPN",
    }


@pytest.fixture(scope="module")
def publish_vars(stack, tmp_path_factory) -> Path:
    """The stack's facts and the registry's CA bundle, as the pipeline gives publish.

    The lab registry's own CA stands in for the RDS bundle; publish makes the stack's gateway
    login in it as the owner, with the lab inventory's registry_db variables."""
    extra = tmp_path_factory.mktemp("publish") / "vars.json"
    extra.write_text(json.dumps({**stack, "cloud_gateway_registry_ca_src": str(REGISTRY_CA)}))
    return extra


def _publish(aws: dict[str, str], publish_vars: Path, *args: str):
    with _environ(aws):
        return ansible_playbook("cloud_gateway_secrets.yml", "-e", f"@{publish_vars}", *args)


@pytest.fixture(scope="module")
def published(aws, publish_vars) -> dict[str, float]:
    """playbooks/cloud_gateway_secrets.yml from the control node, twice."""
    first = _publish(aws, publish_vars)
    assert first.returncode == 0, first.messages()
    second = _publish(aws, publish_vars)
    assert second.returncode == 0, second.messages()
    assert second.changed_hosts() == {}, "\n".join(second.changed_tasks())
    return {"publish_s": round(first.seconds, 1), "publish_again_s": round(second.seconds, 1)}


def _put_file(path: str, content: str, mode: str) -> None:
    """Write a file into the gateway as cloud-init's write_files does."""
    script = f'mkdir -p "$(dirname {path})" && cat > {path} && chmod {mode} {path}'
    subprocess.run(
        ["podman", "exec", "-i", GATEWAY, "sh", "-c", script],
        input=content,
        text=True,
        check=True,
        capture_output=True,
        env={**os.environ, "CONTAINERS_CONF": str(REPO / "molecule/containers.conf")},
        timeout=30,
    )


def _pull(aws: dict[str, str]) -> tuple[dict[str, int], float, str]:
    """Run the cloud-config's ansible-pull wrapper in the gateway; its recap, seconds, output."""
    env = [f"--env={key}={value}" for key, value in aws.items()]
    start = time.monotonic()
    proc = podman("exec", *env, GATEWAY, PULL, timeout=600)
    seconds = time.monotonic() - start
    out = proc.stdout + proc.stderr
    found = [RECAP.match(line) for line in out.splitlines()]
    recaps = [m for m in found if m]
    if proc.returncode != 0 or not recaps:
        pytest.fail(f"ansible-pull failed ({proc.returncode}):\n{out[-6000:]}", pytrace=False)
    ok, changed, unreachable, failed = (int(g) for g in recaps[-1].groups())
    return {"ok": ok, "changed": changed, "failed": failed + unreachable}, seconds, out


@pytest.fixture(scope="module")
def cloud_gateway(aws, stack, published, tmp_path_factory) -> Iterator[dict[str, float]]:
    """A fresh gateway container that configured itself with ansible-pull; removed afterwards."""
    bare = tmp_path_factory.mktemp("repo") / "iotistic-vpn.git"
    subprocess.run(["git", "clone", "--quiet", "--bare", str(REPO), str(bare)], check=True)
    revision = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    mounts = [
        f"{bare}:{BARE}:ro",
        f"{VENV}:{VENV}:ro",
        f"{PYTHON_HOME}:{PYTHON_HOME}:ro",
        # cloud-init installs git from Debian; the lab image has none, this machine's is the same.
        "/usr/bin/git:/usr/bin/git:ro",
        "/usr/lib/git-core:/usr/lib/git-core:ro",
    ]
    podman("rm", "-f", "-t", "2", GATEWAY)
    podman(
        "run", "-d", "--name", GATEWAY, "--hostname", GATEWAY, "--label", LAB_LABEL,
        "--network", NETWORK, "--ip", GATEWAY_ADDRESS, "--systemd=always",
        "--add-host", f"{REGISTRY}:{lab_address(REGISTRY)}",
        "--cap-add", "NET_ADMIN", "--device", "/dev/net/tun",
        "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024",
        *(f"--volume={m}" for m in mounts),
        "localhost/lab-base:12", "/sbin/init",
        check=True,
    )  # fmt: skip
    try:
        wait_system_running(GATEWAY)
        user_data = render_user_data(
            SimpleNamespace(repo_url=f"file://{BARE}", git_revision=revision), stack
        )
        cloud_config = yaml.safe_load(user_data)
        for entry in cloud_config["write_files"]:
            _put_file(entry["path"], entry["content"], entry["permissions"])
        # Where the wrapper looks for its venv before it would pip-install one.
        in_container(GATEWAY, "sh", "-c", f"mkdir -p /opt/iotistic-vpn && ln -sfn {VENV} "
                     "/opt/iotistic-vpn/ansible")  # fmt: skip
        recap, seconds, output = _pull(aws)
        assert recap["failed"] == 0, output[-6000:]
        # The rest of runcmd, as cloud-init goes on after the first pull: the timer.
        assert cloud_config["runcmd"][0] == ["/usr/local/sbin/iotistic-vpn-pull"]
        for command in cloud_config["runcmd"][1:]:
            done = in_container(GATEWAY, *command)
            assert done.returncode == 0, (command, done.stderr)
        yield {
            **published,
            "first_pull_s": round(seconds, 1),
            "first_pull_changed": recap["changed"],
        }
    finally:
        podman("rm", "-f", "-t", "2", GATEWAY, timeout=60)


def test_publish_writes_every_gateway_secret_and_never_the_ca_key(aws, stack, published):
    secrets = client(aws, "secretsmanager")
    names = stack["iotistic_vpn_cloud_gateway_secrets"]
    values = {k: json.loads(secrets.get_secret_value(SecretId=n)["SecretString"])
              for k, n in names.items()}  # fmt: skip
    assert sorted(values["server_cert"]) == ["ca_chain", "cert", "key"]
    assert "BEGIN OpenVPN tls-crypt-v2 server key" in values["tls_crypt_v2"]["key"]
    assert values["registry"]["host"] == stack["iotistic_vpn_cloud_database_host"]
    assert values["registry"]["dbname"] == "iotistic_vpn"
    everything = json.dumps(values)
    for ca_key in (REPO / "build/pki/ca").glob("*.key"):
        assert ca_key.read_text().strip() not in everything, f"{ca_key.name} left the control node"
    crl = client(aws, "s3").get_object(Bucket=BUCKET, Key=CRL_OBJECT_KEY)
    assert crl["Body"].read().decode().strip() == (REPO / "build/pki/crl.pem").read_text().strip()


def test_fresh_gateway_without_ssh_configures_itself_and_is_healthy(cloud_gateway, record_property):
    for key, value in cloud_gateway.items():
        record_property(key, value)
    print(f"\ncloud pull: {cloud_gateway}")
    assert cloud_gateway["first_pull_changed"] > 0
    # Nobody was let in: no key is authorised for root, sshd has no one to admit.
    assert in_container(GATEWAY, "test", "-e", "/root/.ssh/authorized_keys").returncode == 1
    health = in_container(GATEWAY, "curl", "-fsS", f"http://127.0.0.1:{GATEWAY_HTTP_PORT}/healthz")
    assert health.returncode == 0, health.stderr
    # It converges again by itself: the pull timer is scheduled although its service never ran
    # (the first pull is runcmd's); "infinity" would be a timer that never fires.
    next_pull = in_container(GATEWAY, "systemctl", "show", "-p", "NextElapseUSecMonotonic",
                             "--value", "iotistic-vpn-pull.timer").stdout.strip()  # fmt: skip
    assert next_pull not in {"", "infinity"}, next_pull
    pki = "/etc/openvpn/server/iotistic"
    modes = in_container(GATEWAY, "stat", "-c", "%n %a", f"{pki}/server.key",
                         f"{pki}/tls-crypt-v2.key").stdout.split()  # fmt: skip
    assert modes[1::2] == ["600", "600"], modes
    read_subject = (
        "from cryptography import x509; import sys; print(x509.load_pem_x509_certificate("
        "open(sys.argv[1], 'rb').read()).subject.rfc4514_string())"
    )
    subject = in_container(GATEWAY, "python3", "-c", read_subject, f"{pki}/server.crt").stdout
    assert VPN_HOSTNAME in subject, subject


def test_the_cloud_gateway_reads_the_registry_as_the_stacks_login_over_verified_tls(
    cloud_gateway,
):
    """The agent's sessions: the stack's login (a member of iotistic_gateway), TLS, and its
    configuration verify-full against the bundle pulled from the registry secret."""
    query = (
        "SELECT host(a.client_addr), a.usename, r.rolname, s.ssl FROM pg_stat_activity a"
        " JOIN pg_stat_ssl s USING (pid) JOIN pg_auth_members m ON m.member = a.usesysid"
        " JOIN pg_roles r ON r.oid = m.roleid WHERE a.application_name LIKE 'iotistic-%'"
    )
    out = in_container(
        REGISTRY, "runuser", "-u", "postgres", "--", "psql", "-XAt", "-F", " ",
        "-d", "iotistic_vpn", "-c", query,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    sessions = {line.partition(" ")[2] for line in out.stdout.splitlines()
                if line.startswith(f"{GATEWAY_ADDRESS} ")}  # fmt: skip
    assert sessions == {f"{LOGIN} iotistic_gateway t"}, out.stdout
    agent = in_container(GATEWAY, "cat", "/etc/iotistic-vpn/gateway-agent.toml").stdout
    assert 'sslmode = "verify-full"' in agent
    root = in_container(GATEWAY, "stat", "-c", "%a", "/etc/iotistic-vpn/registry-ca.pem").stdout
    assert root.strip() == "644"
    pulled = in_container(GATEWAY, "cat", "/etc/iotistic-vpn/registry-ca.pem").stdout
    assert pulled.strip() == REGISTRY_CA.read_text().strip()


def _device_on(gateway: str) -> object:
    device = lab_devices()[DEVICE]
    return device if device.connected and device.gateway == gateway else None


def test_a_device_connects_through_the_cloud_gateway(cloud_gateway):
    # Its own remotes out, and the remote guard's management lines: this second OpenVPN has
    # no guard to answer it (the guard follows the tunnel unit's socket, gone with the unit).
    conf = (
        "grep -v -e '^remote ' -e '^remote-random' -e '^management' "
        f"/etc/openvpn/client/iotistic.conf > {DEVICE_CONF}"
        f" && echo 'remote {GATEWAY_ADDRESS} 1194' >> {DEVICE_CONF}"
    )
    assert in_container(DEVICE, "systemctl", "stop", CLIENT_UNIT).returncode == 0
    try:
        assert in_container(DEVICE, "sh", "-c", conf).returncode == 0
        started = in_container(DEVICE, "openvpn", "--config", DEVICE_CONF, "--daemon",
                               "cloud-pull", "--writepid", DEVICE_PID)  # fmt: skip
        assert started.returncode == 0, started.stderr
        device = wait_for(lambda: _device_on(GATEWAY_ADDRESS), 60,
                          f"{DEVICE} connected through {GATEWAY_ADDRESS}")  # fmt: skip
        tun = in_container(
            DEVICE, "ip", "-4", "-o", "addr", "show", "dev", conventions.DEVICE_TUNNEL_INTERFACE
        ).stdout
        assert f" {device.vpn_address}/" in tun, tun
    finally:
        in_container(
            DEVICE, "sh", "-c", f"kill $(cat {DEVICE_PID}) 2>/dev/null; rm -f {DEVICE_PID}"
        )
        in_container(DEVICE, "systemctl", "start", CLIENT_UNIT)
        wait_for(lambda: any(_device_on(g) for g in GATEWAYS), 90,
                 f"{DEVICE} back on a lab gateway")  # fmt: skip


def test_a_republished_crl_reaches_the_gateway_on_its_next_pull_which_changes_nothing_else(
    aws, publish_vars, cloud_gateway, record_property
):
    unit = "openvpn-server@iotistic-0.service"

    def started() -> str:
        show = ["systemctl", "show", "-p", "ActiveEnterTimestampMonotonic", "--value", unit]
        return in_container(GATEWAY, *show).stdout.strip()

    before = started()
    # Re-signed now (same entries, a later nextUpdate), as a revocation or the refresh would:
    # a refresh window longer than the CRL has left, whatever an earlier run left it with.
    crl = x509.load_pem_x509_crl((REPO / "build/pki/crl.pem").read_bytes())
    days_left = (crl.next_update_utc - datetime.now(UTC)).days + 1
    resigned = _publish(aws, publish_vars, "-e", f"vpn_pki_crl_refresh_before_days={days_left}",
                        "-e", f"vpn_pki_crl_next_update_days={days_left + 1}")  # fmt: skip
    assert resigned.returncode == 0, resigned.messages()
    assert resigned.changed_hosts(), "the CRL was not re-signed and published"
    recap, seconds, output = _pull(aws)
    record_property("second_pull_s", round(seconds, 1))
    print(f"\nsecond pull (a new CRL): {seconds:.1f} s, {recap}")
    # The second pull changes the CRL and nothing else: the rest of the converge is idempotent.
    lines = output.splitlines()
    changed = [lines[i - 1] for i, line in enumerate(lines) if line.startswith("changed:")]
    assert recap["changed"] == 1 and "CRL" in changed[0], changed
    on_gateway = in_container(GATEWAY, "cat", "/etc/openvpn/server/iotistic/crl.pem").stdout
    assert on_gateway.strip() == (REPO / "build/pki/crl.pem").read_text().strip()
    assert started() == before, f"{unit} was restarted for a new CRL"
