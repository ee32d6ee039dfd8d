"""How ``Http1Connection`` frames what it sends: message heads and their bodies' framing (pure).

Rules (h11's, so that what the relay sends is byte for byte what it sent):

1. A request's body is chunked if it says Transfer-Encoding, else as long as
   its Content-Length, else empty.
2. A response's body: none for 204 and 304, nor for a response to HEAD
   (whose head is sent as the GET response's would be); chunked when it says
   Transfer-Encoding or has no Content-Length (``Transfer-Encoding: chunked``
   then goes last, in title case), except to an HTTP/1.0 peer, which gets
   the body until the connection closes.
3. When the connection will close, the response says ``Connection: close``
   (title case, last); an HTTP/1.0 peer that asked to keep the connection
   is told ``Connection: keep-alive``.
4. Heads are the event's fields joined as given: nothing is checked here.
"""

from __future__ import annotations

from typing import Final

from hostmux.http1.events import Headers, LocalProtocolError, Request, Response

# How a body is framed on the wire.
LENGTH: Final = 0
CHUNKED: Final = 1
UNTIL_CLOSE: Final = 2
# Header names framing depends on (one dict lookup per header finds them).
HOST: Final = 0
TE: Final = 1
CL: Final = 2
CONNECTION: Final = 3
SPECIAL: Final = {
    b"host": HOST, b"transfer-encoding": TE, b"content-length": CL, b"connection": CONNECTION
}  # fmt: skip

_FRAMING: Final = frozenset({b"content-length", b"transfer-encoding"})
_NO_BODY_STATUSES: Final = frozenset({204, 304})


def request_head(request: Request) -> tuple[bytes, int, int, bool]:
    """(head bytes, framing, Content-Length, keep-alive) for sending ``request``."""
    parts = [request.method, b" ", request.target, b" HTTP/1.1\r\n"]
    framing, left, keep_alive = LENGTH, 0, True
    for name, value in request.headers:
        parts += (name, b": ", value, b"\r\n")
        special = SPECIAL.get(name)
        if special == CL:
            left = _length_to_send(value)
        elif special == TE:
            framing = CHUNKED
        elif special == CONNECTION and b"close" in tokens(value):
            keep_alive = False
    parts.append(b"\r\n")
    return b"".join(parts), framing, left, keep_alive


def framed_request_head(request: Request) -> bytes:
    """The head of a ``request`` whose framing its builder gave (no header looked up)."""
    parts = [request.method, b" ", request.target, b" HTTP/1.1\r\n"]
    for name, value in request.headers:
        parts += (name, b": ", value, b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


def request_framing(content_length: bytes | None, chunked: bool) -> tuple[int, int] | None:
    """(framing, Content-Length) of a parsed request's body; None if the length is odd."""
    if chunked:
        return CHUNKED, 0
    if content_length is None:
        return LENGTH, 0
    return (LENGTH, int(content_length)) if content_length.isdigit() else None


def response_head(
    response: Response, *, method: bytes | None, peer_version: bytes | None, keep_alive: bool
) -> tuple[bytes, int, int, bool]:
    """(head bytes, framing, Content-Length, closes) for sending ``response``.

    ``method`` and ``peer_version`` are the request's (None: no request was
    parsed); ``keep_alive``: whether the request lets the connection live on.
    """
    status = response.status_code
    headers = response.headers
    parts = [b"HTTP/1.1 %d %b\r\n" % (status, response.reason)]
    length: int | None = None
    chunked = closes = False
    for name, value in headers:
        parts += (name, b": ", value, b"\r\n")
        special = SPECIAL.get(name)
        if special is None:
            continue
        if special == CL:
            length = _length_to_send(value)
        elif special == TE:
            chunked = True
        elif special == CONNECTION and b"close" in tokens(value):
            closes = True
    need_close = rewrite = False
    framing, left = LENGTH, 0
    if status not in _NO_BODY_STATUSES:
        if chunked or length is None:  # length unknown
            rewrite = True
            headers = [h for h in headers if h[0] not in _FRAMING]
            if peer_version == b"1.1":
                headers.append((b"Transfer-Encoding", b"chunked"))
                framing = CHUNKED
            else:
                framing = UNTIL_CLOSE
                need_close = method != b"HEAD"
        else:
            left = length
        if method == b"HEAD":
            framing, left = LENGTH, 0
    if not keep_alive or need_close:
        rewrite = closes = True
        headers = _connection_close(headers)
    elif peer_version == b"1.0" and not closes:
        rewrite = True
        headers = [*headers, (b"Connection", b"keep-alive")]  # HTTP/1.0 closes by default
    if rewrite:
        return head(parts[0], headers), framing, left, closes
    parts.append(b"\r\n")
    return b"".join(parts), framing, left, closes


def head(first_line: bytes, headers: Headers) -> bytes:
    parts = [first_line]
    for name, value in headers:
        parts += (name, b": ", value, b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


def tokens(value: bytes) -> list[bytes]:
    """The lower-case tokens of a comma-separated header value."""
    return [token.strip().lower() for token in value.split(b",")]


def _connection_close(headers: Headers) -> Headers:
    """``headers`` saying ``Connection: close`` (as h11 spells it: title case, at the end)."""
    named = {b"close"}
    for name, value in headers:
        if name == b"connection":
            named.update(tokens(value))
    named.discard(b"keep-alive")
    kept = [h for h in headers if h[0] != b"connection"]
    return kept + [(b"Connection", token) for token in sorted(named)]


def _length_to_send(value: bytes) -> int:
    if not value.isdigit():
        raise LocalProtocolError(f"bad Content-Length {value!r}")
    return int(value)
