"""vpn_cloud_put through real ansible-playbook against moto's server (tests/modules/conftest.py)."""

from __future__ import annotations

import json

import pytest

from tests.support.ansible_run import run_playbook
from tests.support.moto import REGION, client

pytestmark = pytest.mark.ansible

SECRET = "iotistic-vpn/t/gateway/registry"
BUCKET = "iotistic-vpn-t-crl"


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
