#!/usr/bin/python
"""Ansible module: customers and devices in the Iotistic VPN registry (thin adapter)."""

from __future__ import annotations

DOCUMENTATION = r"""
module: vpn_registry
short_description: Manage customers and devices in the Iotistic VPN registry
description:
  - Creates customers with their own VPN address block, provisions devices with stable VPN
    addresses (any number in one transaction), revokes devices together with their
    certificates, and removes them.
  - All logic lives in C(iotistic_vpn.registry); this module converts options and results.
  - In check mode the work is done in the database and rolled back, so C(changed), the diff
    and the returned addresses are the ones a real run gives.
  - With O(state=revoked), O(customer) may be left out to revoke devices by their ids alone;
    each device's customer is read from the registry (device ids are unique across customers),
    for example a stolen device that no inventory lists. A device id the registry does not know
    fails the run naming it, and nothing is changed.
options:
  customer:
    description:
      - Customer id (2-32 lower-case letters, digits, inner hyphens).
      - Required, except with O(state=revoked), where each device's own customer is used when
        it is left out (the diff then lists the devices with their customers), and with
        O(migrate) alone, which applies the schema and touches no customer.
    type: str
  customer_name:
    description: Display name of the customer; defaults to its id when it is created.
    type: str
  customer_block:
    description:
      - Pin the customer's address block (a CIDR inside O(pool)) when it is created.
      - Without it the lowest free block of O(block_prefix) is allocated. Blocks never change.
    type: str
  devices:
    description:
      - Device ids (DNS labels). With O(state=present) they are provisioned, with
        O(state=absent) removed, with O(state=revoked) revoked.
      - Without devices, O(state) applies to the customer itself.
    type: list
    elements: str
  certificates:
    description:
      - Issued certificates to record for the customer's devices (with O(state=present)),
        after O(devices) are provisioned. The C(certificates) list that
        M(vpn_device_cert) returns can be passed as it is; other keys are ignored.
      - A serial already recorded for the same certificate is unchanged.
    type: list
    elements: dict
  revoke_serials:
    description:
      - Serials (decimal) of this customer's certificates to revoke with
        O(revocation_reason), for example the old certificate once a rotated one is in use.
    type: list
    elements: str
  state:
    description:
      - V(present) creates the customer and provisions O(devices).
      - V(absent) removes O(devices), or the customer when no devices are given (it must
        have none left). A device holding a valid certificate must be revoked first.
      - V(revoked) revokes O(devices) and all their certificates. Revocation is final.
    type: str
    choices: [present, absent, revoked]
    default: present
  revocation_reason:
    description: RFC 5280 reason recorded on the revoked certificates.
    type: str
    default: unspecified
    choices: [unspecified, key_compromise, ca_compromise, affiliation_changed, superseded,
              cessation_of_operation, privilege_withdrawn, aa_compromise]
  pool:
    description: Address pool customer blocks are allocated from.
    type: str
    default: 100.64.0.0/10
  block_prefix:
    description: Prefix length of a new customer's block.
    type: int
    default: 20
  actor:
    description: Who makes the change, as written to the audit log.
    type: str
    default: ansible
  migrate:
    description:
      - Apply pending schema migrations first (in the same transaction).
      - Without O(customer) and O(devices), only the migrations are applied, as on an empty
        registry before its first customer.
    type: bool
    default: false
extends_documentation_fragment:
  - iotistic_vpn_registry
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
requirements: [psycopg >= 3.2, iotistic-vpn (for O(migrate))]
author: Iotistic VPN
"""

EXAMPLES = r"""
- name: Ensure customer acme exists with three devices.
  vpn_registry:
    customer: acme
    customer_name: Acme Corp
    devices: [pump-001, pump-002, pump-003]
    login_host: "{{ registry_db_host }}"
    login_user: iotistic
    login_password: "{{ registry_db_password }}"
    actor: "{{ lookup('env', 'USER') }}"
  register: __acme

- name: Ensure the registry schema is current (an empty registry too).
  vpn_registry:
    migrate: true
    dsn: "{{ registry_dsn }}"

- name: Revoke a device and its certificates.
  vpn_registry:
    customer: acme
    devices: [pump-002]
    state: revoked
    revocation_reason: key_compromise
    dsn: "{{ registry_dsn }}"

- name: Revoke a device by its id alone; the registry knows its customer.
  vpn_registry:
    devices: [acme-pump-3]
    state: revoked
    revocation_reason: key_compromise
    dsn: "{{ registry_dsn }}"

- name: Remove a customer that has no devices left.
  vpn_registry:
    customer: globex
    state: absent
    dsn: "{{ registry_dsn }}"
"""

