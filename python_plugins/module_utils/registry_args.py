"""Connection options shared by every module that talks to the registry database.

The option names follow community.postgresql (login_host, login_user, login_password, db ...)
so playbooks read the same; `dsn` takes a whole libpq connection string instead. Modules
document these options themselves (ansible-doc reads DOCUMENTATION as a literal).
"""

from __future__ import annotations

from ansible.module_utils.iotistic_vpn import conventions, registry

__all__ = ["argument_spec", "conninfo", "mutually_exclusive"]

_LOGIN_OPTIONS = ("login_host", "login_unix_socket", "login_user", "login_password", "ca_cert")


def argument_spec() -> dict:
    """The connection options, to merge into a module's argument_spec."""
    return {
        "dsn": {"type": "str", "no_log": True},
        "login_host": {"type": "str", "default": "localhost"},
        "login_port": {"type": "int", "default": conventions.POSTGRES_PORT},
        "login_user": {"type": "str", "default": "postgres"},
        "login_password": {"type": "str", "no_log": True},
        "login_unix_socket": {"type": "str"},
        "db": {"type": "str", "default": conventions.DATABASE_NAME, "aliases": ["login_db"]},
        "ssl_mode": {
            "type": "str",
            "default": "prefer",
            "choices": ["allow", "disable", "prefer", "require", "verify-ca", "verify-full"],
        },
        "ca_cert": {"type": "path"},
        "connect_timeout": {"type": "int", "default": 10},
    }


def mutually_exclusive() -> list[list[str]]:
    """A dsn replaces the separate login options."""
    return [["dsn", name] for name in _LOGIN_OPTIONS]


def conninfo(params: dict) -> str:
    """The libpq connection string the module's parameters describe."""
    return registry.conninfo(
        params.get("dsn"),
        host=params.get("login_unix_socket") or params["login_host"],
        port=params["login_port"],
        user=params["login_user"],
        password=params.get("login_password"),
        dbname=params["db"],
        sslmode=params["ssl_mode"],
        sslrootcert=params.get("ca_cert"),
    )
