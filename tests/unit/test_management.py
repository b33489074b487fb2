"""The management protocol parser, on transcripts in OpenVPN 2.6's wire format."""

from iotistic_vpn.gateway.management import (
    NEXT_REMOTE,
    ClientEvent,
    ManagementParser,
    client_auth,
    client_deny,
    client_kill,
    parse_status,
    quote,
)

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
