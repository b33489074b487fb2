"""vpn_cloud_put and roles/cloud_gateway through real ansible-playbook against moto's server."""

from __future__ import annotations

import json

import pytest

from tests.support.ansible_run import run_playbook
from tests.support.moto import REGION, client, moto_server

pytestmark = pytest.mark.ansible

SECRET = "iotistic-vpn/t/gateway/registry"
BUCKET = "iotistic-vpn-t-crl"


@pytest.fixture(scope="module")
def aws(tmp_path_factory):
    with moto_server("127.0.0.1", tmp_path_factory.mktemp("moto") / "moto.log") as env:
        yield env


def test_a_secret_pulumi_left_empty_gets_its_value_once(aws, tmp_path):
    client(aws, "secretsmanager").create_secret(Name=SECRET)
    value = {"user": "gw", "password": "s3cret-pw", "port": 5432}
    put = {"vpn_cloud_put": {"secret_id": SECRET, "value": value, "region": REGION}}
    reordered = {"password": "s3cret-pw", "port": 5432, "user": "gw"}
    run = run_playbook(
        [
            {"name": "Plan.", **put, "check_mode": True, "diff": True},
            {"name": "Put.", **put},
            {"name": "Put again.", **put},
            {"name": "Same value, other key order.",
             "vpn_cloud_put": {**put["vpn_cloud_put"], "value": reordered}},
            {"name": "Plan again.", **put, "check_mode": True},
        ],
        tmp_path,
        env=aws,
    )  # fmt: skip
    assert run.failed == 0, run.stdout
    planned, first, again, reordered_run, planned_again = run.tasks.values()
    assert planned["changed"] and planned["diff"]["before"] == ""
    assert first["changed"] and not again["changed"] and not reordered_run["changed"]
    assert not planned_again["changed"]
    assert again["version_id"] == first["version_id"]
    stored = client(aws, "secretsmanager").get_secret_value(SecretId=SECRET)
    assert json.loads(stored["SecretString"]) == value
    assert (
        len(client(aws, "secretsmanager").list_secret_version_ids(SecretId=SECRET)["Versions"]) == 1
    )
    assert "s3cret-pw" not in run.stdout


def test_a_missing_secret_is_an_error_naming_it(aws, tmp_path):
    missing = "iotistic-vpn/t/gateway/nope"
    task = {"vpn_cloud_put": {"secret_id": missing, "value": {"a": 1}, "region": REGION}}
    run = run_playbook([{"name": "Put.", **task}], tmp_path, env=aws)
    assert run.failed == 1
    assert missing in run.tasks["Put."]["msg"] and "pulumi up" in run.tasks["Put."]["msg"]


def test_an_object_is_compared_by_its_body(aws, tmp_path):
    client(aws, "s3").create_bucket(
        Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION}
    )
    put = {"bucket": BUCKET, "key": "crl/crl.pem", "region": REGION}
    run = run_playbook(
        [
            {"name": "Put.", "vpn_cloud_put": {**put, "content": "one\n"}},
            {"name": "Put again.", "vpn_cloud_put": {**put, "content": "one\n"}},
            {"name": "Plan a new body.", "vpn_cloud_put": {**put, "content": "two\n"},
             "check_mode": True, "diff": True},
            {"name": "Put a new body.", "vpn_cloud_put": {**put, "content": "two\n"}},
        ],
        tmp_path,
        env=aws,
    )  # fmt: skip
    assert run.failed == 0, run.stdout
    first, again, planned, second = run.tasks.values()
    assert first["changed"] and not again["changed"]
    assert planned["changed"] and planned["diff"] == {"before": "one\n", "after": "two\n"}
    assert second["changed"]
    body = client(aws, "s3").get_object(Bucket=BUCKET, Key="crl/crl.pem")["Body"].read()
    assert body == b"two\n"


def test_publish_then_pull_hand_the_gateway_what_the_control_node_made(aws, tmp_path):
    """roles/cloud_gateway both ways: what a gateway reads back is what publish wrote."""
    names = {k: f"iotistic-vpn/p/gateway/{k}" for k in ("server_cert", "tls_crypt_v2", "registry")}
    for name in names.values():
        client(aws, "secretsmanager").create_secret(Name=name)
    client(aws, "s3").create_bucket(
        Bucket="iotistic-vpn-p-crl", CreateBucketConfiguration={"LocationConstraint": REGION}
    )
    facts = {
        "iotistic_vpn_cloud_stack": "p",
        "iotistic_vpn_cloud_region": REGION,
        "iotistic_vpn_cloud_vpn_hostname": "vpn.p.example.com",
        "iotistic_vpn_cloud_crl_bucket": "iotistic-vpn-p-crl",
        "iotistic_vpn_cloud_crl_object_key": "crl/crl.pem",
        "iotistic_vpn_cloud_gateway_secrets": names,
        "iotistic_vpn_cloud_database_host": "db.p.internal",
        "iotistic_vpn_cloud_database_port": 5432,
        "iotistic_vpn_cloud_database_name": "iotistic_vpn",
        "cloud_gateway_registry_password": "pw-of-the-stack",
    }
    publish = [{"name": "Publish.", "ansible.builtin.include_role": {
        "name": "cloud_gateway", "tasks_from": "publish"}}]  # fmt: skip
    # Playbooks in tmp_path/playbooks: vpn_pki's default PKI directory is tmp_path/build/pki.
    plays = tmp_path / "playbooks"
    plays.mkdir()
    runs = [run_playbook(publish, plays, extra_vars=facts, env=aws) for _ in range(2)]
    assert [r.failed for r in runs] == [0, 0], runs[0].stdout
    assert runs[0].changed > 0 and runs[1].changed == 0, runs[1].stdout
    pull = [
        {"name": "Facts.", "ansible.builtin.setup": {"gather_subset": ["network"]}},
        {"name": "Pull.", "ansible.builtin.include_role": {
            "name": "cloud_gateway", "tasks_from": "pull"}},
        {"name": "Show.", "ansible.builtin.debug": {"msg": {
            "cert": "{{ cloud_gateway_pki.cert }}", "crl": "{{ cloud_gateway_pki.crl }}",
            "user": "{{ gateway_agent_registry_user }}",
            "host": "{{ gateway_agent_registry_host }}",
            "port": "{{ gateway_agent_registry_port }}"}}},
    ]  # fmt: skip
    pulled = run_playbook(pull, plays, extra_vars=facts, env=aws)
    assert pulled.failed == 0, pulled.stdout
    assert pulled.changed == 0
    shown = pulled.tasks["Show."]["msg"]
    pki = tmp_path / "build/pki"
    assert shown["cert"].strip() == (pki / "gateways/vpn.p.example.com.crt").read_text().strip()
    assert shown["crl"].strip() == (pki / "crl.pem").read_text().strip()
    assert (shown["user"], shown["host"], shown["port"]) == (
        "iotistic_vpn_gw_p",
        "db.p.internal",
        5432,
    )
    # Neither side prints a key or the password.
    key = (pki / "gateways/vpn.p.example.com.key").read_text().strip().splitlines()[1]
    for run in (*runs, pulled):
        assert "pw-of-the-stack" not in run.stdout
        assert key not in run.stdout
