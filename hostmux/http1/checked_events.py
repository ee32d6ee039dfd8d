"""Events the relay sends, split by where their headers come from.

``Http1Connection`` never checks the headers of an event it is handed (llhttp checked
what it parsed; checking again measured ~6% of a small request under h11).
Headers parsed from a peer, and the router's own built from such values and
constants, need no second check: ``*_of_checked_headers`` wrap them as they
are. Headers from anywhere else (a ``Destination``'s filters, status pages)
go through ``checked_headers``: ``*_checking_headers`` raise
LocalProtocolError for a name that is not a token or a value with control
characters (CR, LF, NUL: header injection) in them.
"""

from __future__ import annotations

from collections.abc import Iterable

from hostmux.http1.events import END_OF_MESSAGE, Headers, Request, Response, checked_headers

__all__ = [
    "END_OF_MESSAGE",
    "request_checking_headers",
    "request_of_checked_headers",
    "response_checking_headers",
    "response_of_checked_headers",
]


def request_of_checked_headers(
    method: bytes, target: bytes, headers: Headers, framing: tuple[int, int] | None = None
) -> Request:
    """An HTTP/1.1 request from a parsed request's method, its (checked) target and headers.

    ``framing``: the body's (``framing.LENGTH`` or ``CHUNKED``, Content-Length) when the
    caller knows it from the parsed request and ``headers`` say no ``Connection: close``.
    """
    return Request(method, target, headers, b"1.1", None, framing)


def response_of_checked_headers(parsed: Response, headers: Headers) -> Response:
    """A response like ``parsed`` (from the parser) with ``headers`` (from its own)."""
    return Response(parsed.status_code, headers, parsed.reason, b"1.1")


def request_checking_headers(
    method: bytes, target: bytes, headers: Iterable[tuple[bytes, bytes]]
) -> Request:
    """An HTTP/1.1 request with ``headers`` from elsewhere, checked (LocalProtocolError)."""
    return Request(method, target, checked_headers(headers), b"1.1")


def response_checking_headers(
    status: int, reason: bytes, headers: Iterable[tuple[bytes, bytes]]
) -> Response:
    """A response with ``headers`` from elsewhere, checked (LocalProtocolError)."""
    return Response(status, checked_headers(headers), reason, b"1.1")
