#!/usr/bin/python
"""Ansible module: API tokens of customers and operators in the registry (thin adapter)."""

from __future__ import annotations

DOCUMENTATION = r"""
module: vpn_token
short_description: Manage Iotistic VPN API tokens
description:
  - Creates an API token idempotently by name (per customer, or among the operators' tokens),
    or revokes it. The token itself exists only at creation; the registry keeps its SHA-256.
  - A live token whose scope differs from the options fails the run; revoke it first, then
    create it anew (a token's scope never changes silently).
  - All logic lives in C(iotistic_vpn.registry); this module converts options and results.
  - In check mode the work is done in the database and rolled back; no token is written.
options:
  name:
    description: The token's name, unique among the live tokens of its customer.
    type: str
    required: true
  customer:
    description: Customer id the token is scoped to. Left out, an operator token (every customer).
    type: str
  devices:
    description: Limit the token to these devices of the customer. Left out, all of them.
    type: list
    elements: str
  ports:
    description: Device ports the token may reach through the API.
    type: list
    elements: int
    default: [48484]
  read_only:
    description: Only GET and HEAD through the proxy.
    type: bool
    default: true
  expires_at:
    description: ISO 8601 time the token stops working (with a time zone). Left out, never.
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
- name: Ensure the billing system has a read-only token for acme, kept in a root-only file.
  vpn_token:
    name: billing
    customer: acme
    dest: /etc/iotistic/billing.token
    login_host: "{{ registry_db_host }}"
    login_password: "{{ registry_db_password }}"

- name: Revoke the dashboard's token.
  vpn_token:
    name: dashboard
    customer: acme
    state: revoked
"""

RETURN = r"""
token_id:
  description: The token's public id (the 16 hex characters after C(ivpn_)), or null if none.
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
  description: The token's customer, devices, ports, read_only and expires_at.
  returned: always
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible.module_utils.iotistic_vpn import conventions  # standard library only
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
    return {k: facts[k] for k in ("customer_id", "devices", "ports", "read_only", "expires_at")}


def main() -> None:
    argument_spec = {
        "name": {"type": "str", "required": True},
        "customer": {"type": "str"},
        "devices": {"type": "list", "elements": "str"},
        "ports": {"type": "list", "elements": "int", "default": [conventions.DEVICE_AGENT_PORT]},
        "read_only": {"type": "bool", "default": True},
        "expires_at": {"type": "str"},
        "dest": {"type": "path"},
        "state": {"type": "str", "default": "present", "choices": ["present", "revoked"]},
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
        module.fail_json(msg=missing_required_lib("psycopg"), exception=str(IMPORT_ERROR))
    p = module.params
    issued = None
    with failing_cleanly(module):
        expires_at = p["expires_at"] and validation.aware_time(p["expires_at"], "expires_at")
        reg = registry.Registry(registry_args.conninfo(p), connect_timeout=p["connect_timeout"])
        with reg, reg.transaction(dry_run=module.check_mode):
            live = [t for t in reg.list_tokens(p["customer"]) if t.name == p["name"]
                    and t.customer_id == p["customer"]]  # fmt: skip
            before = live[0] if live else None
            if p["state"] == "present":
                result, issued = reg.ensure_token(
                    p["name"], customer_id=p["customer"], actor=p["actor"],
                    devices=p["devices"], ports=p["ports"], read_only=p["read_only"],
                    expires_at=expires_at,
                )  # fmt: skip
                after = result.items[0]
            else:
                after = None
                result = reg.revoke_token(before.id, actor=p["actor"]) if before else None
        if issued is not None and p["dest"] and not module.check_mode:
            write_token(p["dest"], issued.value)
    out = token_result(module, result=result, issued=issued, before=before, after=after,
                       scope=_scope)  # fmt: skip
    module.exit_json(**out)


if __name__ == "__main__":
    main()
