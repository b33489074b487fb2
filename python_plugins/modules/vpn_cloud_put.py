#!/usr/bin/python
"""Ansible module vpn_cloud_put: a Secrets Manager value or an S3 object, put when it differs."""

from __future__ import annotations

DOCUMENTATION = r"""
module: vpn_cloud_put
short_description: Put a Secrets Manager value or an S3 object when it differs from what is there
description:
  - With O(secret_id), makes O(value) the current value of that secret. The secret itself must
    exist (Pulumi makes the containers, infra/components/pki_store.py); a secret that has no
    value yet, as Pulumi leaves it, gets its first one. A JSON value equal to the current one
    (keys in any order) is left alone.
  - With O(bucket) and O(key), makes O(content) that object's body. The object is read back and
    compared byte for byte, not by ETag, which is not an MD5 on a KMS-encrypted bucket.
  - Idempotent, with check mode. Nothing written is ever returned; a secret's diff shows only
    that it changes.
version_added: "0.1.0"
author: Iotistic VPN
options:
  secret_id:
    description: Name or ARN of an existing secret. Mutually exclusive with O(bucket).
    type: str
  value:
    description:
      - The secret's value. A dict or list is stored as JSON with sorted keys; a string as it
        is. Required with O(secret_id).
    type: raw
  bucket:
    description: The S3 bucket. Requires O(key) and O(content).
    type: str
  key:
    description: The object's key in O(bucket).
    type: str
  content:
    description: The object's body (text, stored UTF-8).
    type: str
  content_type:
    description: The object's Content-Type.
    type: str
    default: application/octet-stream
extends_documentation_fragment:
  - amazon.aws.common.modules
  - amazon.aws.region.modules
"""

EXAMPLES = r"""
- name: Store the gateways' registry login.
  vpn_cloud_put:
    secret_id: iotistic-vpn/dev/gateway/registry
    value: {user: iotistic_vpn_gw_dev, password: "{{ vault_password }}"}
    region: eu-central-1
  no_log: true

- name: Publish the CRL.
  vpn_cloud_put:
    bucket: iotistic-vpn-dev-crl-abc
    key: crl/crl.pem
    content: "{{ lookup('ansible.builtin.file', 'build/pki/crl.pem') }}"
    region: eu-central-1
"""

RETURN = r"""
version_id:
  description: The secret's or object's version after the run (null when not versioned).
  returned: success
  type: str
"""

import json

from ansible_collections.amazon.aws.plugins.module_utils.modules import (
    AnsibleAWSModule,
)

try:
    import botocore
except ImportError:  # AnsibleAWSModule reports the missing SDK itself
    botocore = None


def _error_code(exc: Exception) -> str:
    return getattr(exc, "response", {}).get("Error", {}).get("Code", "")


def _secret_text(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def _same_secret(current: str | None, wanted: str) -> bool:
    if current is None:
        return False
    if current == wanted:
        return True
    try:
        return json.loads(current) == json.loads(wanted)
    except ValueError:
        return False


def put_secret(module: AnsibleAWSModule) -> dict:
    client = module.client("secretsmanager")
    secret_id = module.params["secret_id"]
    wanted = _secret_text(module.params["value"])
    try:
        current = client.get_secret_value(SecretId=secret_id)
        text, version = current.get("SecretString"), current.get("VersionId")
    except botocore.exceptions.ClientError as exc:
        if _error_code(exc) != "ResourceNotFoundException":
            module.fail_json_aws(exc, msg=f"cannot read secret {secret_id!r}")
        # No AWSCURRENT value yet (a container Pulumi made), or no such secret.
        try:
            client.describe_secret(SecretId=secret_id)
        except botocore.exceptions.ClientError as missing:
            module.fail_json_aws(
                missing, msg=f"secret {secret_id!r} does not exist; `pulumi up` makes it"
            )
        text, version = None, None
    if _same_secret(text, wanted):
        return {"changed": False, "version_id": version}
    diff = {"before": "(a value)\n" if text is not None else "", "after": "(a new value)\n"}
    if module.check_mode:
        return {"changed": True, "version_id": version, "diff": diff}
    try:
        put = client.put_secret_value(SecretId=secret_id, SecretString=wanted)
    except botocore.exceptions.ClientError as exc:
        module.fail_json_aws(exc, msg=f"cannot write secret {secret_id!r}")
    return {"changed": True, "version_id": put.get("VersionId"), "diff": diff}


def put_object(module: AnsibleAWSModule) -> dict:
    client = module.client("s3")
    bucket, key = module.params["bucket"], module.params["key"]
    where = f"s3://{bucket}/{key}"
    wanted = module.params["content"].encode()
    try:
        current = client.get_object(Bucket=bucket, Key=key)
        body, version = current["Body"].read(), current.get("VersionId")
    except botocore.exceptions.ClientError as exc:
        if _error_code(exc) not in ("NoSuchKey", "404"):
            module.fail_json_aws(exc, msg=f"cannot read {where}")
        body, version = None, None
    if body == wanted:
        return {"changed": False, "version_id": version}
    diff = {"before": (body or b"").decode(errors="replace"), "after": wanted.decode()}
    if module.check_mode:
        return {"changed": True, "version_id": version, "diff": diff}
    try:
        put = client.put_object(
            Bucket=bucket, Key=key, Body=wanted, ContentType=module.params["content_type"]
        )
    except botocore.exceptions.ClientError as exc:
        module.fail_json_aws(exc, msg=f"cannot write {where}")
    return {"changed": True, "version_id": put.get("VersionId"), "diff": diff}


def main() -> None:
    module = AnsibleAWSModule(
        argument_spec={
            "secret_id": {"type": "str"},
            "value": {"type": "raw", "no_log": True},
            "bucket": {"type": "str"},
            "key": {"type": "str", "no_log": False},
            "content": {"type": "str"},
            "content_type": {"type": "str", "default": "application/octet-stream"},
        },
        mutually_exclusive=[("secret_id", "bucket")],
        required_one_of=[("secret_id", "bucket")],
        required_by={"secret_id": ("value",), "bucket": ("key", "content")},
        supports_check_mode=True,
    )
    result = put_secret(module) if module.params["secret_id"] else put_object(module)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
