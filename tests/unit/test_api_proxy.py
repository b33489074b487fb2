"""What the API forwards to a device: hostile paths refused, hop-by-hop and credentials dropped."""

from __future__ import annotations

import pytest

from iotistic_vpn.api.proxy import BadPath, device_target, request_headers, response_headers


@pytest.mark.parametrize(
    ("tail", "query", "target"),
    [
        (b"v1/device", b"", "/v1/device"),
        (b"v1/logs", b"follow=1&n=10", "/v1/logs?follow=1&n=10"),
        (b"v1/a%20b", b"", "/v1/a%20b"),  # forwarded as the client encoded it
        (b"", b"", "/"),
        (b"v1/..data", b"", "/v1/..data"),  # dots inside a name are fine
    ],
)
def test_plain_relative_paths_are_forwarded_as_sent(tail, query, target):
    assert device_target(tail, query) == target


@pytest.mark.parametrize(
    ("tail", "why"),
    [
        (b"../etc/passwd", "climb"),
        (b"v1/../../x", "climb"),
        (b"v1/%2e%2e/x", "climb"),
        (b"v1/%2E%2E/x", "climb"),
        (b"v1/%252e%252e/x", "climb"),  # encoded twice
        (b"v1/%25252e%25252e/x", "climb"),  # three times
        (b"v1/./x", "climb"),
        (b"/etc/passwd", "relative"),
        (b"%2fetc/passwd", "relative"),
        (b"http://evil.example/x", "relative"),
        (b"v1/a%0d%0aX-Injected:%20yes", "control character"),
        (b"v1/a\r\nX: y", "control character"),
        (b"v1/a%00b", "control character"),
        (b"v1\\..\\x", "backslash"),
        (b"v1/a%5c..%5cb", "backslash"),
        ("v1/caf\u00e9".encode(), "ASCII"),
    ],
)
def test_hostile_paths_are_refused_saying_why(tail, why):
    with pytest.raises(BadPath, match=why):
        device_target(tail, b"")


@pytest.mark.parametrize("query", [b"a=%0d%0aSet-Cookie:x", b"a=%00", b"a=\r\n"])
def test_control_characters_in_the_query_are_refused(query):
    with pytest.raises(BadPath, match="query"):
        device_target(b"v1/device", query)


def test_only_end_to_end_headers_reach_the_device():
    sent = [
        (b"Authorization", b"Bearer ivpn_secret"), (b"Cookie", b"session=1"),
        (b"Host", b"api.example"), (b"Connection", b"keep-alive, X-Hop"), (b"X-Hop", b"1"),
        (b"Keep-Alive", b"timeout=5"), (b"Transfer-Encoding", b"chunked"), (b"TE", b"trailers"),
        (b"Upgrade", b"websocket"), (b"Proxy-Authorization", b"Basic x"),
        (b"Content-Length", b"5"), (b"Accept", b"application/json"), (b"X-Request-Id", b"r1"),
    ]  # fmt: skip
    assert request_headers(sent) == [(b"Accept", b"application/json"), (b"X-Request-Id", b"r1")]


def test_the_device_cannot_set_our_cookies_or_framing():
    back = [(b"Set-Cookie", b"x=1"), (b"Content-Length", b"3"), (b"Connection", b"close"),
            (b"Transfer-Encoding", b"chunked"), (b"Content-Type", b"application/json")]  # fmt: skip
    assert response_headers(back) == [(b"Content-Length", b"3"),
                                      (b"Content-Type", b"application/json")]  # fmt: skip
