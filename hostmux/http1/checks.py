"""Pure checks on a parsed request before it is routed: size, framing, Host, target form."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Final
from urllib.parse import urlsplit

from hostmux.http1.events import ProtocolError, Request
from hostmux.http1.header_facts import HeaderFacts, facts_of
from hostmux.names import normalise_host


def head_size(request: Request, facts: HeaderFacts | None = None) -> int:
    """About the size of the request head on the wire (the parser only bounds partial heads)."""
    if facts is None:
        facts = facts_of(request)
    return len(request.method) + len(request.target) + 12 + facts.size


# The largest body length any peer can represent (nginx: off_t); larger is a parse error.
_MAX_CONTENT_LENGTH: Final = 2**63 - 1


def framing_refusal(request: Request, facts: HeaderFacts | None = None) -> tuple[int, str] | None:
    """(status, reason) if the parser accepted ``request`` but its framing is still in doubt.

    llhttp accepts chunked in HTTP/1.0, HTTP/2.0 request lines and a
    Content-Length up to 2**64-1; RFC 9112 6.1/6.3 call such messages faulty
    (or no peer can represent them): we refuse them.

    Not checked again here: what llhttp refuses itself (pinned to the
    httptools version in use by ``tests/unit/test_llhttp_refusals.py``):
    Content-Length with Transfer-Encoding, and control characters in a
    header value (RFC 9110 5.5).
    """
    if request.http_version not in (b"1.0", b"1.1"):
        return 505, "only HTTP/1.0 and HTTP/1.1 are supported here"
    if facts is None:
        facts = facts_of(request)
    if facts.transfer_encoding and request.http_version == b"1.0":
        return 400, "HTTP/1.0 requests cannot use Transfer-Encoding"
    length = facts.content_length
    if length is not None and int(length) > _MAX_CONTENT_LENGTH:
        return 400, "the Content-Length is out of range"
    return None


def header(fields: Sequence[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """The first value of header ``name`` (lower case) in ``fields``."""
    for key, value in fields:
        if key == name:
            return bytes(value)
    return None


def origin_form(target: bytes, host: str) -> bytes | None:
    """The origin-form of an absolute-form target, if it names ``host``."""
    try:
        parts = urlsplit(target.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return None
    if parts.scheme not in ("http", "https") or parts.username or parts.password:
        return None
    if normalise_host(parts.netloc) != host:
        return None
    path = parts.path or "/"
    return (path + ("?" + parts.query if parts.query else "")).encode("ascii")


def parse_error_status(exc: ProtocolError) -> tuple[int, str]:
    """Status and reason for a request the parser refused (its hint is the status)."""
    status = exc.error_status_hint
    if status == 414:
        return 414, "the request target is too long"
    if status == 431:
        return 431, "the request head is too large"
    return status, "the request could not be parsed as HTTP/1.1"


def reason_phrase(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


@dataclass(slots=True, init=False)
class CheckedRequest:
    """What the checks made of a request: a refusal, or its Host and origin-form target.

    (Made per request and never changed: not frozen, whose ``__init__`` costs 3x; its
    ``__init__`` written out, so that the compiled core compiles it, as ``events``'.)"""

    refusal: tuple[int, str] | None  # (status, reason shown to the user)
    host: str = ""  # normalised Host ("" until known)
    host_value: bytes = b""  # Host as the browser sent it
    target: bytes = b""  # origin-form

    def __init__(
        self,
        refusal: tuple[int, str] | None,
        host: str = "",
        host_value: bytes = b"",
        target: bytes = b"",
    ) -> None:
        self.refusal = refusal
        self.host = host
        self.host_value = host_value
        self.target = target


# Browsers send the same few Host values again and again: each is normalised once.
# Only values that could be a host name are kept (bounded: entries and their size).
_HOST_CACHE_ENTRIES: Final = 1024
_HOST_CACHE_MAX_BYTES: Final = 300  # a DNS name (253) plus a port


@functools.lru_cache(maxsize=_HOST_CACHE_ENTRIES)
def _normalised_short_host(value: bytes) -> str | None:
    return normalise_host(value.decode("latin-1"))


def _normalised_host(value: bytes) -> str | None:
    if len(value) > _HOST_CACHE_MAX_BYTES:
        return normalise_host(value.decode("latin-1"))
    return _normalised_short_host(value)


def check_request(
    request: Request, *, max_target_bytes: int, max_header_bytes: int
) -> CheckedRequest:
    """Everything decided about a request from its head alone, in refusal order.

    The target's length is checked again here although the parser refuses a
    longer one (414) with the same limit: llhttp itself has no such limit (the
    parser's callback counts it), and a length compared costs nothing.
    """
    if len(request.target) > max_target_bytes:
        return CheckedRequest((414, "the request target is too long"))
    facts = facts_of(request)
    if head_size(request, facts) > max_header_bytes:
        return CheckedRequest((431, "the request head is too large"))
    if refusal := framing_refusal(request, facts):
        return CheckedRequest(refusal)
    host_value = facts.host
    if host_value is None:
        return CheckedRequest((400, "the request has no Host header"))
    host = _normalised_host(host_value)
    if host is None:
        return CheckedRequest((400, "the Host header is not a valid host name"))
    if request.method == b"CONNECT":
        return CheckedRequest(
            (405, "CONNECT is not supported: this is not a proxy"), host, host_value
        )
    target = request.target
    if target == b"*":
        return CheckedRequest(
            (400, "asterisk-form request targets are not supported"), host, host_value
        )
    if not target.startswith(b"/"):
        in_origin_form = origin_form(target, host)
        if in_origin_form is None:
            return CheckedRequest(
                (400, "the absolute request target does not match Host"), host, host_value
            )
        target = in_origin_form
    return CheckedRequest(None, host, host_value, target)
