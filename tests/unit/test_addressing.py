"""Address allocation and id validation: properties over many inputs, exact error messages."""

from __future__ import annotations

import re
from ipaddress import IPv4Address, IPv4Network

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iotistic_vpn import addressing, validation
from iotistic_vpn.addressing import AddressSpaceExhausted
from iotistic_vpn.conventions import VPN_POOL
from iotistic_vpn.errors import InvalidValue

POOL = IPv4Network(VPN_POOL)


def test_a_default_block_holds_4093_devices():
    block = addressing.allocate_block(POOL, [])
    assert addressing.device_capacity(block) == 4093
    assert len(addressing.allocate_addresses(block, [], 4093)) == 4093
    with pytest.raises(AddressSpaceExhausted, match="4093 of 4093"):
        addressing.allocate_addresses(block, addressing.allocate_addresses(block, [], 4093), 1)


def test_first_block_and_first_addresses_skip_network_and_gateway():
    block = addressing.allocate_block(POOL, [])
    assert block == IPv4Network("100.64.0.0/20")
    assert addressing.gateway_address(block) == IPv4Address("100.64.0.1")
    assert addressing.allocate_addresses(block, [], 2) == [
        IPv4Address("100.64.0.2"),
        IPv4Address("100.64.0.3"),
    ]


def test_block_reuses_a_gap_and_skips_a_larger_taken_block():
    taken = ["100.64.0.0/20", "100.64.32.0/19"]
    assert addressing.allocate_block(POOL, taken) == IPv4Network("100.64.16.0/20")
    taken.append("100.64.16.0/20")
    assert addressing.allocate_block(POOL, taken) == IPv4Network("100.64.64.0/20")


def test_device_addresses_stop_before_broadcast():
    block = IPv4Network("10.0.0.0/29")  # .0 network, .1 gateway, .7 broadcast
    assert [str(a) for a in addressing.allocate_addresses(block, [], 5)] == [
        "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6",
    ]  # fmt: skip
    assert not addressing.is_device_address(block, "10.0.0.7")
    assert not addressing.is_device_address(block, "10.0.0.1")


def test_top_of_the_pool_is_kept_for_the_gateways():
    assert addressing.gateway_network(POOL) == IPv4Network("100.127.255.0/24")
    all_but_last = [IPv4Network((int(POOL.network_address) + i * 4096, 20)) for i in range(1023)]
    with pytest.raises(AddressSpaceExhausted, match="reserved for the gateways"):
        addressing.allocate_block(POOL, all_but_last)


def test_full_pool_names_the_pool():
    with pytest.raises(
        AddressSpaceExhausted,
        match=re.escape(
            "address pool 10.0.0.0/22 is full: all 4 /24 customer blocks are taken or reserved"
        ),
    ):
        addressing.allocate_block("10.0.0.0/22", ["10.0.0.0/24", "10.0.1.0/24", "10.0.2.0/24"], 24)


def test_full_block_names_the_block_and_the_count():
    block = "10.0.0.0/29"
    used = addressing.allocate_addresses(block, [], 4)
    with pytest.raises(
        AddressSpaceExhausted,
        match=re.escape(
            "customer block 10.0.0.0/29 is full: 4 of 5 device addresses in use, "
            "cannot allocate 2 more"
        ),
    ):
        addressing.allocate_addresses(block, used, 2)


def test_taken_addresses_may_come_as_integers_text_or_addresses():
    block = "10.0.0.0/28"
    taken = [IPv4Address("10.0.0.2"), "10.0.0.3", int(IPv4Address("10.0.0.5"))]
    assert [str(a) for a in addressing.allocate_addresses(block, taken, 2)] == [
        "10.0.0.4", "10.0.0.6",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("pool", "prefix", "message"),
    [
        ("100.64.0.1/10", 20, "invalid address pool '100.64.0.1/10': not an IPv4 CIDR"),
        ("not-a-cidr", 20, "invalid address pool 'not-a-cidr'"),
        ("fd00::/8", 20, "invalid address pool 'fd00::/8': only IPv4"),
        ("100.64.0.0/10", 8, "invalid block prefix 8: must be between /10"),
        ("100.64.0.0/10", 30, "invalid block prefix 30: must be between /10 (the pool"),
    ],
)
def test_invalid_pool_or_prefix_names_the_value(pool, prefix, message):
    with pytest.raises(InvalidValue, match=re.escape(message)):
        addressing.allocate_block(pool, [], prefix)


