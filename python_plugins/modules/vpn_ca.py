#!/usr/bin/python
"""Ansible module vpn_ca: create or load the Iotistic VPN root and issuing CA."""

from __future__ import annotations

DOCUMENTATION = r"""
module: vpn_ca
short_description: Create or load the Iotistic VPN root CA and issuing CA
description:
  - Makes a root CA and an issuing CA (pathlen 0) signed by it in O(path), or loads them when
    they exist. An existing CA is never replaced; O(key_type) and the validities apply only
    when a certificate is created.
  - Only the issuing CA is needed to sign device and gateway certificates. The root key can
    live elsewhere (O(root_key_path)) and be offline; it is needed only to create the issuing CA.
  - Files in O(path) are C(root.crt), C(ca.crt) (issuing), C(ca.key) (issuing key, 0600) and
    C(ca-chain.crt) (issuing + root, what OpenVPN's C(ca) option points at).
version_added: "0.1.0"
author: Iotistic VPN
options:
  path:
    description: Directory of the CA files.
    type: path
    required: true
  root_key_path:
    description: Where the root key is (or is to be written). Defaults to C(<path>/root.key).
    type: path
  key_type:
    description: Key type of new CA keys.
    type: str
    choices: [ec-p256, ec-p384, rsa-3072, ed25519]
    default: ec-p256
  name:
    description: Name prefix of the CA subjects (C(<name> Root CA), C(<name> Issuing CA)).
    type: str
    default: Iotistic VPN
  root_validity_days:
    description: Validity of a new root CA.
    type: int
    default: 7300
  issuing_validity_days:
    description: Validity of a new issuing CA (never beyond the root's).
    type: int
    default: 3650
  passphrase:
    description: Passphrase that encrypts the CA keys on disk.
    type: str
  root_passphrase:
    description: Passphrase of the root key when it differs from O(passphrase).
    type: str
notes:
  - Supports check mode and diff mode (fingerprints and serials, never key material).
"""

EXAMPLES = r"""
- name: Ensure the fleet CA exists.
  vpn_ca:
    path: /etc/iotistic/pki/ca
    root_key_path: /mnt/offline/root.key
    passphrase: "{{ vault_ca_passphrase }}"
"""

RETURN = r"""
created:
  description:
    - What was (or in check mode would be) written.
    - Of C(root key), C(root), C(issuing), C(chain).
  type: list
  elements: str
  returned: always
path:
  description: The CA directory.
  type: str
  returned: always
root_cert:
  description: Path of the root CA certificate.
  type: str
  returned: always
root_key:
  description: Path of the root key (it may be absent when kept offline).
  type: str
  returned: always
cert:
  description: Path of the issuing CA certificate.
  type: str
  returned: always
key:
  description: Path of the issuing CA key.
  type: str
  returned: always
chain:
  description: Path of the chain file (issuing then root) for OpenVPN's C(ca) option.
  type: str
  returned: always
root:
  description: Facts of the root CA certificate.
  type: dict
  returned: always
  contains:
    subject: {description: RFC 4514 subject, type: str}
    serial: {description: Serial number in decimal, type: str}
    fingerprint: {description: SHA-256 fingerprint, 64 hex digits, type: str}
    not_after: {description: End of validity (ISO 8601), type: str}
issuing:
  description: Facts of the issuing CA certificate, as for RV(root).
  type: dict
  returned: always
key_type:
  description: Type of the issuing CA key.
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
            "path": {"type": "path", "required": True},
            "root_key_path": {"type": "path"},
            "key_type": {"type": "str", "choices": list(pki.KEY_TYPES), "default": "ec-p256"},
            "name": {"type": "str", "default": "Iotistic VPN"},
            "root_validity_days": {"type": "int", "default": 7300},
            "issuing_validity_days": {"type": "int", "default": 3650},
            "passphrase": {"type": "str", "no_log": True},
            "root_passphrase": {"type": "str", "no_log": True},
        },
        supports_check_mode=True,
    )
    p = module.params
    files = pki.CaFiles.at(p["path"], p["root_key_path"])
    with failing_cleanly(module):
        result = pki.ensure_ca(
            files,
            key_type=p["key_type"],
            passphrase=p["passphrase"],
            root_passphrase=p["root_passphrase"],
            name=p["name"],
            root_validity=dt.timedelta(days=p["root_validity_days"]),
            issuing_validity=dt.timedelta(days=p["issuing_validity_days"]),
            write=not module.check_mode,
        )

    facts = result.facts()
    out = {
        "changed": result.changed,
        "created": result.created,
        "path": str(files.directory),
        "root_cert": str(files.root_cert),
        "root_key": str(files.root_key),
        "cert": str(files.cert),
        "key": str(files.key),
        "chain": str(files.chain),
        **facts,
    }
    if module._diff:
        before = {
            "root": None if "root" in result.created else facts["root"],
            "issuing": None if "issuing" in result.created else facts["issuing"],
        }
        out["diff"] = {"before": before, "after": {k: facts[k] for k in ("root", "issuing")}}
    module.exit_json(**out)


if __name__ == "__main__":
    main()
