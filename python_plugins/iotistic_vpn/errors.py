"""Exceptions shared by every part of the package; adapters turn them into their own errors."""

from __future__ import annotations

__all__ = ["InvalidValue", "IotisticVpnError", "NotFound", "RegistryUnavailable"]


class IotisticVpnError(Exception):
    """Base class of every error the package raises on purpose."""


class InvalidValue(IotisticVpnError, ValueError):
    """An input failed validation; nothing was changed."""

    def __init__(self, field: str, value: object, reason: str) -> None:
        self.field = field
        self.value = value
        self.reason = reason
        super().__init__(f"invalid {field} {value!r}: {reason}")


class NotFound(IotisticVpnError, LookupError):
    """A customer, device or certificate the caller named does not exist."""


class RegistryUnavailable(IotisticVpnError, ConnectionError):
    """The registry database cannot be reached; the operation was not applied."""
