#!/usr/bin/python
"""Ansible module vpn_crl: the fleet's CRL (the file is the state) and crl-verify directory."""

from __future__ import annotations

DOCUMENTATION = r"""
module: vpn_crl
short_description: Keep the Iotistic VPN certificate revocation list
description:
  - The CRL file at O(path) is the state. With O(state=present) the serials in O(revoked) are
    added to the entries already in it; with O(state=exact) the CRL holds exactly them.
  - The CRL is signed again by the issuing CA in O(ca_path) when its entries change, when its
    nextUpdate is within O(refresh_before_days), or when another CA signed it. The whole list
    is built in one pass (100,000 entries in well under a second).
  - With O(crl_dir), also keeps OpenVPN's C(crl-verify DIR dir) layout there, one empty file
    per revoked serial, named by the decimal serial. Gateways use it because its cost per
    handshake does not grow with the list. Only all-digit file names are ever removed.
version_added: "0.1.0"
author: Iotistic VPN
options:
  path:
    description: CRL file (PEM).
    type: path
    required: true
  revoked:
    description: Serials to revoke.
    type: list
    elements: dict
    default: []
    suboptions:
      serial:
        description: Serial as an integer, decimal text, C(0x) hex or colon hex (as openssl prints).
        type: raw
        required: true
      reason:
        description: RFC 5280 reason; left out of the entry when not given or C(unspecified).
        type: str
        choices: [unspecified, key_compromise, ca_compromise, affiliation_changed, superseded,
                  cessation_of_operation, privilege_withdrawn, aa_compromise]
      revoked_at:
        description:
          - Revocation time (ISO 8601; UTC when no zone is given). Defaults to now for a new
            entry; an entry already in the CRL keeps its time unless this is given.
        type: str
  state:
    description: C(present) merges O(revoked) into the CRL; C(exact) makes it hold only them.
    type: str
    choices: [present, exact]
    default: present
  next_update_days:
    description: nextUpdate of a newly signed CRL, in days from now.
    type: int
    default: 30
  refresh_before_days:
    description: Sign again when nextUpdate is within this many days.
    type: int
    default: 10
  crl_dir:
    description: Directory for OpenVPN's C(crl-verify DIR dir) mode, kept in step with the CRL.
    type: path
  registry:
    description:
      - Also take every certificate the registry has revoked, with its reason and time, so the
        CRL lists all of them wherever it is built (a fresh control node, after a rotation).
      - The registry's entry wins over one in O(revoked) with the same serial; O(revoked) still
        brings what a dry run did not commit (RV(vpn_registry#module:revocations)).
      - Connects with the registry connection options.
    type: bool
    default: false
extends_documentation_fragment:
  - iotistic_vpn_ca
  - iotistic_vpn_registry
notes:
  - Supports check mode and diff mode (number of entries, CRL number, nextUpdate, serials).
"""

EXAMPLES = r"""
- name: Revoke the certificates of a lost device.
  vpn_crl:
    path: /etc/iotistic/pki/crl.pem
    crl_dir: /etc/iotistic/pki/crl.d
    ca_path: /etc/iotistic/pki/ca
    revoked:
      - serial: "{{ lost_device_serial }}"
        reason: key_compromise
"""

RETURN = r"""
path:
  description: The CRL file.
  type: str
  returned: always
entries:
  description: Number of entries in the CRL.
  type: int
  returned: always
number:
  description: The CRL number (it grows by one each time the CRL is signed).
  type: int
  returned: always
next_update:
  description: nextUpdate of the CRL (ISO 8601).
  type: str
  returned: always
signed:
  description: Whether the CRL was (or in check mode would be) signed again.
  type: bool
  returned: always
added:
  description: Serials (decimal) added to the CRL.
  type: list
  elements: str
  returned: always
removed:
  description: Serials (decimal) taken out of the CRL (O(state=exact) only).
  type: list
  elements: str
  returned: always
updated:
  description: Serials (decimal) whose revocation time or reason changed.
  type: list
  elements: str
  returned: always
crl_dir:
  description: The crl-verify directory, or null.
  type: str
  returned: always
dir_added:
  description: Serials (decimal) whose file was created in O(crl_dir).
  type: list
  elements: str
  returned: always
dir_removed:
  description: Serials (decimal) whose file was removed from O(crl_dir).
  type: list
  elements: str
  returned: always
"""

