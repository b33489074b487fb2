"""The PKI of Iotistic VPN: CA pair, device and gateway certificates, revocation.

One root CA (its key may live offline) signs one issuing CA (pathlen 0); the issuing CA signs
device certificates (clientAuth only, identity bound by the CA from the registry, never taken
from the CSR) and gateway certificates (serverAuth only), so with OpenVPN's `remote-cert-tls`
a device certificate can never pose as a gateway. Revocation is a CRL built in one pass, and
the `crl-verify DIR dir` layout whose cost per handshake does not grow with the fleet.

The `ensure_*` functions are what the Ansible modules call: they compare the files on disk with
what is wanted, return what would change, and write only when `write=True` (check mode passes
False). Every bad input raises InvalidValue naming the value, the file or the device.
`device_cert_status` is their decision for a device certificate kept elsewhere: enrollment
reads the current one from the registry.

Folders: keys (keys, files, building blocks), ca, device, gateway, crl, pem (parsing),
tlscrypt (tls-crypt-v2 keys). This module re-exports their public names.
"""

from ..conventions import REVOCATION_REASONS
from .ca import (
    CA_CERT,
    CA_CHAIN,
    CA_KEY,
    ISSUING_VALIDITY,
    ROOT_CERT,
    ROOT_KEY,
    ROOT_VALIDITY,
    CaFiles,
    CaResult,
    IssuingCA,
    create_issuing_ca,
    create_root_ca,
    ensure_ca,
    load_issuing_ca,
)
from .crl import (
    CRL_NEXT_UPDATE,
    CRL_REFRESH_BEFORE,
    CrlResult,
    Revocation,
    build_crl,
    crl_needs_refresh,
    crl_number,
    crl_revocations,
    ensure_crl,
)
from .device import (
    DEVICE_VALIDITY,
    RENEW_WITHIN,
    DeviceIdentity,
    DeviceRequest,
    DeviceResult,
    check_csr_identity,
    device_cert_status,
    device_identity,
    device_uri,
    ensure_device_certs,
    is_issued_by,
    issue_device_cert,
    load_device_csr,
    needs_renewal,
    write_device_certs,
)
from .gateway import (
    GATEWAY_VALIDITY,
    PURPOSES,
    GatewayResult,
    certificate_purposes,
    ensure_gateway_cert,
    gateway_dns_names,
    issue_gateway_cert,
)
from .keys import (
    DEFAULT_KEY_TYPE,
    KEY_TYPES,
    certificate_pem,
    check_public_key,
    fingerprint,
    generate_key,
    key_type_of,
    private_key_pem,
    read_private_key,
    write_atomic,
    write_private_key,
)
from .pem import pem_certificate, pem_certificates, pem_crl, pem_csr, pem_private_key
from .status import Expiry, ca_status, crl_status

__all__ = [
    "CA_CERT",
    "CA_CHAIN",
    "CA_KEY",
    "CRL_NEXT_UPDATE",
    "CRL_REFRESH_BEFORE",
    "DEFAULT_KEY_TYPE",
    "DEVICE_VALIDITY",
    "GATEWAY_VALIDITY",
    "ISSUING_VALIDITY",
    "KEY_TYPES",
    "PURPOSES",
    "RENEW_WITHIN",
    "REVOCATION_REASONS",
    "ROOT_CERT",
    "ROOT_KEY",
    "ROOT_VALIDITY",
    "CaFiles",
    "CaResult",
    "CrlResult",
    "DeviceIdentity",
    "DeviceRequest",
    "DeviceResult",
    "Expiry",
    "GatewayResult",
    "IssuingCA",
    "Revocation",
    "build_crl",
    "ca_status",
    "certificate_pem",
    "certificate_purposes",
    "check_csr_identity",
    "check_public_key",
    "create_issuing_ca",
    "create_root_ca",
    "crl_needs_refresh",
    "crl_number",
    "crl_revocations",
    "crl_status",
    "device_cert_status",
    "device_identity",
    "device_uri",
    "ensure_ca",
    "ensure_crl",
    "ensure_device_certs",
    "ensure_gateway_cert",
    "fingerprint",
    "gateway_dns_names",
    "generate_key",
    "is_issued_by",
    "issue_device_cert",
    "issue_gateway_cert",
    "key_type_of",
    "load_device_csr",
    "load_issuing_ca",
    "needs_renewal",
    "pem_certificate",
    "pem_certificates",
    "pem_crl",
    "pem_csr",
    "pem_private_key",
    "private_key_pem",
    "read_private_key",
    "write_atomic",
    "write_device_certs",
    "write_private_key",
]