# -- properties ------------------------------------------------------------------------------

prefixes = st.integers(min_value=22, max_value=26)


@settings(max_examples=60, deadline=None)
@given(
    prefix=prefixes,
    pre_taken=st.lists(st.integers(min_value=0, max_value=255), max_size=20),
    rounds=st.integers(min_value=1, max_value=40),
)
def test_blocks_never_overlap_and_stay_in_the_pool(prefix, pre_taken, rounds):
    pool = IPv4Network("100.64.0.0/20")  # small, so the pool also runs full
    size = 1 << (32 - prefix)
    slots = pool.num_addresses // size
    taken = [
        IPv4Network((int(pool.network_address) + (i % slots) * size, prefix)) for i in pre_taken
    ]
    gateways = addressing.gateway_network(pool)
    free = {b for b in pool.subnets(new_prefix=prefix) if not b.overlaps(gateways)} - set(taken)
    for _ in range(rounds):
        if not free:
            with pytest.raises(AddressSpaceExhausted, match="is full"):
                addressing.allocate_block(pool, taken, prefix)
            return
        block = addressing.allocate_block(pool, taken, prefix)
        assert block == min(free)  # lowest free, inside the pool, of the asked size
        assert not any(block.overlaps(t) for t in taken)
        assert not block.overlaps(gateways)
        taken.append(block)
        free.discard(block)


@settings(max_examples=60, deadline=None)
@given(
    prefix=st.integers(min_value=24, max_value=29),
    taken_offsets=st.sets(st.integers(min_value=0, max_value=255)),
    count=st.integers(min_value=0, max_value=300),
)
def test_addresses_are_unique_device_addresses_of_the_block(prefix, taken_offsets, count):
    block = IPv4Network(("100.64.8.0", prefix))
    taken = {block.network_address + (o % block.num_addresses) for o in taken_offsets}
    free = sum(
        1 for a in range(2, block.num_addresses - 1) if block.network_address + a not in taken
    )
    if count > free:
        with pytest.raises(AddressSpaceExhausted, match=f"customer block {block} is full"):
            addressing.allocate_addresses(block, taken, count)
        return
    got = addressing.allocate_addresses(block, taken, count)
    assert len(got) == len(set(got)) == count
    assert not set(got) & taken
    assert all(addressing.is_device_address(block, a) for a in got)


DEVICE_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
CUSTOMER_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,30}[a-z0-9]")
id_alphabet = st.sampled_from("abcxyz0189-_A.Z \n")


@settings(max_examples=300)
@given(st.text(alphabet=id_alphabet, max_size=70) | st.from_regex(DEVICE_RE, fullmatch=True))
def test_device_id_accepts_exactly_the_documented_pattern(value):
    if DEVICE_RE.fullmatch(value):
        assert validation.device_id(value) == value
    else:
        with pytest.raises(InvalidValue, match=re.escape(f"invalid device id {value!r}")):
            validation.device_id(value)


@settings(max_examples=300)
@given(st.text(alphabet=id_alphabet, max_size=40) | st.from_regex(CUSTOMER_RE, fullmatch=True))
def test_customer_id_accepts_exactly_the_documented_pattern(value):
    if CUSTOMER_RE.fullmatch(value):
        assert validation.customer_id(value) == value
    else:
        with pytest.raises(InvalidValue, match=re.escape(f"invalid customer id {value!r}")):
            validation.customer_id(value)


def test_patterns_match_the_conventions_table():
    conventions = (validation.DEVICE_ID_PATTERN, validation.CUSTOMER_ID_PATTERN)
    assert conventions == (f"^{DEVICE_RE.pattern}$", f"^{CUSTOMER_RE.pattern}$")
