"""Small pure checks on a parsed request: head size, target form, header lookup, reasons."""

from __future__ import annotations

from collections.abc import Sequence
from http import HTTPStatus
from urllib.parse import urlsplit

import h11

from ._names import normalise_host


def head_size(request: h11.Request, fields: Sequence[tuple[bytes, bytes]]) -> int:
    """About the size of the request head on the wire (h11 only bounds partial heads).

    ``fields`` are the request's headers (``list(request.headers)``, listed once).
    """
    size = len(request.method) + len(request.target) + 12
    return size + sum(len(name) + len(value) + 4 for name, value in fields)


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


def parse_error_text(exc: h11.RemoteProtocolError) -> str:
    if exc.error_status_hint == 431:
        return "the request head is too large"
    return "the request could not be parsed as HTTP/1.1"


def reason_phrase(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""
