"""Renewal through the tunnel in the cloud (with api.enrollment): the gateways reach the API's own
HTTPS listener through an internal network load balancer that passes TLS through, so their
renewal client certificates are verified by the API itself, as in the lab."""

from __future__ import annotations

import json

from iotistic_vpn import conventions
from tests.infra.stackreport import Stack
from tests.infra.test_api_enrollment import _container, _gateway_facts, _secret_arns
from tests.infra.test_program import _groups, _private_subnet_ids, _rules

PORT = conventions.API_TLS_PORT
# Injected variable -> JSON key of api/renewal-server.
RENEWAL_SECRETS = {
    "IOTISTIC_PEM_TLS_CERT": "cert",
    "IOTISTIC_PEM_TLS_KEY": "key",
    "IOTISTIC_PEM_TLS_CLIENT_CA": "ca",
}


def _renewal_lb(stack: Stack) -> dict:
    return stack.one("lb", "api-renewal")


def test_the_renewal_balancer_is_internal_and_passes_tls_through_to_the_tasks(stack):
    nlb = _renewal_lb(stack)
    assert (nlb["loadBalancerType"], nlb["internal"]) == ("network", True)
    assert set(nlb["subnets"]) == _private_subnet_ids(stack)
    assert {_groups(stack)[g] for g in nlb["securityGroups"]} == {"renewal_lb"}
    (listener,) = [lst for lst in stack.of("listener") if lst["loadBalancerArn"] == nlb["arn"]]
    # TCP, not TLS: the client certificate must reach the API; no certificate on the balancer.
    assert (listener["protocol"], listener["port"]) == ("TCP", PORT)
    assert "certificateArn" not in listener and "sslPolicy" not in listener
    (action,) = listener["defaultActions"]
    targets = stack.by_id(action["targetGroupArn"])
    assert (targets["protocol"], targets["port"], targets["targetType"]) == ("TCP", PORT, "ip")
    assert targets["healthCheck"]["protocol"] == "TCP"
    registered = {
        (lb["targetGroupArn"], lb["containerName"], lb["containerPort"])
        for lb in stack.one("ecs_service")["loadBalancers"]
    }
    assert (targets["arn"], "api", PORT) in registered


def test_only_the_gateways_reach_the_renewal_port(stack):
    assert [r for r in _rules(stack, "ingress") if r[2] == PORT] == [
        ("api", "tcp", PORT, "renewal_lb"),
        ("renewal_lb", "tcp", PORT, "gateway"),
    ]
    assert [r for r in _rules(stack, "egress") if r[2] == PORT] == [
        ("gateway", "tcp", PORT, "renewal_lb"),
        ("renewal_lb", "tcp", PORT, "api"),
    ]
    # The balancer opens nothing else, and nothing from the internet reaches it.
    assert [r for r in _rules(stack, "egress") if r[0] == "renewal_lb"] == [
        ("renewal_lb", "tcp", PORT, "api")
    ]
    assert [r for r in _rules(stack, "ingress") if r[0] == "renewal_lb"] == [
        ("renewal_lb", "tcp", PORT, "gateway")
    ]


def test_the_renewal_name_aliases_the_internal_balancer_and_reaches_the_gateways(stack):
    """One name in three places: the alias, the stack output (publish issues the listener's
    certificate for it) and the gateways' boot facts (their agents call it)."""
    zone = stack.config["dns"]["zone"]
    host = f"renew.{zone}"
    url = f"https://{host}:{PORT}"
    records = {r["name"]: r for r in stack.of("record")}
    assert records[host]["aliases"][0]["name"] == _renewal_lb(stack)["dnsName"]
    assert stack.exports["api_renewal_url"] == url
    assert stack.exports["api_renewal_lb_name"] == _renewal_lb(stack)["name"]
    assert _gateway_facts(stack)["iotistic_vpn_cloud_api_renewal_url"] == url


def test_the_task_serves_https_with_the_published_certificate_and_asks_for_client_ones(stack):
    from iotistic_vpn.api.settings import ApiSettings

    container = _container(stack)
    env = {e["name"]: e["value"] for e in container["environment"]}
    assert env["IOTISTIC_API_TLS_LISTEN"] == f"0.0.0.0:{PORT}"
    files = {env[f"IOTISTIC_API_TLS_{p}"] for p in ("CERT", "KEY", "CLIENT_CA")}
    assert len(files) == 3 and all(f.startswith("/run/iotistic-api/") for f in files)
    assert {p["containerPort"]: p["name"] for p in container["portMappings"]}[PORT] == "https"
    # The API takes these settings as they are (files aside): the listener, its client CA.
    settings = ApiSettings(
        registry_dsn="user=api", tunnel_cert="/c", tunnel_key="/k", tunnel_ca="/a",
        **{k.removeprefix("IOTISTIC_API_").lower(): v for k, v in env.items()
           if k.startswith("IOTISTIC_API_TLS_")},
    )  # fmt: skip
    assert settings.tls_address() == ("0.0.0.0", PORT)  # noqa: S104 - the task's own interface
    arns = _secret_arns(stack)
    injected = {s["name"]: s["valueFrom"] for s in container["secrets"]}
    for var, key in RENEWAL_SECRETS.items():
        assert injected[var] == f"{arns['api/renewal-server']}:{key}::", var
    secret = stack.one("secret", "api-renewal-server")
    assert secret["kmsKeyId"] == stack.one("kms", "pki")["arn"]
    assert "cert, key, ca" in secret["description"]
    assert stack.exports["api_secret_names"]["renewal_server"] == secret["name"]
    policy = json.loads(stack.one("role_policy", "api-execution-secrets")["policy"])
    (read,) = [s for s in policy["Statement"] if s["Sid"] == "ReadApiSecrets"]
    assert arns["api/renewal-server"] in read["Resource"]
