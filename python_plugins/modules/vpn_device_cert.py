#!/usr/bin/python
"""Ansible module vpn_device_cert: device client certificates, one device or a batch."""

from __future__ import annotations

DOCUMENTATION = r"""
module: vpn_device_cert
short_description: Issue and renew Iotistic VPN device certificates
description:
  - Signs a client certificate for each device with the issuing CA in O(ca_path) and writes it
    to C(<dest>/<customer>/<device>.crt). The CA binds the identity itself (CN = device,
    O = customer, SAN URI C(urn:iotistic:<customer>:<device>), clientAuth only); the subject and
    extensions a CSR asks for are ignored.
  - The key stays on the device, which sends a CSR (O(csr) or O(csr_path)). For a device that
    cannot make one, O(generate_key) makes the key here and writes it once, 0600, to
    C(<dest>/<customer>/<device>.key); it is never rewritten and never returned.
  - A certificate that binds the same key, identity and CA and is not within
    O(renew_within_days) of its end is left as it is. Renewal signs the same key again and does
    not revoke the old certificate.
  - O(devices) handles a whole batch in one call (the CA is loaded once, unchanged devices are
    skipped cheaply, files are written atomically). Nothing is written if any device is invalid.
version_added: "0.1.0"
author: Iotistic VPN
options:
  dest:
    description: Directory that receives C(<customer>/<device>.crt).
    type: path
    required: true
  customer:
    description: Customer id of a single device.
    type: str
  device:
    description: Device id of a single device (globally unique; it is the certificate CN).
    type: str
  csr:
    description: PEM CSR of the single device.
    type: str
  csr_path:
    description: File holding the PEM CSR of the single device.
    type: path
  generate_key:
    description: Make the single device's key here instead of taking a CSR.
    type: bool
  key_type:
    description: Key type when O(generate_key=true).
    type: str
    choices: [ec-p256, ec-p384, rsa-3072, ed25519]
    default: ec-p256
  devices:
    description:
      - A batch of devices, each with one of C(csr), C(csr_path) or C(generate_key=true).
    type: list
    elements: dict
    suboptions:
      customer:
        description: Customer id.
        type: str
        required: true
      device:
        description: Device id (globally unique; it is the certificate CN).
        type: str
        required: true
      csr:
        description: PEM CSR.
        type: str
      csr_path:
        description: File holding the PEM CSR.
        type: path
      generate_key:
        description: Make the key here instead of taking a CSR.
        type: bool
      key_type:
        description: Key type when C(generate_key=true); defaults to C(ec-p256).
        type: str
        choices: [ec-p256, ec-p384, rsa-3072, ed25519]
  validity_days:
    description: Validity of new certificates (never beyond the issuing CA's).
    type: int
    default: 730
  renew_within_days:
    description: Renew a certificate that ends within this many days.
    type: int
    default: 30
extends_documentation_fragment:
  - iotistic_vpn_ca
notes:
  - Supports check mode and diff mode (serials, fingerprints and end dates of what changes).
  - 10,000 devices take about 1 s in the module when unchanged and 3-4 s when all are issued.
"""

EXAMPLES = r"""
- name: Ensure one device has a certificate from its CSR.
  vpn_device_cert:
    ca_path: /etc/iotistic/pki/ca
    dest: /etc/iotistic/pki/devices
    customer: acme
    device: dev-0001
    csr_path: /var/spool/iotistic/csr/dev-0001.csr

- name: Ensure every provisioned device has a certificate.
  vpn_device_cert:
    ca_path: /etc/iotistic/pki/ca
    dest: /etc/iotistic/pki/devices
    devices: "{{ provisioned_devices }}"  # [{customer, device, csr_path}, ...]
"""

