"""The management protocol parser, on transcripts in OpenVPN 2.6's wire format, and the
management-hold state of a client on a scripted socket speaking it."""

import asyncio
import logging
import tempfile
from pathlib import Path

from iotistic_vpn.gateway.hold import HoldRelease
from iotistic_vpn.gateway.management import (
    NEXT_REMOTE,
    ClientEvent,
    Hold,
    ManagementClient,
    ManagementParser,
    client_auth,
    client_deny,
    client_kill,
    parse_status,
    quote,
)
from iotistic_vpn.gateway.metrics import Metrics

CONNECT = """\
>INFO:OpenVPN Management Interface Version 5 -- type 'help' for more info
>CLIENT:CONNECT,7,1
>CLIENT:ENV,common_name=dev-01
>CLIENT:ENV,tls_serial_0=123456789012345678901234567890
>CLIENT:ENV,untrusted_ip=192.0.2.10
>CLIENT:ENV,END
SUCCESS: client-auth command succeeded
>CLIENT:ESTABLISHED,7
>CLIENT:ENV,common_name=dev-01
>CLIENT:ENV,END
>CLIENT:ADDRESS,7,100.64.0.2,1
>CLIENT:DISCONNECT,7
>CLIENT:ENV,bytes_received=100
>CLIENT:ENV,END
"""


def _feed(text):
    parser = ManagementParser()
    return [item for line in text.splitlines() if (item := parser.feed(line)) is not None]


def test_connect_block_becomes_one_event_with_env():
    items = _feed(CONNECT)
    connect = items[0]
    assert connect == ClientEvent(
        "CONNECT",
        7,
        1,
        {
            "common_name": "dev-01",
            "tls_serial_0": "123456789012345678901234567890",
            "untrusted_ip": "192.0.2.10",
        },
    )


def test_replies_and_events_are_told_apart_in_order():
    items = _feed(CONNECT)
    kinds = [i.kind if isinstance(i, ClientEvent) else i for i in items]
    assert kinds == [
        "CONNECT",
        "SUCCESS: client-auth command succeeded",
        "ESTABLISHED",
        "ADDRESS",
        "DISCONNECT",
    ]
    assert items[3].address == "100.64.0.2"
    # Each block's environment is its own: the disconnect does not inherit the connect's.
    assert items[4].env == {"bytes_received": "100"}


def test_a_byte_stream_split_anywhere_parses_as_its_lines():
    """The socket is read in chunks: a line cut between two reads waits for its end."""
    wire = CONNECT.replace("\n", "\r\n").encode()  # OpenVPN ends lines with CRLF
    expected = _feed(CONNECT)
    for size in (1, 2, 7, 64, len(wire)):
        parser = ManagementParser()
        items = []
        for start in range(0, len(wire), size):
            items += parser.feed_bytes(wire[start : start + size])
        assert items == expected, f"chunks of {size} bytes"


def test_an_unfinished_line_is_held_back():
    parser = ManagementParser()
    assert parser.feed_bytes(b"SUCCESS: client-kill command succ") == []
    assert parser.feed_bytes(b"eeded\r\n") == ["SUCCESS: client-kill command succeeded"]


def test_commands_are_formatted_for_the_wire():
    assert client_auth(7, 1, "100.64.0.2", "255.192.0.0") == (
        "client-auth 7 1\nifconfig-push 100.64.0.2 255.192.0.0\nEND"
    )
    assert client_deny(7, 1, 'revoked "x"', "revoked") == (
        'client-deny 7 1 "revoked \\"x\\"" "revoked"'
    )
    assert client_kill(7) == "client-kill 7 HALT"
    assert client_kill(7, NEXT_REMOTE) == "client-kill 7 RESTART,[N]"
    assert quote("a\\b") == '"a\\\\b"'


def test_status_rows_are_parsed():
    lines = [
        "TITLE\tOpenVPN 2.6.14",
        "HEADER\tCLIENT_LIST\tCommon Name\tReal Address\tVirtual Address\tVirtual IPv6 Address"
        "\tBytes Received\tBytes Sent\tConnected Since\tConnected Since (time_t)\tUsername"
        "\tClient ID\tPeer ID\tData Channel Cipher",
        "CLIENT_LIST\tdev-01\t192.0.2.10:41000\t100.64.0.2\t\t3000\t4000"
        "\t2026-11-25 10:00:00\t1795600000\tUNDEF\t7\t0\tAES-256-GCM",
        "GLOBAL_STATS\tMax bcast/mcast queue length\t0",
    ]
    (row,) = parse_status(lines)
    assert (row.common_name, row.virtual_address, row.cid, row.connected_since) == (
        "dev-01",
        "100.64.0.2",
        7,
        1795600000,
    )


