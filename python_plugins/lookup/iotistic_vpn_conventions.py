"""Lookup plugin: one shared name of the project, read from iotistic_vpn.conventions."""

# Ansible's plugin layout puts DOCUMENTATION, EXAMPLES and RETURN before the imports.
# ruff: noqa: E402

from __future__ import annotations

DOCUMENTATION = r"""
name: iotistic_vpn_conventions
author: Iotistic VPN
version_added: "1.0.0"
short_description: Read a shared name (port, path, address pool) from iotistic_vpn.conventions
description:
  - Returns the values of the project's shared names, as C(iotistic_vpn.conventions.as_dict())
    keys them (the upper-case constants in lower case, plus C(gateway_network) and
    C(tunnel_netmask) of the default pool).
  - The roles read ports, paths and the address pool here instead of restating them, so a
    change in C(conventions.py) reaches every role, the modules and infra/ together.
options:
  _terms:
    description: Names to read, e.g. C(vpn_pool), C(openvpn_port), C(crl_dir).
    type: list
    elements: str
    required: true
notes:
  - An unknown name fails with the list of known ones.
"""

EXAMPLES = r"""
- name: Show the VPN address pool.
  ansible.builtin.debug:
    msg: "{{ lookup('iotistic_vpn_conventions', 'vpn_pool') }}"

- name: Open the public OpenVPN port.
  ansible.builtin.debug:
    msg: "UDP {{ lookup('iotistic_vpn_conventions', 'openvpn_port') }}"
"""

RETURN = r"""
_raw:
  description:
    - One value per name, as conventions.py holds it (a string, an integer, or a list for
      tuples such as C(device_states)).
  type: list
  elements: raw
"""

import sys
from pathlib import Path

from ansible.errors import AnsibleError
from ansible.plugins.lookup import LookupBase

# Controller-side plugins do not see ansible.cfg's module_utils directory (Ansible merges it into
# ansible.module_utils only for modules it ships to hosts), so the package is imported from
# python_plugins/ itself, wherever ansible-playbook's Python is.
_PYTHON_PLUGINS = str(Path(__file__).resolve().parents[1])
if _PYTHON_PLUGINS not in sys.path:
    sys.path.append(_PYTHON_PLUGINS)

from iotistic_vpn import conventions  # standard library only


class LookupModule(LookupBase):
    """Serve conventions.as_dict() by key."""

    def run(self, terms, variables=None, **kwargs):
        self.set_options(var_options=variables, direct=kwargs)
        names = conventions.as_dict()
        values = []
        for term in terms:
            key = str(term).strip().lower()
            if key not in names:
                raise AnsibleError(
                    f"iotistic_vpn_conventions: unknown name {term!r}; known names: "
                    f"{', '.join(sorted(names))}"
                )
            value = names[key]
            # Tuples become lists: Jinja and to_json treat them alike, YAML dumps only lists.
            values.append(list(value) if isinstance(value, tuple) else value)
        return values
