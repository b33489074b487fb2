"""Documentation shared by every module that signs with the fleet's issuing CA."""

from __future__ import annotations


class ModuleDocFragment:
    # The CA options of vpn_device_cert, vpn_gateway_cert, vpn_crl and vpn_provision, once.
    DOCUMENTATION = r"""
options:
  ca_path:
    description: CA directory made by M(vpn_ca).
    type: path
    required: true
  ca_passphrase:
    description: Passphrase of the issuing CA key.
    type: str
"""
