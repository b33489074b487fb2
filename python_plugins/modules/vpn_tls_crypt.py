#!/usr/bin/python
"""Ansible module vpn_tls_crypt: the fleet's tls-crypt-v2 server key and device client keys."""

from __future__ import annotations

DOCUMENTATION = r"""
module: vpn_tls_crypt
short_description: Make the Iotistic VPN tls-crypt-v2 server key and device client keys
description:
  - Makes the fleet's tls-crypt-v2 server key at O(server_key_path) (0600) when it does not
    exist. An existing server key is never rewritten, because every gateway and client key
    depends on it.
  - Makes one client key per device in O(clients), wrapped under the server key, at
    C(<dest>/<customer>/<device>.tls-crypt-v2.key) (0600). A client key that is already there
    and unwraps with the server key (and, with O(metadata=identity), names its device) is kept;
    one that does not (another fleet's key, a damaged file) is replaced.
  - Keys are in OpenVPN 2.6's own PEM formats (C(openvpn --genkey tls-crypt-v2-server) and
    C(tls-crypt-v2-client)); a key file that is not 0600 is set to 0600. Key material is never
    returned or shown in a diff.
version_added: "0.1.0"
author: Iotistic VPN
options:
  server_key_path:
    description: The fleet's tls-crypt-v2 server key file.
    type: path
    required: true
  create_server_key:
    description:
      - Make the server key when it does not exist. With V(false) a missing server key is an
        error, so a run meant only for client keys cannot start a new fleet key by mistake.
    type: bool
    default: true
  dest:
    description: Directory that receives C(<customer>/<device>.tls-crypt-v2.key).
    type: path
  clients:
    description: Devices that need a client key (a device id may appear only once).
    type: list
    elements: dict
    suboptions:
      customer:
        description: Customer id.
        type: str
        required: true
      device:
        description: Device id.
        type: str
        required: true
  metadata:
    description:
      - What a new client key carries for the gateway's C(tls-crypt-v2-verify) script.
      - V(timestamp) is OpenVPN's default (the time the key was made).
      - V(identity) is USER metadata C(urn:iotistic:<customer>:<device>), the certificate's SAN
        URI, so a gateway can drop a device before any TLS; an existing key naming another
        device is then replaced.
    type: str
    choices: [timestamp, identity]
    default: timestamp
notes:
  - Supports check mode and diff mode (which keys are absent, present or foreign; never keys).
  - 10,000 unchanged client keys are checked in well under a second.
"""

EXAMPLES = r"""
- name: Ensure the fleet has its tls-crypt-v2 server key.
  vpn_tls_crypt:
    server_key_path: /etc/iotistic/pki/tls-crypt-v2-server.key

- name: Ensure every device of the play has a tls-crypt-v2 client key.
  vpn_tls_crypt:
    server_key_path: /etc/iotistic/pki/tls-crypt-v2-server.key
    create_server_key: false
    dest: /etc/iotistic/pki/devices
    clients:
      - {customer: acme, device: pump-001}
      - {customer: acme, device: pump-002}
  delegate_to: localhost
  run_once: true
"""

RETURN = r"""
server_key_path:
  description: The server key file.
  type: str
  returned: always
server_key_created:
  description: Whether the server key was (or in check mode would be) made by this run.
  type: bool
  returned: always
clients:
  description: One entry per client, in the order given.
  type: list
  elements: dict
  returned: always
  contains:
    customer: {description: Customer id, type: str}
    device: {description: Device id, type: str}
    path: {description: Client key file, type: str}
    status: {description: C(created), C(replaced) or C(unchanged), type: str}
created:
  description: C(customer/device) of clients whose key was made because there was none.
  type: list
  elements: str
  returned: always
replaced:
  description: C(customer/device) of clients whose key did not unwrap (or named another device).
  type: list
  elements: str
  returned: always
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.iotistic_vpn.pki import tlscrypt
from ansible.module_utils.module_errors import failing_cleanly


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "server_key_path": {"type": "path", "required": True},
            "create_server_key": {"type": "bool", "default": True},
            "dest": {"type": "path"},
            "clients": {
                "type": "list",
                "elements": "dict",
                "options": {
                    "customer": {"type": "str", "required": True},
                    "device": {"type": "str", "required": True},
                },
            },
            "metadata": {
                "type": "str",
                "choices": list(tlscrypt.METADATA_CHOICES),
                "default": "timestamp",
            },
        },
        required_by={"clients": ["dest"]},
        supports_check_mode=True,
    )
    p = module.params
    with failing_cleanly(module):
        result = tlscrypt.ensure_keys(
            p["server_key_path"],
            create_server_key=p["create_server_key"],
            dest=p["dest"],
            clients=p["clients"] or [],
            metadata=p["metadata"],
            write=not module.check_mode,
        )

    out = {
        "changed": result.changed,
        "server_key_path": result.server_key_path,
        "server_key_created": result.server_key_created,
        "clients": result.clients,
        "created": result.labels("created"),
        "replaced": result.labels("replaced"),
    }
    if module._diff:
        out["diff"] = {
            "before": {
                "server_key": "absent" if result.server_key_created else "present",
                "clients": result.before,
            },
            "after": {"server_key": "present", "clients": dict.fromkeys(result.before, "present")},
        }
    module.exit_json(**out)


if __name__ == "__main__":
    main()
