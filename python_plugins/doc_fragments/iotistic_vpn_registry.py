"""Documentation shared by every module that connects to the registry database."""

from __future__ import annotations


class ModuleDocFragment:
    # The connection options of module_utils/registry_args.py, documented once.
    DOCUMENTATION = r"""
options:
  dsn:
    description:
      - A libpq connection string or URI for the registry database.
      - Replaces the C(login_*) options, O(ca_cert) and O(db).
    type: str
  login_host:
    description: Host name or address of the registry database.
    type: str
    default: localhost
  login_port:
    description: TCP port of the registry database.
    type: int
    default: 5432
  login_user:
    description: Database user.
    type: str
    default: postgres
  login_password:
    description: Password of O(login_user).
    type: str
  login_unix_socket:
    description: Directory of the server's unix socket, used instead of O(login_host).
    type: str
  db:
    description: Name of the registry database.
    type: str
    default: iotistic_vpn
    aliases: [login_db]
  ssl_mode:
    description: libpq sslmode.
    type: str
    default: prefer
    choices: [allow, disable, prefer, require, verify-ca, verify-full]
  ca_cert:
    description: CA certificate file that verifies the server (libpq sslrootcert).
    type: path
  connect_timeout:
    description: Seconds to wait for a connection before failing.
    type: int
    default: 10
"""
