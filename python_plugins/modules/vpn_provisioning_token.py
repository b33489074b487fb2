#!/usr/bin/python
"""Ansible module: provisioning tokens devices enroll with, in the registry (thin adapter)."""

from __future__ import annotations

DOCUMENTATION = r"""
module: vpn_provisioning_token
short_description: Manage Iotistic VPN provisioning tokens
description:
  - Creates a customer's provisioning token idempotently by name, or revokes it. Devices
    present it to the API's C(POST /v1/enroll) to enroll themselves (docs/enrollment.md).
  - The token itself exists only at creation; the registry keeps its SHA-256.
  - A live token whose scope (expiry, uses, pattern) differs from the options fails the run;
    revoke it first, then create it anew (a token's scope never changes silently).
  - All logic lives in C(iotistic_vpn.registry); this module converts options and results.
  - In check mode the work is done in the database and rolled back; no token is written.
options:
  name:
    description: The token's name, unique among the customer's live provisioning tokens.
    type: str
    required: true
  customer:
    description: Customer id whose devices the token enrolls.
    type: str
    required: true
  expires_at:
    description: ISO 8601 time the token stops working, with a time zone. Needed to create.
    type: str
  max_uses:
    description: How many new devices it may enroll (enrolling an enrolled device again uses none).
    type: int
    default: 1
  device_pattern:
    description:
      - A glob the device ids must match (C(*) and C(?) with device-id characters; no regex).
        Left out, any device id.
    type: str
  dest:
    description:
      - File to write a newly created token to (0600). Without it the token is returned as
        C(token), so give the task C(no_log).
    type: path
  state:
    description: V(present) creates the token if absent; V(revoked) revokes the live one.
    type: str
    choices: [present, revoked]
    default: present
  actor:
    description: Who makes the change, as written to the audit log.
    type: str
    default: ansible
extends_documentation_fragment:
  - iotistic_vpn_registry
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
requirements: [psycopg >= 3.2]
author: Iotistic VPN
"""

EXAMPLES = r"""
- name: Ensure the factory line has a token for 500 acme pumps, kept in a root-only file.
  vpn_provisioning_token:
    name: factory-2027-01
    customer: acme
    expires_at: "2027-02-01T00:00:00+00:00"
    max_uses: 500
    device_pattern: "pump-*"
    dest: /etc/iotistic/factory.token
    login_host: "{{ registry_db_host }}"
    login_password: "{{ registry_db_password }}"

- name: Revoke it once the batch is done.
  vpn_provisioning_token:
    name: factory-2027-01
    customer: acme
    state: revoked
"""

RETURN = r"""
token_id:
  description: The token's public id (the 16 hex characters after C(ivpp_)), or null if none.
  returned: always
  type: str
created:
  description: Whether a token was made by this run (its value exists only now).
  returned: always
  type: bool
token:
  description: The token itself, only when it was created now and O(dest) was not given.
  returned: when created without dest
  type: str
scope:
  description: The token's customer, expires_at, max_uses, uses and device_pattern.
  returned: always
  type: dict
"""


from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible.module_utils.module_errors import failing_cleanly

try:
    from ansible.module_utils import registry_args
    from ansible.module_utils.iotistic_vpn import registry, validation
    from ansible.module_utils.issued_token import token_result, write_token

    IMPORT_ERROR = None
except ImportError as exc:  # psycopg missing on the interpreter that runs the module
    IMPORT_ERROR = exc


def _scope(token) -> dict | None:
    if token is None:
        return None
    facts = token.as_dict()
    return {k: facts[k] for k in ("customer_id", "expires_at", "max_uses", "uses",
                                  "device_pattern")}  # fmt: skip


def main() -> None:
    argument_spec = {
        "name": {"type": "str", "required": True},
        "customer": {"type": "str", "required": True},
        "expires_at": {"type": "str"},
        "max_uses": {"type": "int", "default": 1},
        "device_pattern": {"type": "str"},
        "dest": {"type": "path"},
        "state": {"type": "str", "default": "present", "choices": ["present", "revoked"]},
        "actor": {"type": "str", "default": "ansible"},
    }
    if IMPORT_ERROR is None:
        argument_spec.update(registry_args.argument_spec())
    module = AnsibleModule(
        argument_spec=argument_spec,
        supports_check_mode=True,
        required_if=[("state", "present", ["expires_at"])],
        mutually_exclusive=registry_args.mutually_exclusive() if IMPORT_ERROR is None else [],
    )
    if IMPORT_ERROR is not None:
        module.fail_json(msg=missing_required_lib("psycopg"), exception=str(IMPORT_ERROR))
    p = module.params
    issued = result = None
    with failing_cleanly(module):
        reg = registry.Registry(registry_args.conninfo(p), connect_timeout=p["connect_timeout"])
        with reg, reg.transaction(dry_run=module.check_mode):
            live = [t for t in reg.list_provisioning_tokens(p["customer"]) if t.name == p["name"]]
            before = live[0] if live else None
            if p["state"] == "present":
                expires_at = validation.aware_time(p["expires_at"], "expires_at")
                result, issued = reg.ensure_provisioning_token(
                    p["customer"], p["name"], actor=p["actor"], expires_at=expires_at,
                    max_uses=p["max_uses"], device_pattern=p["device_pattern"],
                )  # fmt: skip
                after = result.items[0]
            else:
                after = None
                if before is not None:
                    result = reg.revoke_provisioning_token(before.id, actor=p["actor"])
        if issued is not None and p["dest"] and not module.check_mode:
            write_token(p["dest"], issued.value)
    out = token_result(module, result=result, issued=issued, before=before, after=after,
                       scope=_scope)  # fmt: skip
    module.exit_json(**out)


if __name__ == "__main__":
    main()
