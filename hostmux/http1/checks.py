"""Pure checks on a parsed request before it is routed: size, framing, Host, target form."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from http import HTTPStatus
from urllib.parse import urlsplit

from hostmux.http1.events import ProtocolError, Request
from hostmux.names import normalise_host


def head_size(request: Request, fields: Sequence[tuple[bytes, bytes]]) -> int:
    """About the size of the request head on the wire (the parser only bounds partial heads).

    ``fields`` are the request's headers (``request.headers``).
    """
    size = len(request.method) + len(request.target) + 12
    return size + sum(len(name) + len(value) + 4 for name, value in fields)


# The largest body length any peer can represent (nginx: off_t); larger is a parse error.
_MAX_CONTENT_LENGTH = 2**63 - 1

# Control characters RFC 9110 5.5 calls invalid in a field value (HTAB is allowed);
# llhttp refuses them too: this stays as a second line of defence, it costs little.
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


def framing_refusal(
    request: Request, fields: Sequence[tuple[bytes, bytes]]
) -> tuple[int, str] | None:
    """(status, reason) if the parser accepted ``request`` but its framing is still in doubt.

    llhttp accepts chunked in HTTP/1.0, HTTP/2.0 request lines and a
    Content-Length up to 2**64-1; RFC 9112 6.1/6.3 call such messages faulty
    (or no peer can represent them): we refuse them. Content-Length with
    Transfer-Encoding is refused by the parser already, and again here.
    """
    if request.http_version not in (b"1.0", b"1.1"):
        return 505, "only HTTP/1.0 and HTTP/1.1 are supported here"
    names = {name for name, _ in fields}
    if b"transfer-encoding" in names:
        if b"content-length" in names:
            return 400, "the request has both Content-Length and Transfer-Encoding"
        if request.http_version == b"1.0":
            return 400, "HTTP/1.0 requests cannot use Transfer-Encoding"
    length = header(fields, b"content-length")
    if length is not None and int(length) > _MAX_CONTENT_LENGTH:
        return 400, "the Content-Length is out of range"
    if any(_CONTROL.search(value) for _, value in fields):
        return 400, "a header value contains control characters"
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


@dataclass(frozen=True, slots=True)
class CheckedRequest:
    """What the checks made of a request: a refusal, or its Host and origin-form target."""

    refusal: tuple[int, str] | None  # (status, reason shown to the user)
    host: str = ""  # normalised Host ("" until known)
    host_value: bytes = b""  # Host as the browser sent it
    target: bytes = b""  # origin-form


def check_request(
    request: Request,
    fields: Sequence[tuple[bytes, bytes]],
    *,
    max_target_bytes: int,
    max_header_bytes: int,
) -> CheckedRequest:
    """Everything decided about a request from its head alone, in refusal order.

    ``fields`` are its headers (``request.headers``).
    """
    if len(request.target) > max_target_bytes:
        return CheckedRequest((414, "the request target is too long"))
    if head_size(request, fields) > max_header_bytes:
        return CheckedRequest((431, "the request head is too large"))
    if refusal := framing_refusal(request, fields):
        return CheckedRequest(refusal)
    host_value = header(fields, b"host")
    if host_value is None:
        return CheckedRequest((400, "the request has no Host header"))
    host = normalise_host(host_value.decode("latin-1"))
    if host is None:
        return CheckedRequest((400, "the Host header is not a valid host name"))

    def refused(status: int, reason: str) -> CheckedRequest:
        return CheckedRequest((status, reason), host, host_value)

    if request.method == b"CONNECT":
        return refused(405, "CONNECT is not supported: this is not a proxy")
    target = request.target
    if target == b"*":
        return refused(400, "asterisk-form request targets are not supported")
    if not target.startswith(b"/"):
        in_origin_form = origin_form(target, host)
        if in_origin_form is None:
            return refused(400, "the absolute request target does not match Host")
        target = in_origin_form
    return CheckedRequest(None, host, host_value, target)
