"""VPN address arithmetic (pure functions): customer blocks in a pool, device addresses in a block.

Each customer owns one block (a /20 of 100.64.0.0/10 by default, see conventions.py), so
firewall rules and routes stay one prefix per customer. Inside a block the network and
broadcast addresses are never handed out, and neither is the first host address (kept free
for a per-customer router address), so a /20 holds 4,093 devices. The top /24 of the pool
(100.127.255.0/24 by default) carries the gateways' own tunnel addresses (docs/tunnels.md) and
is never part of a customer block. The registry calls these functions while it holds the
database locks; they never touch a DB.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from ipaddress import IPv4Address, IPv4Network

from . import conventions
from .conventions import CUSTOMER_BLOCK_PREFIX
from .errors import InvalidValue, IotisticVpnError
from .validation import ip_network

__all__ = [
    "AddressSpaceExhausted",
    "allocate_addresses",
    "allocate_block",
    "device_capacity",
    "gateway_address",
    "gateway_network",
    "is_device_address",
    "parse_pool",
]

# Smallest useful block: network, broadcast, gateway and at least one device.
_MAX_BLOCK_PREFIX = 29


class AddressSpaceExhausted(IotisticVpnError):
    """A pool has no free block left, or a block has no free device address left."""


def parse_pool(pool: str | IPv4Network, block_prefix: int = CUSTOMER_BLOCK_PREFIX) -> IPv4Network:
    """Validate a pool CIDR and the customer block size carved out of it."""
    net = ip_network(pool, "address pool")
    if isinstance(block_prefix, bool) or not isinstance(block_prefix, int):
        raise InvalidValue("block prefix", block_prefix, "must be an integer such as 20")
    if not net.prefixlen <= block_prefix <= _MAX_BLOCK_PREFIX:
        raise InvalidValue(
            "block prefix",
            block_prefix,
            f"must be between /{net.prefixlen} (the pool {net}) and /{_MAX_BLOCK_PREFIX}",
        )
    return net


def gateway_network(pool: str | IPv4Network) -> IPv4Network:
    """The pool's top /24 (whole pool if smaller): the gateways' tunnel addresses live there."""
    return conventions.gateway_network(str(ip_network(pool, "address pool")))


def allocate_block(
    pool: str | IPv4Network,
    taken: Iterable[str | IPv4Network],
    block_prefix: int = CUSTOMER_BLOCK_PREFIX,
) -> IPv4Network:
    """Return the lowest /block_prefix of pool clear of taken blocks and the gateway network."""
    net = parse_pool(pool, block_prefix)
    taken = [*taken, gateway_network(net)]
    size = 1 << (32 - block_prefix)
    pool_start = int(net.network_address)
    busy: set[int] = set()  # indexes of pool slots of `size` that overlap a taken block
    for block in taken:
        block = ipaddress.IPv4Network(block)
        if not block.overlaps(net):
            continue
        first = max(int(block.network_address), pool_start)
        last = min(int(block.broadcast_address), int(net.broadcast_address))
        busy.update(range((first - pool_start) // size, (last - pool_start) // size + 1))
    for index in range(net.num_addresses // size):
        if index not in busy:
            return IPv4Network((pool_start + index * size, block_prefix))
    raise AddressSpaceExhausted(
        f"address pool {net} is full: all {net.num_addresses // size} "
        f"/{block_prefix} customer blocks are taken or reserved for the gateways "
        "(use a larger pool or a smaller block prefix)"
    )


def gateway_address(block: str | IPv4Network) -> IPv4Address:
    """The block's first host address, reserved for the gateway side."""
    return ip_network(block, "customer block").network_address + 1


def device_capacity(block: str | IPv4Network) -> int:
    """How many device addresses a block holds (network, broadcast and gateway excluded)."""
    return max(ip_network(block, "customer block").num_addresses - 3, 0)


def is_device_address(block: str | IPv4Network, address: str | IPv4Address) -> bool:
    """Whether address may be handed to a device of this block."""
    net = ip_network(block, "customer block")
    addr = int(IPv4Address(address))
    return int(net.network_address) + 2 <= addr < int(net.broadcast_address)


def allocate_addresses(
    block: str | IPv4Network,
    taken: Iterable[str | IPv4Address | int],
    count: int,
) -> list[IPv4Address]:
    """Return the count lowest free device addresses of block, skipping the taken ones (given
    as text, addresses or integers)."""
    net = ip_network(block, "customer block")
    if count < 0:
        raise InvalidValue("address count", count, "must not be negative")
    used = {a if isinstance(a, int) else int(IPv4Address(a)) for a in taken}
    first, end = int(net.network_address) + 2, int(net.broadcast_address)
    found: list[IPv4Address] = []
    candidate = first
    while len(found) < count and candidate < end:
        if candidate not in used:
            found.append(IPv4Address(candidate))
        candidate += 1
    if len(found) < count:
        in_use = sum(first <= a < end for a in used)
        raise AddressSpaceExhausted(
            f"customer block {net} is full: {in_use} of {device_capacity(net)} device "
            f"addresses in use, cannot allocate {count} more"
        )
    return found