RETURN = r"""
customer:
  description: The customer after the run; null when it does not exist or O(customer) is not given.
  returned: always
  type: dict
  sample: {id: acme, name: Acme Corp, block: 100.64.0.0/20, created_at: "2026-11-25T15:00:00+00:00"}
devices:
  description:
    - The devices named in O(devices) that exist after the run, in that order (with
      O(customer) left out, each with its own C(customer_id)).
  returned: always
  type: list
  elements: dict
  sample:
    - id: pump-001
      customer_id: acme
      state: provisioned
      vpn_address: 100.64.0.2
      connected: false
      gateway: null
      last_seen: null
      created_at: "2026-11-25T15:00:00+00:00"
      updated_at: "2026-11-25T15:00:00+00:00"
actions:
  description: What the run did (or would do in check mode), as written to the audit log.
  returned: always
  type: list
  elements: dict
  sample: [{action: device.provision, target: "device:pump-001"}]
certificates:
  description: The certificates recorded or revoked by this run (a revoked device's too).
  returned: always
  type: list
  elements: dict
  sample: [{serial: "4721", device_id: pump-001, fingerprint: "3f…", revoked_at: null}]
revocations:
  description:
    - The certificates this run revoked (or would revoke in check mode), with O(state=revoked)
      or O(revoke_serials), in the shape M(vpn_crl)'s O(vpn_crl#module:revoked) takes.
  returned: always
  type: list
  elements: dict
  sample: [{serial: "4721", reason: key_compromise, revoked_at: "2026-11-25T15:00:00+00:00"}]
migrations:
  description: Schema migrations applied by O(migrate).
  returned: always
  type: list
  elements: str
  sample: [0001_initial, 0002_api_tokens]
"""

from datetime import datetime

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible.module_utils.iotistic_vpn import conventions  # standard library only
from ansible.module_utils.module_errors import failing_cleanly

try:
    from ansible.module_utils import registry_args
    from ansible.module_utils.iotistic_vpn import registry, validation
    from ansible.module_utils.iotistic_vpn.errors import InvalidValue, NotFound

    IMPORT_ERROR = None
except ImportError as exc:  # psycopg missing on the interpreter that runs the module
    IMPORT_ERROR = exc


def _snapshot(reg, customer_id: str, device_ids: list[str]) -> dict:
    """Non-secret facts for the diff: the customer and the named devices' state/address."""
    try:
        customer = reg.get_customer(customer_id)
    except NotFound:
        return {"customer": None, "devices": {}}
    devices = {d.id: d for d in reg.list_devices(customer_id=customer_id) if d.id in device_ids}
    return {
        "customer": {"name": customer.name, "block": customer.block},
        "devices": {
            i: {"state": devices[i].state, "vpn_address": devices[i].vpn_address}
            for i in device_ids
            if i in devices
        },
    }


def _find_devices(reg, device_ids: list[str]) -> list:
    """The named devices, whatever their customer; NotFound names the first unknown id."""
    devices = []
    for device_id in device_ids:
        try:
            devices.append(reg.find_device(device_id))
        except NotFound:
            raise NotFound(f"device {device_id!r} is not in the registry") from None
    return devices


def _device_snapshot(devices: list) -> dict:
    """The diff without a customer: each named device with its customer, state and address."""
    return {
        "devices": {
            d.id: {"customer": d.customer_id, "state": d.state, "vpn_address": d.vpn_address}
            for d in devices
        }
    }


def _certificate(item: dict) -> registry.Certificate:
    """One entry of O(certificates); errors name the entry."""
    missing = [k for k in ("device", "serial", "fingerprint", "not_before", "not_after") if
               not item.get(k)]  # fmt: skip
    if missing:
        raise InvalidValue("certificate", item, f"missing {', '.join(missing)}")
    try:
        return registry.Certificate(
            serial=validation.serial_number(item["serial"]),
            device_id=validation.device_id(item["device"]),
            fingerprint=item["fingerprint"],
            not_before=datetime.fromisoformat(item["not_before"]),
            not_after=datetime.fromisoformat(item["not_after"]),
        )
    except ValueError as exc:
        raise InvalidValue("certificate", item, str(exc)) from None


def _apply(reg, p: dict, device_ids: list[str]) -> tuple[list, list]:
    """Run the requested state; return the registry's device and certificate changes."""
    customer, actor = p["customer"], p["actor"]
    certs: list = []
    if p["revoke_serials"]:
        serials = [validation.serial_number(s) for s in p["revoke_serials"]]
        certs += reg.revoke_certificates(
            customer, serials, actor=actor, reason=p["revocation_reason"]
        ).changes
    if p["state"] == "present":
        changes = reg.ensure_customer(
            customer, actor=actor, name=p["customer_name"], block=p["customer_block"]
        ).changes
        changes += reg.provision_devices(customer, device_ids, actor=actor).changes
        if p["certificates"]:
            wanted = [_certificate(c) for c in p["certificates"]]
            certs += reg.record_certificates(customer, wanted, actor=actor).changes
        return changes, certs
    if p["state"] == "revoked":
        result = reg.revoke_devices(
            customer, device_ids, actor=actor, reason=p["revocation_reason"]
        )
        return result.changes, certs + result.certificates
    if device_ids:
        try:
            reg.get_customer(customer)
        except NotFound:
            return [], certs  # no customer, so no devices either
        return reg.remove_devices(customer, device_ids, actor=actor).changes, certs
    return reg.ensure_customer(customer, actor=actor, state="absent").changes, certs


