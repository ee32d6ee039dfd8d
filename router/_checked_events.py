"""h11 events the relay sends, built without re-checking what h11 already checked.

h11 checks every header of an event it is handed against the HTTP grammar (two
regular expressions each), which measured ~6% of a small request. Headers h11
parsed itself, and the router's own built from such values and constants, need
no second check: these build events with h11's own flag for "already checked"
(``_parsed=True``, how its parser builds them). Headers from anywhere else (a
``Destination``'s filters, error pages) go through the full check: build those
events with ``h11.Request`` / ``h11.Response`` as usual.
"""

from __future__ import annotations

import h11

from ._headers import Headers

# The end of a message, without trailers (the app's are not passed on). Events
# are immutable, so one serves every message; building one costs a header check.
END_OF_MESSAGE = h11.EndOfMessage()


def request_of_checked_headers(method: bytes, target: bytes, headers: Headers) -> h11.Request:
    """An HTTP/1.1 request from a parsed request's method, its (checked) target and headers."""
    return h11.Request(
        method=method, target=target, headers=headers, http_version=b"1.1", _parsed=True
    )


def response_of_checked_headers(parsed: h11.Response, headers: Headers) -> h11.Response:
    """A response like ``parsed`` (from h11's parser) with ``headers`` (a subset of its own)."""
    return h11.Response(
        status_code=parsed.status_code, headers=headers, reason=parsed.reason,
        http_version=b"1.1", _parsed=True,
    )  # fmt: skip
