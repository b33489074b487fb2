#!/usr/bin/python
"""Ansible module vpn_gateway_cert: the server certificate of one gateway."""

from __future__ import annotations

DOCUMENTATION = r"""
module: vpn_gateway_cert
short_description: Issue and renew an Iotistic VPN gateway (server) or tunnel client certificate
description:
  - Signs a server certificate for gateway O(name) with the issuing CA in O(ca_path),
    serverAuth only and with SAN DNS names, so devices that use OpenVPN's
    C(remote-cert-tls server) accept only gateways, never another device.
  - With O(purpose=tunnel-client), signs the cloud API's client certificate for the gateways'
    tunnel service instead - clientAuth and the tunnel client extended key usage
    (C(iotistic_vpn.conventions.TUNNEL_CLIENT_EKU)), subject O
    C(iotistic_vpn.conventions.TUNNEL_CLIENT_ORGANIZATION), never serverAuth.
  - Writes C(<dest>/<name>.crt) and, the first time, the key C(<dest>/<name>.key) (0600) made
    on the control node. The key is never rewritten; renewal signs it again.
  - The certificate is reissued when it is not from this CA, does not match the key, names
    other DNS names, has other extended key usages than O(purpose) gives, or ends within
    O(renew_within_days).
version_added: "0.1.0"
author: Iotistic VPN
options:
  name:
    description: Gateway name; the certificate CN and the file names.
    type: str
    required: true
  dns_names:
    description: SAN DNS names. Defaults to O(name).
    type: list
    elements: str
  dest:
    description: Directory of the certificate and key.
    type: path
    required: true
  key_type:
    description: Type of a new key (an existing key is kept whatever its type).
    type: str
    choices: [ec-p256, ec-p384, rsa-3072, ed25519]
    default: ec-p256
  validity_days:
    description: Validity of a new certificate (never beyond the issuing CA's).
    type: int
    default: 365
  renew_within_days:
    description: Renew a certificate that ends within this many days.
    type: int
    default: 30
  purpose:
    description:
      - V(gateway) - a gateway's server certificate (serverAuth).
      - V(tunnel-client) - the cloud API's client certificate for the gateways' tunnel service
        (clientAuth and the tunnel client EKU, O C(Iotistic VPN tunnel client)).
      - V(renewal-client) - a gateway's client certificate for the API's C(POST /v1/renewals)
        (clientAuth and the renewal client EKU), best made for the gateway's own key (put its
        server key at O(dest)/O(name).key first), so that no new secret is made.
      - A certificate issued for another purpose is reissued on the same key.
    type: str
    choices: [gateway, tunnel-client, renewal-client]
    default: gateway
extends_documentation_fragment:
  - iotistic_vpn_ca
notes:
  - Supports check mode and diff mode (serial, fingerprint, end date and DNS names).
"""

EXAMPLES = r"""
- name: Ensure the gateway has its server certificate.
  vpn_gateway_cert:
    name: "{{ inventory_hostname }}"
    dns_names: ["{{ inventory_hostname }}", vpn.example.net]
    dest: /etc/iotistic/pki/gateways
    ca_path: /etc/iotistic/pki/ca
  delegate_to: localhost

- name: Ensure the cloud API has its tunnel client certificate.
  vpn_gateway_cert:
    name: api
    purpose: tunnel-client
    dest: /etc/iotistic/pki/api
    ca_path: /etc/iotistic/pki/ca
  delegate_to: localhost
"""

RETURN = r"""
cert_path:
  description: Certificate file.
  type: str
  returned: always
key_path:
  description: Key file (0600).
  type: str
  returned: always
status:
  description: C(issued), C(renewed) or C(unchanged).
  type: str
  returned: always
serial:
  description: Serial number in decimal.
  type: str
  returned: always
not_after:
  description: End of validity (ISO 8601).
  type: str
  returned: always
fingerprint:
  description: SHA-256 fingerprint, 64 hex digits.
  type: str
  returned: always
dns_names:
  description: SAN DNS names in the certificate.
  type: list
  elements: str
  returned: always
purpose:
  description: The purpose the certificate was checked or issued for (O(purpose)).
  type: str
  returned: always
"""

import datetime as dt

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.iotistic_vpn import pki
from ansible.module_utils.module_errors import failing_cleanly


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "name": {"type": "str", "required": True},
            "dns_names": {"type": "list", "elements": "str"},
            "dest": {"type": "path", "required": True},
            "ca_path": {"type": "path", "required": True},
            "ca_passphrase": {"type": "str", "no_log": True},
            "key_type": {"type": "str", "choices": list(pki.KEY_TYPES), "default": "ec-p256"},
            "validity_days": {"type": "int", "default": 365},
            "renew_within_days": {"type": "int", "default": 30},
            "purpose": {
                "type": "str",
                "choices": list(pki.PURPOSES),
                "default": "gateway",
            },
        },
        supports_check_mode=True,
    )
    p = module.params
    with failing_cleanly(module):
        ca = pki.load_issuing_ca(p["ca_path"], p["ca_passphrase"])
        result = pki.ensure_gateway_cert(
            ca,
            p["name"],
            p["dest"],
            dns_names=p["dns_names"],
            key_type=p["key_type"],
            renew_within=dt.timedelta(days=p["renew_within_days"]),
            validity=dt.timedelta(days=p["validity_days"]),
            purpose=p["purpose"],
            write=not module.check_mode,
        )

    out = {
        "changed": result.status != "unchanged",
        "cert_path": result.cert_path,
        "key_path": result.key_path,
        "status": result.status,
        "purpose": p["purpose"],
        **result.facts(),
    }
    if module._diff:
        after = result.facts()
        out["diff"] = {"before": after if result.status == "unchanged" else result.before,
                       "after": after}  # fmt: skip
    module.exit_json(**out)


if __name__ == "__main__":
    main()
