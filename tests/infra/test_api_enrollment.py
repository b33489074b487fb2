"""Enrollment on the cloud API's task (stack config api.enrollment): what the task gets, from
where, and what its execution role may read, on both stacks (on) and a prod with it off."""

from __future__ import annotations

import base64
import json

import yaml

from iotistic_vpn import conventions
from tests.infra.stackreport import Stack

ENROLL_ENV = {
    "IOTISTIC_API_ENROLL_PKI_DIR",
    "IOTISTIC_API_ENROLL_TLS_CRYPT_SERVER_KEY",
    "IOTISTIC_API_ENROLL_REMOTES",
}
# Injected variable -> (secret under iotistic-vpn/<stack>/, JSON key; None: the whole secret).
ENROLL_SECRETS = {
    "IOTISTIC_PEM_ENROLL_CA_CERT": ("api/enroll-ca", "cert"),
    "IOTISTIC_PEM_ENROLL_CA_CHAIN": ("api/enroll-ca", "chain"),
    "IOTISTIC_PEM_ENROLL_ROOT_CERT": ("api/enroll-ca", "root"),
    "IOTISTIC_PEM_ENROLL_CA_KEY": ("pki/ca-key", None),
    "IOTISTIC_PEM_ENROLL_TLS_CRYPT_SERVER_KEY": ("gateway/tls-crypt-v2-server", "key"),
}
BASE_SECRETS = {"api/registry", "api/tunnel-client"}
# With enrollment the API's own HTTPS listener renews through the gateways (test_api_renewal.py).
RENEWAL_SECRET = "api/renewal-server"


def _gateway_facts(stack: Stack) -> dict:
    """The iotistic_vpn_cloud_* facts written to each gateway at boot."""
    user_data = yaml.safe_load(base64.b64decode(stack.one("launch_template")["userData"]))
    files = {f["path"]: f["content"] for f in user_data["write_files"]}
    return json.loads(files["/etc/iotistic-vpn/inventory/group_vars/gateways.json"])


def _container(stack: Stack) -> dict:
    (container,) = json.loads(stack.one("task")["containerDefinitions"])
    return container


def _secret_arns(stack: Stack) -> dict[str, str]:
    """Secret path under iotistic-vpn/<stack>/ -> its ARN."""
    prefix = f"iotistic-vpn/{stack.name}/"
    return {s["name"].removeprefix(prefix): s["arn"] for s in stack.of("secret")}


def _readable(stack: Stack) -> list[str]:
    """The secret ARNs the API's execution role may read."""
    policy = json.loads(stack.one("role_policy", "api-execution-secrets")["policy"])
    statements = {s["Sid"]: s for s in policy["Statement"]}
    assert set(statements) == {"ReadApiSecrets", "DecryptThroughSecretsManager"}
    assert statements["ReadApiSecrets"]["Action"] == ["secretsmanager:GetSecretValue"]
    # Every secret it reads is under the PKI key, decrypted only through Secrets Manager.
    kms = statements["DecryptThroughSecretsManager"]
    assert kms["Resource"] == [stack.one("kms", "pki")["arn"]]
    assert kms["Condition"] == {
        "StringEquals": {"kms:ViaService": "secretsmanager.eu-central-1.amazonaws.com"}
    }
    return statements["ReadApiSecrets"]["Resource"]


def test_the_task_gets_the_issuing_ca_the_tls_crypt_key_and_the_remotes(stack):
    assert stack.config["api"]["enrollment"] is True
    container = _container(stack)
    env = {e["name"]: e["value"] for e in container["environment"]}
    assert set(env) >= ENROLL_ENV
    # The files are in the task's PEM volume, where the start script writes them.
    mounts = {m["containerPath"] for m in container["mountPoints"] if not m["readOnly"]}
    assert env["IOTISTIC_API_ENROLL_PKI_DIR"] == "/run/iotistic-api/enroll"
    assert env["IOTISTIC_API_ENROLL_TLS_CRYPT_SERVER_KEY"].startswith("/run/iotistic-api/")
    assert "/run/iotistic-api" in mounts
    # No passphrase (it would sit beside the key), no certificate directory of infra's own.
    assert not {"IOTISTIC_API_ENROLL_CA_PASSPHRASE_FILE", "IOTISTIC_API_ENROLL_CERT_DIR"} & set(env)
    arns = _secret_arns(stack)
    injected = {s["name"]: s["valueFrom"] for s in container["secrets"]}
    for var, (path, key) in ENROLL_SECRETS.items():
        # A JSON key is ARN:key:: (no version: always the current value); else the whole secret.
        want = arns[path] if key is None else f"{arns[path]}:{key}::"
        assert injected.get(var) == want, var
    # The key material is a secret, never a plain environment value.
    assert not [name for name in env if name.startswith("IOTISTIC_PEM_")]
    # The CA's certificates are the API's own secret, under the PKI key like the rest.
    enroll_ca = stack.one("secret", "api-enroll-ca")
    assert enroll_ca["kmsKeyId"] == stack.one("kms", "pki")["arn"]
    assert "cert, chain, root" in enroll_ca["description"]
    assert stack.exports["api_secret_names"]["enroll_ca"] == enroll_ca["name"]


