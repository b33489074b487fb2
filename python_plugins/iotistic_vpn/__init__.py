"""Iotistic VPN: the domain package. PKI, registry, addressing, gateway agent, tunnel API, CLI.

All logic lives here once; Ansible modules, the inventory plugin, services and the CLI are
thin adapters over it.
"""

__version__ = "0.1.0"
