"""The device registry: customers, devices, certificates and connections in PostgreSQL.

Registry owns every query, one class per kind of record (customers, devices, certificates,
connections, tokens, provisioning tokens, audit, schema) on one connection. Writes run in a
transaction each (a savepoint when the caller opened an outer `transaction()`), lock what
they allocate from, take an `actor` for the audit log and return the plain dataclasses of
`models`. Allocation is race-free: a customer row lock serialises device addresses of one
customer, an advisory lock serialises new customer blocks, and the schema's unique/exclusion
constraints back both up.
Every database failure becomes RegistryUnavailable naming the server but never the password.
"""

from ..conventions import DEVICE_STATES, REVOCATION_REASONS
from .audit import AuditQueries
from .certificates import CertificateQueries
from .changes import ChangeQueries, Changes
from .connection import RegistryConflict, RegistryConnection, conninfo
from .connections import ConnectionQueries
from .customers import CustomerQueries
from .devices import DeviceQueries
from .models import (
    ApiToken,
    AuditEntry,
    Certificate,
    Change,
    ConnectionEvent,
    Customer,
    Device,
    DeviceGrant,
    DeviceStatus,
    EnrollmentTarget,
    GatewayChanges,
    ProvisioningToken,
    RequestRecord,
    Result,
    Snapshot,
)
from .provisioning_tokens import ProvisioningTokenQueries
from .schema import Schema
from .tokens import TokenQueries

__all__ = [
    "DEVICE_STATES",
    "REVOCATION_REASONS",
    "ApiToken",
    "AuditEntry",
    "Certificate",
    "Change",
    "Changes",
    "ConnectionEvent",
    "Customer",
    "Device",
    "DeviceGrant",
    "DeviceStatus",
    "EnrollmentTarget",
    "GatewayChanges",
    "ProvisioningToken",
    "Registry",
    "RegistryConflict",
    "RequestRecord",
    "Result",
    "Snapshot",
    "conninfo",
]


class Registry(
    CustomerQueries,
    DeviceQueries,
    CertificateQueries,
    ConnectionQueries,
    ChangeQueries,
    TokenQueries,
    ProvisioningTokenQueries,
    AuditQueries,
    Schema,
    RegistryConnection,
):
    """The registry of one PostgreSQL database; one instance per thread."""