import datetime as dt

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible.module_utils.iotistic_vpn import conventions, pki
from ansible.module_utils.module_errors import failing_cleanly

try:
    from ansible.module_utils import registry_args
    from ansible.module_utils.iotistic_vpn import provisioning, registry

    REGISTRY_IMPORT_ERROR = None
except ImportError as exc:  # psycopg missing: only registry=true needs it
    REGISTRY_IMPORT_ERROR = exc


def _decimal(serials: list[int]) -> list[str]:
    # Serials reach 159 bits: text keeps them exact in JSON consumers.
    return [str(s) for s in serials]


def main() -> None:
    argument_spec = {
        "path": {"type": "path", "required": True},
        "ca_path": {"type": "path", "required": True},
        "ca_passphrase": {"type": "str", "no_log": True},
        "revoked": {
            "type": "list",
            "elements": "dict",
            "default": [],
            "options": {
                "serial": {"type": "raw", "required": True},
                "reason": {"type": "str", "choices": list(conventions.REVOCATION_REASONS)},
                "revoked_at": {"type": "str"},
            },
        },
        "state": {"type": "str", "choices": ["present", "exact"], "default": "present"},
        "next_update_days": {"type": "int", "default": 30},
        "refresh_before_days": {"type": "int", "default": 10},
        "crl_dir": {"type": "path"},
        "registry": {"type": "bool", "default": False},
    }
    if REGISTRY_IMPORT_ERROR is None:
        argument_spec.update(registry_args.argument_spec())
    module = AnsibleModule(
        argument_spec=argument_spec,
        supports_check_mode=True,
        mutually_exclusive=registry_args.mutually_exclusive()
        if REGISTRY_IMPORT_ERROR is None
        else [],
    )
    p = module.params
    if p["registry"] and REGISTRY_IMPORT_ERROR is not None:
        module.fail_json(msg=missing_required_lib("psycopg"), exception=str(REGISTRY_IMPORT_ERROR))
    with failing_cleanly(module):
        given = [
            pki.Revocation.parse(r["serial"], r["revoked_at"], r["reason"]) for r in p["revoked"]
        ]
        if p["registry"]:
            conninfo = registry_args.conninfo(p)
            with registry.Registry(conninfo, connect_timeout=p["connect_timeout"]) as reg:
                revocations = provisioning.crl_entries(given, reg)
        else:
            revocations = given
        ca = pki.load_issuing_ca(p["ca_path"], p["ca_passphrase"])
        result = pki.ensure_crl(
            ca,
            p["path"],
            revocations,
            exact=p["state"] == "exact",
            next_update=dt.timedelta(days=p["next_update_days"]),
            refresh_before=dt.timedelta(days=p["refresh_before_days"]),
            crl_dir=p["crl_dir"],
            write=not module.check_mode,
        )

    out = {
        "changed": result.changed,
        "path": result.path,
        **result.facts(),
        "signed": result.signed,
        "added": _decimal(result.added),
        "removed": _decimal(result.removed),
        "updated": _decimal(result.updated),
        "crl_dir": p["crl_dir"],
        "dir_added": _decimal(result.dir_added),
        "dir_removed": _decimal(result.dir_removed),
    }
    if module._diff:
        after = {**result.facts(), "added": out["added"], "removed": out["removed"]}
        out["diff"] = {"before": result.before, "after": after}
    module.exit_json(**out)


if __name__ == "__main__":
    main()