RETURN = r"""
certificates:
  description: One entry per device, in the order given.
  type: list
  elements: dict
  returned: always
  contains:
    customer: {description: Customer id, type: str}
    device: {description: Device id, type: str}
    path: {description: Certificate file, type: str}
    key_path: {description: Key file when the key was made here, else null, type: str}
    status: {description: C(issued), C(renewed) or C(unchanged), type: str}
    serial: {description: Serial number in decimal, type: str}
    not_before: {description: Start of validity (ISO 8601), type: str}
    not_after: {description: End of validity (ISO 8601), type: str}
    fingerprint: {description: SHA-256 fingerprint, 64 hex digits, type: str}
issued:
  description: C(customer/device) of devices given a certificate for a new key, identity or CA.
  type: list
  elements: str
  returned: always
renewed:
  description: C(customer/device) of devices whose certificate was renewed for the same key.
  type: list
  elements: str
  returned: always
path:
  description: Certificate file of the single device.
  type: str
  returned: when O(device) is given
serial:
  description: Serial number (decimal) of the single device's certificate.
  type: str
  returned: when O(device) is given
not_after:
  description: End of validity of the single device's certificate.
  type: str
  returned: when O(device) is given
fingerprint:
  description: SHA-256 fingerprint of the single device's certificate.
  type: str
  returned: when O(device) is given
status:
  description: C(issued), C(renewed) or C(unchanged) for the single device.
  type: str
  returned: when O(device) is given
"""

import datetime as dt

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.iotistic_vpn import pki
from ansible.module_utils.module_errors import failing_cleanly


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "ca_path": {"type": "path", "required": True},
            "ca_passphrase": {"type": "str", "no_log": True},
            "dest": {"type": "path", "required": True},
            "customer": {"type": "str"},
            "device": {"type": "str"},
            "csr": {"type": "str"},
            "csr_path": {"type": "path"},
            "generate_key": {"type": "bool"},
            "key_type": {"type": "str", "choices": list(pki.KEY_TYPES), "default": "ec-p256"},
            "devices": {
                "type": "list",
                "elements": "dict",
                "options": {
                    "customer": {"type": "str", "required": True},
                    "device": {"type": "str", "required": True},
                    "csr": {"type": "str"},
                    "csr_path": {"type": "path"},
                    "generate_key": {"type": "bool"},
                    "key_type": {"type": "str", "choices": list(pki.KEY_TYPES)},
                },
                "mutually_exclusive": [("csr", "csr_path")],
            },
            "validity_days": {"type": "int", "default": 730},
            "renew_within_days": {"type": "int", "default": 30},
        },
        mutually_exclusive=[("devices", "customer"), ("devices", "device"), ("csr", "csr_path")],
        required_one_of=[("devices", "device")],
        required_together=[("customer", "device")],
        supports_check_mode=True,
    )
    p = module.params
    single = p["devices"] is None
    items = p["devices"] if not single else [{
        "customer": p["customer"], "device": p["device"], "csr": p["csr"],
        "csr_path": p["csr_path"], "generate_key": p["generate_key"], "key_type": p["key_type"],
    }]  # fmt: skip
    with failing_cleanly(module):
        requests = [pki.DeviceRequest.from_mapping(item) for item in items]
        ca = pki.load_issuing_ca(p["ca_path"], p["ca_passphrase"])
        results = pki.ensure_device_certs(
            ca,
            requests,
            p["dest"],
            renew_within=dt.timedelta(days=p["renew_within_days"]),
            validity=dt.timedelta(days=p["validity_days"]),
            write=not module.check_mode,
        )

    changed = [r for r in results if r.status != "unchanged"]
    out = {
        "changed": bool(changed),
        "certificates": [
            {"customer": r.customer, "device": r.device, "path": r.cert_path,
             "key_path": r.key_path, "status": r.status, **r.facts()}
            for r in results
        ],
        "issued": [f"{r.customer}/{r.device}" for r in results if r.status == "issued"],
        "renewed": [f"{r.customer}/{r.device}" for r in results if r.status == "renewed"],
    }  # fmt: skip
    if single:
        only = out["certificates"][0]
        out.update({k: only[k] for k in ("path", "serial", "not_after", "fingerprint", "status")})
    if module._diff:
        out["diff"] = {
            "before": {f"{r.customer}/{r.device}": r.before for r in changed},
            "after": {f"{r.customer}/{r.device}": r.facts() for r in changed},
        }
    module.exit_json(**out)


if __name__ == "__main__":
    main()