def test_a_name_repeated_in_an_env_block_is_reported_with_the_last_value():
    text = (
        ">CLIENT:CONNECT,3,1\n>CLIENT:ENV,X509_0_CN=evil\n>CLIENT:ENV,X509_0_CN=dev-01\n"
        ">CLIENT:ENV,tls_serial_0=5\n>CLIENT:ENV,END\n"
        ">CLIENT:REAUTH,3,2\n>CLIENT:ENV,X509_0_CN=dev-01\n>CLIENT:ENV,END\n"
    )
    for events in (_feed(text), ManagementParser().feed_bytes(text.encode())):
        assert [(e.env["X509_0_CN"], e.repeated) for e in events] == [
            ("dev-01", frozenset({"X509_0_CN"})),
            ("dev-01", frozenset()),
        ]


# What OpenVPN 2.6.14 sends with management-hold (recorded): the greeting of a client that
# connects while it waits carries the hold; a restart (SIGHUP) sends it on the open link.
GREETING = ">INFO:OpenVPN Management Interface Version 5 -- type 'help' for more info\r\n"
HOLDING = ">HOLD:Waiting for hold release:0\r\n"
REPLIES = {
    "env-filter 1": "SUCCESS: env_filter_level=1",
    "hold release": "SUCCESS: hold release succeeded",
    "status 3": "ERROR: The 'status' command is not supported by the current daemon mode",
}


def test_a_hold_is_parsed_in_its_place_among_replies():
    wire = (GREETING + HOLDING + "SUCCESS: env_filter_level=1\r\n"
            ">HOLD:Waiting for hold release:5\r\n").encode()  # fmt: skip
    assert ManagementParser().feed_bytes(wire) == [
        Hold(0), "SUCCESS: env_filter_level=1", Hold(5),
    ]  # fmt: skip
    assert _feed(">HOLD:Waiting for hold release:x") == [Hold(0)]


class ScriptedInstance:
    """One OpenVPN-like management socket: the greeting (holding or not), scripted replies,
    and every command it was sent."""

    def __init__(self, holding: bool) -> None:
        self.holding = holding
        self.commands: list[str] = []
        self.writer: asyncio.StreamWriter | None = None

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        writer.write((GREETING + (HOLDING if self.holding else "")).encode())
        while line := (await reader.readline()).decode().strip():
            self.commands.append(line)
            if line == "hold release":
                self.holding = False
            writer.write((REPLIES.get(line, "SUCCESS: ok") + "\r\n").encode())

    def restart(self) -> None:
        """What a SIGHUP does on the open link: the instance holds again."""
        assert self.writer is not None
        self.holding = True
        self.writer.write(HOLDING.encode())


def _with_instance(holding: bool, script) -> None:
    async def run():
        instance = ScriptedInstance(holding)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "iotistic-0.sock"
            server = await asyncio.start_unix_server(instance.serve, str(path))
            client = ManagementClient(str(path))
            await client.connect()
            try:
                await script(instance, client)
            finally:
                await client.close()
                server.close()

    asyncio.run(run())


def test_a_holding_instance_is_known_from_the_first_reply_and_released_once():
    async def script(instance, client):
        await client.filter_env()  # the greeting's >HOLD came before its reply
        assert client.holding
        assert await client.release_hold() is True
        assert not client.holding and not instance.holding
        assert await client.release_hold() is False  # nothing left to release: nothing sent
        assert instance.commands == ["env-filter 1", "hold release"]
        assert await asyncio.wait_for(client.events.get(), 1) == Hold(0)  # in event order

    _with_instance(True, script)


def test_a_hold_on_a_live_link_is_an_event_and_released_again():
    async def script(instance, client):
        await client.filter_env()
        assert not client.holding
        assert await client.release_hold() is False
        instance.restart()
        assert await asyncio.wait_for(client.events.get(), 1) == Hold(0)
        assert client.holding
        assert await client.release_hold() is True
        assert instance.commands == ["env-filter 1", "hold release"]

    _with_instance(False, script)


def test_a_hold_waits_for_a_snapshot_before_it_is_released(caplog):
    """A fresh gateway whose registry never answered keeps its instances held."""
    decidable = False
    metrics = Metrics(["iotistic-0"])
    released = 'iotistic_gateway_holds_released_total{instance="iotistic-0"}'

    async def script(instance, client):
        nonlocal decidable
        await client.filter_env()
        release = asyncio.create_task(HoldRelease(metrics, lambda: decidable).release(
            "iotistic-0", client))  # fmt: skip
        await asyncio.sleep(1.2)
        assert not release.done() and instance.commands == ["env-filter 1"]
        assert f"{released} 0.0" in metrics.render().decode().splitlines()
        decidable = True  # the first snapshot arrived
        await asyncio.wait_for(release, 2)
        assert instance.commands == ["env-filter 1", "hold release"]
        assert f"{released} 1.0" in metrics.render().decode().splitlines()

    with caplog.at_level(logging.INFO, "iotistic_vpn.gateway"):
        _with_instance(True, script)
    assert [r.getMessage() for r in caplog.records] == [
        "instance iotistic-0 holds until the agent has a registry snapshot to decide connects on",
        "instance iotistic-0: hold released: it starts and accepts devices",
    ]