def main() -> None:
    argument_spec = {
        "customer": {"type": "str"},
        "customer_name": {"type": "str"},
        "customer_block": {"type": "str"},
        "devices": {"type": "list", "elements": "str"},
        "certificates": {"type": "list", "elements": "dict"},
        "revoke_serials": {"type": "list", "elements": "str"},
        "state": {"type": "str", "default": "present", "choices": ["present", "absent", "revoked"]},
        "revocation_reason": {
            "type": "str",
            "default": "unspecified",
            "choices": list(conventions.REVOCATION_REASONS),
        },
        "pool": {"type": "str", "default": conventions.VPN_POOL},
        "block_prefix": {"type": "int", "default": conventions.CUSTOMER_BLOCK_PREFIX},
        "actor": {"type": "str", "default": "ansible"},
        "migrate": {"type": "bool", "default": False},
    }
    if IMPORT_ERROR is None:
        argument_spec.update(registry_args.argument_spec())
    module = AnsibleModule(
        argument_spec=argument_spec,
        supports_check_mode=True,
        required_if=[
            ("state", "absent", ["customer"]),
            ("state", "revoked", ["devices"]),
        ],
        required_by={"revoke_serials": ["customer"]},
        mutually_exclusive=registry_args.mutually_exclusive() if IMPORT_ERROR is None else [],
    )
    if IMPORT_ERROR is not None:
        module.fail_json(msg=missing_required_lib("psycopg"), exception=str(IMPORT_ERROR))
    p = module.params
    # migrate alone (an empty registry's first run, before any customer exists): schema only.
    migrate_only = p["migrate"] and p["state"] == "present" and p["customer"] is None
    if p["state"] == "present" and p["customer"] is None and not migrate_only:
        module.fail_json(msg="state is present but all of the following are missing: customer")
    if migrate_only:
        extra = [k for k in ("devices", "certificates", "customer_name", "customer_block") if p[k]]
        if extra:
            module.fail_json(msg=f"{', '.join(extra)} requires customer (migrate alone needs none)")
        _migrate_only(module, p)
    by_device = p["customer"] is None  # state=revoked: each device's customer from the registry
    with failing_cleanly(module):
        if not by_device:
            validation.customer_id(p["customer"])
        device_ids = list(dict.fromkeys(validation.device_id(d) for d in p["devices"] or []))
        reg = registry.Registry(
            registry_args.conninfo(p),
            connect_timeout=p["connect_timeout"],
            pool=p["pool"],
            block_prefix=p["block_prefix"],
        )
        with reg, reg.transaction(dry_run=module.check_mode):
            migrations = reg.migrate() if p["migrate"] else []
            if by_device:
                found = _find_devices(reg, device_ids)
                customers: dict[str, list[str]] = {}
                for device in found:
                    customers.setdefault(device.customer_id, []).append(device.id)
                before = _device_snapshot(found)
            else:
                customers = {p["customer"]: device_ids}
                before = _snapshot(reg, p["customer"], device_ids)
            changes, cert_changes = [], []
            for customer_id, ids in customers.items():
                done, certs_done = _apply(reg, {**p, "customer": customer_id}, ids)
                changes += done
                cert_changes += certs_done
            if by_device:
                devices = _find_devices(reg, device_ids)
                after = _device_snapshot(devices)
                customer = None
            else:
                after = _snapshot(reg, p["customer"], device_ids)
                customer = None if after["customer"] is None else reg.get_customer(p["customer"])
                devices = [
                    d
                    for d in reg.list_devices(customer_id=p["customer"])
                    if d.id in after["devices"]
                ]
    order = {d: i for i, d in enumerate(device_ids)}
    result = {
        "changed": bool(changes or cert_changes or migrations),
        "customer": customer.as_dict() if customer else None,
        "devices": [d.as_dict() for d in sorted(devices, key=lambda d: order[d.id])],
        "actions": [{"action": c.action, "target": c.target} for c in changes + cert_changes],
        "certificates": [c.after.as_dict() for c in cert_changes if c.after is not None],
        "revocations": [
            {
                "serial": str(c.after.serial),
                "reason": c.after.revocation_reason,
                "revoked_at": c.after.revoked_at.isoformat(),
            }
            for c in cert_changes
            if c.after is not None and c.after.revoked_at is not None
        ],
        "migrations": migrations,
    }
    if module._diff:
        result["diff"] = {"before": before, "after": after}
    module.exit_json(**result)


def _migrate_only(module: AnsibleModule, p: dict) -> None:
    """Apply the pending schema migrations and nothing else (rolled back in check mode)."""
    with failing_cleanly(module):
        reg = registry.Registry(registry_args.conninfo(p), connect_timeout=p["connect_timeout"])
        with reg, reg.transaction(dry_run=module.check_mode):
            migrations = reg.migrate()
    result = {"changed": bool(migrations), "customer": None, "devices": [], "actions": [],
              "certificates": [], "revocations": [], "migrations": migrations}  # fmt: skip
    if module._diff:
        result["diff"] = {"before": {"pending_migrations": migrations},
                          "after": {"pending_migrations": []}}  # fmt: skip
    module.exit_json(**result)


if __name__ == "__main__":
    main()
