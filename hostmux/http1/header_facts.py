"""What a request's headers say, gathered in one pass as they are parsed (pure).

The checks (``checks``), the WebSocket upgrade test and the hop-by-hop filter
(``headers``) read a request's ``HeaderFacts`` instead of each walking its
header list again. ``Http1Connection`` feeds each header to a ``HeaderScan``
as llhttp hands it over and puts the facts on the ``Request`` event;
``facts_of`` scans a request built by hand (tests, a gateway) once.

The names below are also the hop-by-hop filter's: a header the filter may
remove marks the facts ``droppable``, so a request with none of them is
passed on without a second look at each header.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from hostmux.http1.events import Request

# RFC 9110 7.6.1, plus the proxy and HTTP/2 ones that describe one hop too.
HOP_BY_HOP = frozenset(
    {
        b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
        b"upgrade", b"proxy-authenticate", b"proxy-authorization", b"http2-settings",
    }
)  # fmt: skip

# Set by the router; never passed on from the client.
FORWARDING = frozenset(
    {
        b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"x-forwarded-port",
        b"x-forwarded-server", b"x-forwarded-prefix", b"forwarded", b"x-real-ip",
        b"x-request-id", b"x-client-ip", b"true-client-ip", b"client-ip",
    }
)  # fmt: skip

# Identity the auth helper in the pod sets after the router (``X-Hostmux-User``):
# a browser's copy must not reach an app that trusts it, helper or not.
IDENTITY = frozenset({b"x-hostmux-user"})

NOT_FROM_BROWSERS = FORWARDING | IDENTITY

# What each name means to the scan (one dict lookup per header finds it).
_HOST, _CONTENT_LENGTH, _TRANSFER_ENCODING, _ACCEPT, _CONNECTION, _UPGRADE, _DROPPED = range(7)
_KIND = {
    b"host": _HOST, b"content-length": _CONTENT_LENGTH,
    b"transfer-encoding": _TRANSFER_ENCODING, b"accept": _ACCEPT,
    **dict.fromkeys(HOP_BY_HOP | NOT_FROM_BROWSERS, _DROPPED),
    b"connection": _CONNECTION, b"upgrade": _UPGRADE,
}  # fmt: skip


class HeaderFacts(NamedTuple):
    """What the checks, the upgrade test and the hop-by-hop filter need from a
    request's headers (names lower case, values trimmed, as in events).

    A tuple: built once per request, at the cost of one tuple.
    """

    host: bytes | None  # the first Host value
    content_length: bytes | None  # the first Content-Length value
    transfer_encoding: bool  # any Transfer-Encoding
    accept: bytes | None  # the first Accept value (error pages in HTML or text)
    connection: frozenset[bytes]  # the tokens of every Connection header, lower case
    upgrade: tuple[bytes, ...]  # each Upgrade value, stripped, lower case
    size: int  # the fields' bytes on the wire: sum(len(name) + len(value) + 4)
    # A header the hop-by-hop filter may remove from a browser's request
    # (hop-by-hop, forwarding, identity, or a name spelt with "_").
    droppable: bool

    @property
    def websocket_upgrade(self) -> bool:
        """The headers ask for a WebSocket upgrade, and nothing else."""
        return b"upgrade" in self.connection and self.upgrade == (b"websocket",)


class HeaderScan:
    """Collects ``HeaderFacts`` one header at a time (``add``), in one pass."""

    __slots__ = (
        "_accept", "_connection", "_content_length", "_droppable", "_host",
        "_size", "_transfer_encoding", "_upgrade",
    )  # fmt: skip

    def __init__(self) -> None:
        self._host: bytes | None = None
        self._content_length: bytes | None = None
        self._transfer_encoding = False
        self._accept: bytes | None = None
        self._connection: set[bytes] | None = None  # most requests have none
        self._upgrade: list[bytes] | None = None
        self._size = 0
        self._droppable = False

    def add(self, name: bytes, value: bytes) -> None:
        """One header: ``name`` lower case, ``value`` without surrounding whitespace."""
        self._size += len(name) + len(value) + 4
        kind = _KIND.get(name)
        if kind is None:
            if b"_" in name:  # some servers fold "_" into "-": the filter decides
                self._droppable = True
        elif kind == _HOST:
            if self._host is None:
                self._host = value
        elif kind == _CONTENT_LENGTH:
            if self._content_length is None:
                self._content_length = value
        elif kind == _TRANSFER_ENCODING:
            self._transfer_encoding = True
        elif kind == _ACCEPT:
            if self._accept is None:
                self._accept = value
        else:
            self._droppable = True
            if kind == _CONNECTION:
                if self._connection is None:
                    self._connection = set()
                self._connection.update(connection_tokens(value))
            elif kind == _UPGRADE:
                if self._upgrade is None:
                    self._upgrade = []
                self._upgrade.append(value.strip().lower())

    def facts(self) -> HeaderFacts:
        return HeaderFacts(
            self._host,
            self._content_length,
            self._transfer_encoding,
            self._accept,
            _NO_TOKENS if self._connection is None else frozenset(self._connection),
            () if self._upgrade is None else tuple(self._upgrade),
            self._size,
            self._droppable,
        )


_NO_TOKENS: frozenset[bytes] = frozenset()


def connection_tokens(value: bytes) -> Iterable[bytes]:
    """The tokens of one Connection value, lower case (empty list items skipped)."""
    return (t.strip().lower() for t in value.split(b",") if t.strip())


def header_facts(headers: Iterable[tuple[bytes, bytes]]) -> HeaderFacts:
    """The facts of ``headers`` (names lower case, values trimmed), in one pass."""
    scan = HeaderScan()
    for name, value in headers:
        scan.add(name, value)
    return scan.facts()


def facts_of(request: Request) -> HeaderFacts:
    """``request``'s header facts: the parser's, or scanned now for one built by hand."""
    facts = request.facts
    return header_facts(request.headers) if facts is None else facts
