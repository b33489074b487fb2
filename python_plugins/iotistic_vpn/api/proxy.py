"""What may cross from a customer's request to a device, and back: paths and headers.

Pure functions, so every hostile form has a unit test: a path that climbs (`..` plain,
percent-encoded or encoded twice), carries CR, LF, NUL or a backslash, or names another origin
is refused; hop-by-hop headers and the customer's credentials never reach the device.
"""

from __future__ import annotations

from urllib.parse import unquote

__all__ = [
    "MAX_REQUEST_HEAD",
    "BadPath",
    "device_target",
    "head_size",
    "request_headers",
    "response_headers",
]

# RFC 9110 7.6.1 hop-by-hop fields, plus what is ours alone: the customer's token, its cookies
# and the client's view of the host never reach a device.
_HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "trailers", "transfer-encoding", "upgrade", "proxy-connection",
})  # fmt: skip
_NEVER_FORWARDED = _HOP_BY_HOP | {"authorization", "cookie", "host", "content-length"}
# The device's Content-Length goes back as it is: the client sees a truncated answer as one.
_NEVER_RETURNED = _HOP_BY_HOP | {"set-cookie"}
_FORBIDDEN = ("\r", "\n", "\x00", "\\")


class BadPath(ValueError):
    """A proxy path that must not be forwarded; the message says why (never echoing it)."""


def device_target(raw_tail: bytes, query: bytes) -> str:
    """The request target for the device from the raw path after /proxy/ and the raw query.

    The raw bytes are forwarded as the client encoded them; every decoding of them (up to three
    levels) must be a plain relative path.
    """
    try:
        tail = raw_tail.decode("ascii")
        query_text = query.decode("ascii")
    except UnicodeDecodeError:
        raise BadPath("the path must be ASCII (percent-encode anything else)") from None
    form = tail
    for _ in range(3):
        _check(form)
        decoded = unquote(form)
        if decoded == form:
            break
        form = decoded
    else:
        _check(form)
    if any(c in query_text for c in _FORBIDDEN) or any(
        c in unquote(query_text) for c in ("\r", "\n", "\x00")
    ):
        raise BadPath("the query holds a control character")
    return "/" + tail + (f"?{query_text}" if query_text else "")


def _check(form: str) -> None:
    if any(c in form for c in _FORBIDDEN) or any(ord(c) < 0x20 or ord(c) == 0x7F for c in form):
        raise BadPath("the path holds a control character or a backslash")
    if form.startswith("/") or "://" in form:
        raise BadPath("the path must be relative to the device's agent")
    if any(segment in (".", "..") for segment in form.split("/")):
        raise BadPath("the path must not climb out of the device's agent ('.' or '..')")


# The largest header block forwarded to a device. uvicorn's parser (httptools) sets no limit of
# its own, and a device's agent refusing a larger one (431) is not refusing it before the device.
MAX_REQUEST_HEAD = 16384


def head_size(headers: list[tuple[bytes, bytes]]) -> int:
    """Bytes of a request's header lines as sent ("Name: value" and CRLF each)."""
    return sum(len(n) + len(v) + 4 for n, v in headers)


def request_headers(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The client's headers that go on to the device: end-to-end ones only."""
    named_in_connection = {
        token.strip().lower()
        for name, value in headers
        if name.lower() == b"connection"
        for token in value.split(b",")
    }
    return [
        (name, value)
        for name, value in headers
        if name.decode("latin-1").lower() not in _NEVER_FORWARDED
        and name.lower() not in named_in_connection
    ]


def response_headers(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The device's headers that go back to the client (no cookies: they would be ours)."""
    return [(n, v) for n, v in headers if n.decode("latin-1").lower() not in _NEVER_RETURNED]
