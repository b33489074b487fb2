"""Filter plugins over iotistic_vpn: one gateway's OpenVPN instance layout (conventions), the
issuing CA's key as the cloud API's task takes it (pki), libpq connection strings (the API's
registry login in its secret) and the password a published registry login keeps."""

from __future__ import annotations

import ipaddress
import secrets
import string
import sys
from pathlib import Path

from ansible.errors import AnsibleFilterError

# Controller-side plugins do not see ansible.cfg's module_utils directory (Ansible merges it into
# ansible.module_utils only for modules it ships to hosts), so the package is imported from
# python_plugins/ itself, wherever ansible-playbook's Python is.
_PYTHON_PLUGINS = str(Path(__file__).resolve().parents[1])
if _PYTHON_PLUGINS not in sys.path:
    sys.path.append(_PYTHON_PLUGINS)

from iotistic_vpn import conventions  # noqa: E402  (standard library only)


def gateway_instances(count, pool=conventions.VPN_POOL):
    """Return conventions.instance_dicts(count, pool): each instance's name, unit, port, tun,
    management socket, tunnel address and netmask.

    `count` may come as a string (an inventory value, a templated default): a string of digits
    is taken as the number; anything else fails, naming the value (Ansible appends the cause).
    """
    if isinstance(count, str) and count.strip().isdigit():
        count = int(count)
    try:
        ipaddress.IPv4Network(str(pool))
    except ValueError as exc:
        raise AnsibleFilterError(
            f"iotistic_vpn_gateway_instances: invalid pool {pool!r}: must be an IPv4 network "
            f"in CIDR form such as {conventions.VPN_POOL}"
        ) from exc
    try:
        return conventions.instance_dicts(count, str(pool))
    except ValueError as exc:
        raise AnsibleFilterError(f"iotistic_vpn_gateway_instances: {exc}") from exc


def ca_key_pem(ca_dir, passphrase=""):
    """Return the issuing CA's key in ca_dir (vpn_ca's directory) as unencrypted PEM, checked
    against its certificate: what the cloud API's task signs with, unattended (docs/cloud.md,
    "Enrollment"). A bad directory or passphrase fails, naming the directory, never the key."""
    # Imported here: pki needs cryptography, which a gateway loading these filters may lack.
    from iotistic_vpn import pki
    from iotistic_vpn.errors import IotisticVpnError

    try:
        ca = pki.load_issuing_ca(str(ca_dir), passphrase or None)
    except IotisticVpnError as exc:
        raise AnsibleFilterError(f"iotistic_vpn_ca_key_pem: {exc}") from None
    return pki.private_key_pem(ca.key).decode()


def conninfo(params):
    """Return a libpq connection string of the mapping's keywords, each value quoted as libpq
    needs (a password with spaces or quotes too): psycopg's make_conninfo, checked by libpq."""
    # Imported here, as pki above: a host loading these filters may lack psycopg.
    from psycopg import ProgrammingError
    from psycopg.conninfo import make_conninfo

    if not isinstance(params, dict):
        raise AnsibleFilterError(f"iotistic_vpn_conninfo: takes a mapping, not {type(params)}")
    try:
        return make_conninfo("", **{k: str(v) for k, v in params.items()})
    except ProgrammingError:
        # libpq's message may quote the string, and so a password: name the keywords only.
        raise AnsibleFilterError(
            f"iotistic_vpn_conninfo: not libpq keywords: {sorted(params)}"
        ) from None


def conninfo_dict(text):
    """Return the keywords of a libpq connection string (psycopg's conninfo_to_dict); a string
    libpq cannot parse fails without showing it (it may hold a password)."""
    from psycopg import ProgrammingError
    from psycopg.conninfo import conninfo_to_dict

    try:
        return conninfo_to_dict(str(text or ""))
    except ProgrammingError:
        raise AnsibleFilterError(
            "iotistic_vpn_conninfo_dict: not a libpq connection string (not shown: it may hold "
            "a password)"
        ) from None


LOGIN_PASSWORD_LENGTH = 32
_LOGIN_PASSWORD_CHARS = string.ascii_letters + string.digits


def login_password(published, user, given=""):
    """Return the password to give the registry login `user`: `given` when set (a rotation),
    else the one `published` (the {user, password} an earlier publish wrote) holds for that same
    user, else a new random one of LOGIN_PASSWORD_LENGTH letters and digits. So a second publish
    changes nothing, and a renamed login never inherits another login's password."""
    if given:
        return str(given)
    if published is None:
        published = {}
    if not isinstance(published, dict):
        raise AnsibleFilterError(
            f"iotistic_vpn_login_password: the published login must be a mapping, not "
            f"{type(published).__name__}"
        )
    if published.get("user") == user and published.get("password"):
        return str(published["password"])
    return "".join(secrets.choice(_LOGIN_PASSWORD_CHARS) for _ in range(LOGIN_PASSWORD_LENGTH))


class FilterModule:
    """iotistic_vpn_gateway_instances: `{{ 4 | iotistic_vpn_gateway_instances(pool) }}`;
    iotistic_vpn_ca_key_pem: `{{ vpn_pki_dir ~ '/ca' | iotistic_vpn_ca_key_pem(passphrase) }}`;
    iotistic_vpn_conninfo: `{{ {'user': u, 'password': p} | iotistic_vpn_conninfo }}` and back,
    `{{ dsn | iotistic_vpn_conninfo_dict }}`; iotistic_vpn_login_password:
    `{{ published | iotistic_vpn_login_password(user, given) }}`."""

    def filters(self):
        return {
            "iotistic_vpn_gateway_instances": gateway_instances,
            "iotistic_vpn_ca_key_pem": ca_key_pem,
            "iotistic_vpn_conninfo": conninfo,
            "iotistic_vpn_conninfo_dict": conninfo_dict,
            "iotistic_vpn_login_password": login_password,
        }
