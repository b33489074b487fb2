"""The identifier rules, with nothing imported: conventions.py re-exports them.

tlsverify.py reads them from here and so pays no import beyond `re` (conventions.py itself loads
ipaddress and dataclasses); the gateways' tlsverify.sh applies the same rules, held to them by
tests/unit/test_tlsverify.py.
"""

__all__ = ["CUSTOMER_ID_PATTERN", "DEVICE_ID_PATTERN", "DEVICE_URN_PREFIX"]

# A device id becomes a host name, a certificate subject and a file name: a DNS label.
DEVICE_ID_PATTERN = r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$"
CUSTOMER_ID_PATTERN = r"^[a-z0-9][a-z0-9-]{0,30}[a-z0-9]$"
# urn:iotistic:<customer>:<device>: a device certificate's SAN URI and the USER metadata of its
# tls-crypt-v2 client key (what the gateways' tls-crypt-v2-verify script reads).
DEVICE_URN_PREFIX = "urn:iotistic:"
