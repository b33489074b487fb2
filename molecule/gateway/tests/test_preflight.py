"""Bad role input stops in preflight with a message naming the variable and its value.

Each case runs only the roles' preflight tasks against the converged gateway (nothing there can
change) in one ansible-playbook run; a rescue collects every failure message.
"""

import json
import os
import subprocess
from pathlib import Path

import pytest

PROJECT = Path(os.environ.get("MOLECULE_PROJECT_DIRECTORY", Path(__file__).parents[3]))
PKI = Path(os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY", "/nonexistent")) / "pki"

# case: (role, variables that make it fail)
CASES = {
    "key_is_a_certificate": ("openvpn_gateway", {"openvpn_gateway_key": f"{PKI}/ca/ca.crt"}),
    "cert_is_the_ca": ("openvpn_gateway", {"openvpn_gateway_cert": f"{PKI}/ca/ca.crt"}),
    "key_of_another_certificate": ("openvpn_gateway", {"openvpn_gateway_key": f"{PKI}/ca/ca.key"}),
    "crl_is_missing": ("openvpn_gateway", {"openvpn_gateway_crl": "/nonexistent/crl.pem"}),
    "no_instances": ("openvpn_gateway", {"openvpn_gateway_instances": 0}),
    "pool_without_prefix": ("openvpn_gateway", {"openvpn_gateway_pool": "100.64.0.0"}),
    "keepalive_backwards": ("openvpn_gateway", {"openvpn_gateway_keepalive": [60, 10]}),
    "connect_freq_without_interval": (
        "openvpn_gateway",
        {"openvpn_gateway_connect_freq_initial": [4096]},
    ),
    "device_port_out_of_range": (
        "openvpn_gateway",
        {"openvpn_gateway_device_ports": [48484, 70000]},
    ),
    "listen_without_port": ("gateway_agent", {"gateway_agent_http_listen": "127.0.0.1"}),
    "negative_interval": ("gateway_agent", {"gateway_agent_snapshot_interval_s": -5}),
    "tunnel_listen_by_name": ("gateway_agent", {"gateway_agent_tunnel_listen": "gw-1:8443"}),
    "package_elsewhere": ("gateway_agent", {"gateway_agent_package_src": "/nonexistent/pkg"}),
    # As on a host openvpn_gateway never ran on: the fact the role looks for is not there.
    "no_layout": ("gateway_agent", {"_gateway_agent_fact_name": "not_published"}),
}

EXPECTED = {
    "key_is_a_certificate": "openvpn_gateway_key must be PEM text, or the path of a file on the "
    "control node, holding an unencrypted private key; it does not.",
    "cert_is_the_ca": "openvpn_gateway_cert (CN=Molecule Gateway Issuing CA) must be an unexpired "
    "certificate with the serverAuth extended key usage for the key in openvpn_gateway_key "
    "(vpn_gateway_cert makes both); it has no extended key usage,",
    "key_of_another_certificate": (
        "openvpn_gateway_cert (CN=molecule-gateway-gw) must be an unexpired certificate",
        "it has TLS Web Server Authentication, ends ",
        " and does not match the key.",
    ),
    "crl_is_missing": "/nonexistent/crl.pem",
    "no_instances": "openvpn_gateway_instances must be a whole number from 1 to 254, not '0'.",
    "pool_without_prefix": "openvpn_gateway_pool must be an IPv4 network in CIDR form (the "
    "registry's pool, by default 100.64.0.0/10), not '100.64.0.0'.",
    "keepalive_backwards": "openvpn_gateway_keepalive must be [interval, timeout] with timeout > "
    "interval >= 1, not [60, 10].",
    "connect_freq_without_interval": "openvpn_gateway_connect_freq_initial must be [new devices, "
    "seconds], both whole numbers of at least 1, not [4096].",
    "device_port_out_of_range": "openvpn_gateway_device_ports: '70000' is not a TCP port "
    "(1-65535).",
    "listen_without_port": "gateway_agent_http_listen must be HOST:PORT (for example "
    "0.0.0.0:8089), not '127.0.0.1'.",
    "negative_interval": "gateway_agent_snapshot_interval_s must be a positive number, not '-5'.",
    "tunnel_listen_by_name": "gateway_agent_tunnel_listen must be ADDRESS:PORT (for example "
    "0.0.0.0:8443), not 'gw-1:8443'.",
    "package_elsewhere": "gateway_agent_package_src '/nonexistent/pkg' is not the iotistic_vpn "
    "package directory on the control node (it has no __init__.py).",
    "no_layout": "this host has no instance layout from it (local fact not_published in "
    "/etc/ansible/facts.d): run openvpn_gateway on this host first.",
}


@pytest.fixture(scope="module")
def messages(tmp_path_factory):
    """Run every case's preflight against the gateway; return {case: failure message or None}."""
    tmp = tmp_path_factory.mktemp("preflight")
    out = tmp / "messages.json"
    play_vars = {
        "openvpn_gateway_ca_chain": f"{PKI}/ca/ca-chain.crt",
        "openvpn_gateway_cert": f"{PKI}/gateways/molecule-gateway-gw.crt",
        "openvpn_gateway_key": f"{PKI}/gateways/molecule-gateway-gw.key",
        "openvpn_gateway_tls_crypt_v2_server_key": f"{PKI}/tls-crypt-v2-server.key",
        "openvpn_gateway_crl": f"{PKI}/crl.pem",
        "gateway_agent_registry_host": "registry",
    }
    tasks = [
        {
            "name": f"Case {case}.",
            "vars": overrides,
            "block": [
                {
                    "ansible.builtin.include_role": {"name": role, "tasks_from": "preflight"},
                },
                {"ansible.builtin.set_fact": {"_results": {case: None}}},
            ],
            "rescue": [
                {
                    "ansible.builtin.set_fact": {
                        # A loop's own message is "One or more items failed": add the items'.
                        "_results": {
                            case: "{{ ([ansible_failed_result.msg] + (ansible_failed_result"
                            ".results | default([]) | selectattr('failed', 'defined')"
                            " | selectattr('failed') | map(attribute='msg') | list))"
                            " | join(' | ') }}"
                        },
                    }
                }
            ],
            "always": [
                {
                    "ansible.builtin.set_fact": {
                        "_all": "{{ _all | default({}) | combine(_results) }}",
                    }
                }
            ],
        }
        for case, (role, overrides) in CASES.items()
    ]
    tasks.append(
        {
            "ansible.builtin.copy": {"content": "{{ _all | to_json }}", "dest": str(out)},
            "delegate_to": "localhost",
        }
    )
    playbook = tmp / "preflight.yml"
    play = {"hosts": "molecule-gateway-gw", "gather_facts": True, "vars": play_vars}
    playbook.write_text(json.dumps([play | {"tasks": tasks}]))
    env = os.environ | {
        "ANSIBLE_ROLES_PATH": str(PROJECT / "roles"),
        "ANSIBLE_CONFIG": str(PROJECT / "ansible.cfg"),
        "ANSIBLE_PYTHON_INTERPRETER": "/usr/bin/python3",
    }
    inventory = os.environ["MOLECULE_INVENTORY_FILE"]
    run = subprocess.run(
        ["ansible-playbook", "-i", inventory, str(playbook)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.exists(), run.stdout[-3000:] + run.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.parametrize("case", CASES)
def test_bad_input_fails_in_preflight_naming_it(messages, case):
    message = messages[case]
    assert message is not None, f"{case}: preflight passed"
    expected = EXPECTED[case]
    for fragment in [expected] if isinstance(expected, str) else expected:
        assert fragment in message, message
