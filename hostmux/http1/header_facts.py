"""What a request's headers say, gathered in one pass as they are parsed (pure).

The checks (``checks``), the WebSocket upgrade test and the hop-by-hop filter
(``headers``) read a request's ``HeaderFacts`` instead of each walking its
header list again. ``Http1Connection`` collects them as llhttp hands it each
header and puts them on the ``Request`` event;
``facts_of`` scans a request built by hand (tests, a gateway) once.

The names below are also the hop-by-hop filter's: a header the filter may
remove marks the facts ``droppable``, so a request with none of them is
passed on without a second look at each header.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import TYPE_CHECKING, Final, NamedTuple

if TYPE_CHECKING:
    from hostmux.http1.events import Request

# RFC 9110 7.6.1, plus the proxy and HTTP/2 ones that describe one hop too.
HOP_BY_HOP: Final = frozenset(
    {
        b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
        b"upgrade", b"proxy-authenticate", b"proxy-authorization", b"http2-settings",
    }
)  # fmt: skip

# Set by the router; never passed on from the client.
FORWARDING: Final = frozenset(
    {
        b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"x-forwarded-port",
        b"x-forwarded-server", b"x-forwarded-prefix", b"forwarded", b"x-real-ip",
        b"x-request-id", b"x-client-ip", b"true-client-ip", b"client-ip",
    }
)  # fmt: skip

# Identity the auth helper in the pod sets after the router (``X-Hostmux-User``):
# a browser's copy must not reach an app that trusts it, helper or not.
IDENTITY: Final = frozenset({b"x-hostmux-user"})

# A client certificate the router verified (``router.client_certs``): RFC 9440's and ours.
CLIENT_CERT: Final = frozenset(
    {b"client-cert", b"client-cert-chain", b"x-client-cert-subject", b"x-client-cert-fingerprint"}
)

NOT_FROM_BROWSERS: Final = FORWARDING | IDENTITY | CLIENT_CERT
# Every header of this prefix is the router's (the router link's, the auth helper's):
# a browser's is dropped, so nothing downstream can mistake it for the router's word.
HOSTMUX_PREFIX: Final = b"x-hostmux-"

# What a parsed response's headers leave the hop-by-hop filter to do (noted by the
# parser as it lists them): nothing; drop its ``Connection`` headers, which name
# only keep-alive or close; or the whole filter (also: a response built by hand).
HOP_NONE: Final = 0
HOP_CONNECTION: Final = 1
HOP_ANY: Final = 2

# What each name means to the facts (one dict lookup per header finds it).
HOST: Final = 0
CONTENT_LENGTH: Final = 1
TRANSFER_ENCODING: Final = 2
ACCEPT: Final = 3
CONNECTION: Final = 4
UPGRADE: Final = 5
DROPPED: Final = 6
NAME_KINDS: Final = {
    b"host": HOST, b"content-length": CONTENT_LENGTH,
    b"transfer-encoding": TRANSFER_ENCODING, b"accept": ACCEPT,
    **dict.fromkeys(HOP_BY_HOP | NOT_FROM_BROWSERS, DROPPED),
    b"connection": CONNECTION, b"upgrade": UPGRADE,
}  # fmt: skip


class HeaderFacts(NamedTuple):
    """What the checks, the upgrade test and the hop-by-hop filter need from a
    request's headers (names lower case, values trimmed, as in events).

    A tuple: built once per request, at the cost of one tuple.
    """

    host: bytes | None  # the first Host value
    content_length: bytes | None  # the Content-Length value (llhttp refuses two)
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


NO_TOKENS: Final[frozenset[bytes]] = frozenset()


def connection_tokens(value: bytes) -> Iterable[bytes]:
    """The tokens of one Connection value, lower case (empty list items skipped)."""
    return (t.strip().lower() for t in value.split(b",") if t.strip())


# Browsers send the same few Connection values ("keep-alive", "Upgrade"): their
# tokens are split once. Bounded: a value is at most a head long, 256 of them.
@functools.lru_cache(maxsize=256)
def token_set(value: bytes) -> frozenset[bytes]:
    """The tokens of a Connection value (several joined with ","), lower case."""
    return frozenset(connection_tokens(value))


def upgrade_tuple(values: list[bytes]) -> tuple[bytes, ...]:
    """Each Upgrade value, stripped, lower case."""
    return tuple(value.strip().lower() for value in values)


def assembled_facts(
    host: bytes | None,
    content_length: bytes | None,
    transfer_encoding: bool,
    accept: bytes | None,
    connection_values: list[bytes] | None,
    upgrade_values: list[bytes] | None,
    size: int,
    droppable: bool,
) -> HeaderFacts:
    """The facts from what a pass collected (Connection and Upgrade values as sent)."""
    tokens = NO_TOKENS
    if connection_values is not None:
        tokens = token_set(b",".join(connection_values))
    upgrade = () if upgrade_values is None else upgrade_tuple(upgrade_values)
    return HeaderFacts(
        host, content_length, transfer_encoding, accept, tokens, upgrade, size, droppable
    )


def header_facts(headers: Iterable[tuple[bytes, bytes]]) -> HeaderFacts:
    """The facts of ``headers`` (names lower case, values trimmed), in one pass.

    The parser collects the same as llhttp hands it each header
    (``LlhttpParsing.on_header``); ``tests/unit/test_header_facts.py`` holds
    the two to the same answers.
    """
    host = content_length = accept = None
    transfer_encoding = droppable = False
    connection: list[bytes] | None = None
    upgrade: list[bytes] | None = None
    size = 0
    for name, value in headers:
        size += len(name) + len(value) + 4
        kind = NAME_KINDS.get(name)
        if kind is None:
            # Some servers fold "_" into "-"; x-hostmux-* is the router's own.
            droppable = droppable or b"_" in name or name.startswith(HOSTMUX_PREFIX)
        elif kind == HOST:
            host = value if host is None else host
        elif kind == CONTENT_LENGTH:
            content_length = value if content_length is None else content_length
        elif kind == TRANSFER_ENCODING:
            transfer_encoding = True
        elif kind == ACCEPT:
            accept = value if accept is None else accept
        else:
            droppable = True
            if kind == CONNECTION:
                connection = [*(connection or ()), value]
            elif kind == UPGRADE:
                upgrade = [*(upgrade or ()), value]
    return assembled_facts(
        host, content_length, transfer_encoding, accept, connection, upgrade, size, droppable
    )


def facts_of(request: Request) -> HeaderFacts:
    """``request``'s header facts: the parser's, or scanned now for one built by hand."""
    facts = request.facts
    return header_facts(request.headers) if facts is None else facts
