"""The apps' cookies stay host-only: ``Domain`` is removed from every ``Set-Cookie`` (pure).

Without a ``Domain`` attribute a browser keeps a cookie for the exact host
that set it (RFC 6265bis 5.7.3). With one, the app of instance A could set a
cookie for the parent domain that the browser then sends to every sibling
instance B, C, ... — to plant values there (session fixation, a login
lock-out with a cookie the sibling cannot parse). So the router drops the
attribute from every ``Set-Cookie`` an app sends, case-insensitively and
whatever its value; the rest of the header is kept byte for byte. Operators
who need cookies shared across instances turn this off (``keep_cookie_domain``).

Attributes are split on ``;`` as RFC 6265bis 5.7 parses them (a cookie value
cannot contain ``;``), so what the browser would read as ``Domain`` is exactly
what is removed.
"""

from __future__ import annotations

from collections.abc import Sequence

Headers = list[tuple[bytes, bytes]]


def without_cookie_domain(set_cookie: bytes) -> bytes:
    """One ``Set-Cookie`` value minus any ``Domain`` attribute."""
    parts = set_cookie.split(b";")
    kept = [parts[0]] + [
        attribute
        for attribute in parts[1:]
        if attribute.split(b"=", 1)[0].strip(b" \t").lower() != b"domain"
    ]
    if len(kept) == len(parts):
        return set_cookie
    # What was before a removed last attribute may end in spaces: a header value
    # does not (so what comes out of a checked value is checked too).
    return b";".join(kept).rstrip(b" \t")


def host_only_cookies(headers: Sequence[tuple[bytes, bytes]]) -> Headers:
    """Response headers with ``Domain`` removed from every ``Set-Cookie``.

    Values from a parsed response stay valid header values (the router skips
    their second check: ``Destination.response_headers_checked``)."""
    return [
        (name, without_cookie_domain(value) if name == b"set-cookie" else value)
        for name, value in headers
    ]