def test_the_remotes_name_the_gateways_public_name_and_the_openvpn_port(stack):
    env = {e["name"]: e["value"] for e in _container(stack)["environment"]}
    remotes = env["IOTISTIC_API_ENROLL_REMOTES"]
    host = stack.exports["vpn_hostname"]
    assert remotes == f"{host}:{conventions.OPENVPN_PORT}/udp"
    # That name is the gateway NLB's alias, and the NLB listens there on that port and protocol.
    gateway_lb = stack.one("lb", "gateways")
    (record,) = [r for r in stack.of("record") if r["name"] == host]
    assert record["aliases"][0]["name"] == gateway_lb["dnsName"]
    listeners = [lst for lst in stack.of("listener")
                 if lst["loadBalancerArn"] == gateway_lb["arn"]]  # fmt: skip
    assert [(lst["port"], lst["protocol"]) for lst in listeners] == [
        (conventions.OPENVPN_PORT, "UDP")
    ]
    # The API's own parser takes it as one UDP remote.
    from iotistic_vpn.enrollment import Remote, parse_remotes

    assert parse_remotes(remotes) == (Remote(host, conventions.OPENVPN_PORT, "udp"),)


def test_the_execution_role_reads_exactly_the_enrollment_secrets_and_never_a_root_key(stack):
    arns = _secret_arns(stack)
    wanted = BASE_SECRETS | {path for path, _key in ENROLL_SECRETS.values()} | {RENEWAL_SECRET}
    assert _readable(stack) == sorted(arns[path] for path in wanted)
    # Not the gateways' certificate or registry login; no root key exists in AWS to grant.
    readable = set(_readable(stack))
    assert arns["gateway/server-cert"] not in readable
    assert arns["gateway/registry"] not in readable
    assert not [path for path in arns if "root" in path]


def test_enrollment_off_declares_and_grants_none_of_it(stacks):
    stack = stacks["prod-enrollment-off"]
    assert stack.config["api"]["enrollment"] is False
    container = _container(stack)
    names = {e["name"] for e in container["environment"]} | {
        s["name"] for s in container["secrets"]
    }
    assert not [n for n in names if "ENROLL" in n or "IOTISTIC_API_TLS" in n]
    arns = _secret_arns(stack)
    assert not {"api/enroll-ca", RENEWAL_SECRET} & set(arns)
    assert _readable(stack) == sorted(arns[path] for path in BASE_SECRETS)
    assert set(stack.exports["api_secret_names"]) == {"registry", "tunnel_client"}
    # No renewal path either: no internal balancer, no name, nothing for the gateways to call.
    assert not [lb for lb in stack.of("lb") if lb["internal"]]
    assert stack.exports["api_renewal_url"] == ""
    facts = _gateway_facts(stack)
    assert facts["iotistic_vpn_cloud_api_renewal_url"] == ""
    # Everything else is the same stack: two secrets fewer than prod with enrollment on, and the
    # renewal balancer's four (balancer, target group, listener, name).
    on = stacks["prod"]
    assert len(on.resources) == len(stack.resources) + 6


def test_devices_enroll_over_https_through_the_load_balancer(stack):
    """The enroll client's https://api.<zone>/v1/enroll: the ALB's one listener is HTTPS (no
    plain HTTP anywhere), forwarding to the task's API port."""
    alb = stack.one("lb", "api-alb")
    listeners = [lst for lst in stack.of("listener") if lst["loadBalancerArn"] == alb["arn"]]
    assert [(lst["protocol"], lst["port"]) for lst in listeners] == [
        ("HTTPS", conventions.API_PUBLIC_PORT)
    ]
    (action,) = listeners[0]["defaultActions"]
    targets = stack.by_id(action["targetGroupArn"])
    assert (targets["protocol"], targets["port"]) == ("HTTP", conventions.API_CONTAINER_PORT)
    assert stack.exports["api_url"] == f"https://api.{stack.config['dns']['zone']}"
