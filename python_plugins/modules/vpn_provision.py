#!/usr/bin/python
"""Ansible module vpn_provision: register, certify and record a batch of devices at once."""

from __future__ import annotations

DOCUMENTATION = r"""
module: vpn_provision
short_description: Provision Iotistic VPN devices in one transaction
description:
  - For one customer, registers every device of O(devices) in the registry (a stable VPN
    address each), issues or renews its certificate from the CSR the device made (or a key made
    here with C(generate_key)), writes it to C(<dest>/<customer>/<device>.crt) and records it
    against the device, as one registry transaction.
  - The batch form of M(vpn_registry) plus M(vpn_device_cert) plus recording. One call
    provisions thousands of devices with one CA load and a handful of database round trips.
  - Certificate files are written once the registry accepted the records, before the commit.
    If the commit fails, a rerun finds them unchanged and records them, so nothing is issued
    twice.
  - All logic lives in C(iotistic_vpn.provisioning); this module converts options and results.
version_added: "0.1.0"
author: Iotistic VPN
options:
  customer:
    description: Customer id; created with its own address block if new.
    type: str
    required: true
  devices:
    description:
      - The devices, each a dict with C(device) and one of C(csr) (PEM), C(csr_path) or
        C(generate_key=true) (plus C(key_type)).
    type: list
    elements: dict
    required: true
  dest:
    description: Directory that receives C(<customer>/<device>.crt).
    type: path
    required: true
  validity_days:
    description: Validity of new certificates.
    type: int
    default: 730
  renew_within_days:
    description: Renew a certificate that ends within this many days.
    type: int
    default: 30
  block_prefix:
    description: Prefix length of the customer's block if the customer is new.
    type: int
    default: 20
  pool:
    description: Address pool customer blocks come from.
    type: str
    default: 100.64.0.0/10
  actor:
    description: Who makes the change, as written to the audit log.
    type: str
    default: ansible
extends_documentation_fragment:
  - iotistic_vpn_ca
  - iotistic_vpn_registry
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
requirements: [psycopg >= 3.1, cryptography]
"""

EXAMPLES = r"""
- name: Provision every device whose CSR was fetched to the control node.
  vpn_provision:
    customer: acme
    devices: "{{ fetched_csrs }}"  # [{device: pump-001, csr_path: build/csr/pump-001.csr}, ...]
    ca_path: "{{ vpn_pki_dir }}/ca"
    dest: "{{ vpn_pki_dir }}/devices"
    login_host: "{{ registry_host }}"
    login_user: iotistic_vpn
    login_password: "{{ registry_password }}"
"""

RETURN = r"""
devices:
  description: One entry per device, in the order given.
  returned: always
  type: list
  elements: dict
  contains:
    customer: {description: Customer id, type: str}
    device: {description: Device id, type: str}
    vpn_address: {description: The device's stable VPN address, type: str}
    state: {description: Registry state, type: str}
    cert_path: {description: Certificate file, type: str}
    key_path: {description: Key file when the key was made here, else null, type: str}
    status: {description: C(issued), C(renewed) or C(unchanged), type: str}
    serial: {description: Certificate serial (decimal), type: str}
    not_before: {description: Start of validity, type: str}
    not_after: {description: End of validity, type: str}
    fingerprint: {description: SHA-256 fingerprint (64 hex digits), type: str}
counts:
  description: How many devices were issued, renewed and left unchanged.
  returned: always
  type: dict
  sample: {issued: 9998, renewed: 0, unchanged: 2}
"""

import datetime as dt
from collections import Counter

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible.module_utils.iotistic_vpn import conventions  # standard library only
from ansible.module_utils.module_errors import failing_cleanly

try:
    from ansible.module_utils import registry_args
    from ansible.module_utils.iotistic_vpn import pki, provisioning, registry

    IMPORT_ERROR = None
except ImportError as exc:  # psycopg or cryptography missing on the module's interpreter
    IMPORT_ERROR = exc


def main() -> None:
    argument_spec = {
        "customer": {"type": "str", "required": True},
        # Entries are checked by the package: per-entry argspec validation costs seconds at 10k.
        "devices": {"type": "list", "elements": "dict", "required": True},
        "ca_path": {"type": "path", "required": True},
        "ca_passphrase": {"type": "str", "no_log": True},
        "dest": {"type": "path", "required": True},
        "validity_days": {"type": "int", "default": 730},
        "renew_within_days": {"type": "int", "default": 30},
        "block_prefix": {"type": "int", "default": conventions.CUSTOMER_BLOCK_PREFIX},
        "pool": {"type": "str", "default": conventions.VPN_POOL},
        "actor": {"type": "str", "default": "ansible"},
    }
    if IMPORT_ERROR is None:
        argument_spec.update(registry_args.argument_spec())
    module = AnsibleModule(
        argument_spec=argument_spec,
        supports_check_mode=True,
        mutually_exclusive=registry_args.mutually_exclusive() if IMPORT_ERROR is None else [],
    )
    if IMPORT_ERROR is not None:
        module.fail_json(
            msg=missing_required_lib("psycopg and cryptography"), exception=str(IMPORT_ERROR)
        )
    p = module.params
    with failing_cleanly(module):
        requests = [
            pki.DeviceRequest.from_mapping({**item, "customer": p["customer"]})
            for item in p["devices"]
        ]
        ca = pki.load_issuing_ca(p["ca_path"], p["ca_passphrase"])
        reg = registry.Registry(
            registry_args.conninfo(p), connect_timeout=p["connect_timeout"],
            pool=p["pool"], block_prefix=p["block_prefix"],
        )  # fmt: skip
        with reg:
            done, changed = provisioning.provision_devices(
                reg, ca, p["customer"], requests, p["dest"], actor=p["actor"],
                renew_within=dt.timedelta(days=p["renew_within_days"]),
                validity=dt.timedelta(days=p["validity_days"]),
                dry_run=module.check_mode,
            )  # fmt: skip
    devices = [d.as_dict() for d in done]
    counts = Counter(d["status"] for d in devices)
    result = {
        "changed": changed,
        "devices": devices,
        "counts": {k: counts.get(k, 0) for k in ("issued", "renewed", "unchanged")},
    }
    if module._diff:
        moved = [d for d in done if d.certificate.status != "unchanged"]
        result["diff"] = {
            "before": {d.device.id: d.certificate.before for d in moved},
            "after": {d.device.id: d.certificate.facts() | {"vpn_address": d.device.vpn_address}
                      for d in moved},
        }  # fmt: skip
    module.exit_json(**result)


if __name__ == "__main__":
    main()
