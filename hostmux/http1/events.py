"""The vocabulary of ``hostmux.http1``: events, states, errors, and the header check.

Events are small records that are never validated when built: headers
that llhttp parsed (or that the router derived from parsed ones and constants)
are sound already. They are never changed once built; those built per request
(``Request``, ``Response``, ``InformationalResponse``, ``Data``) are plain
slotted dataclasses rather than frozen ones, whose ``__init__`` (one
``object.__setattr__`` call per field) measured 3-4x slower: four of them per
relayed request cost more than parsing the request. Headers from anywhere else (status pages, a
``Destination``'s filters) go through ``checked_headers`` first.

Header names in events are lower case; values have no surrounding whitespace.

Exceptions::

    ProtocolError                 error_status_hint: the status to answer with
    ├── RemoteProtocolError       the peer sent something that is not HTTP/1.1
    └── LocalProtocolError        we were about to send something that is not
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

from hostmux.http1.header_facts import HOP_ANY, HeaderFacts

Headers = list[tuple[bytes, bytes]]


class ProtocolError(Exception):
    """A message broke HTTP/1.1; ``error_status_hint`` is the status to answer with."""

    def __init__(self, message: str, error_status_hint: int = 400) -> None:
        super().__init__(message)
        self.error_status_hint = error_status_hint


class RemoteProtocolError(ProtocolError):
    """The peer's bytes are not a valid HTTP/1.1 message (or not one we accept)."""


class LocalProtocolError(ProtocolError):
    """What we were asked to send would not be a valid HTTP/1.1 message."""


class Role(enum.Enum):
    CLIENT = "client"  # sends requests, parses responses (the app side)
    SERVER = "server"  # parses requests, sends responses (the browser side)


class State(enum.Enum):
    """One side's place in the current request/response cycle (h11's names).

    Transitions (``connection``; "done" is MUST_CLOSE instead of DONE once either
    message said the connection ends, and start_next_cycle needs both DONE)::

        client (requester)  IDLE --Request--> SEND_BODY --EndOfMessage--> DONE
        server (responder)  IDLE --(their Request)--> SEND_RESPONSE
                            SEND_RESPONSE --1xx--> SEND_RESPONSE
                            SEND_RESPONSE --101--> SWITCHED_PROTOCOL (both sides)
                            IDLE | SEND_RESPONSE --Response--> SEND_BODY
                            SEND_BODY --EndOfMessage--> DONE
        either side's peer  --unparsable--> ERROR; --EOF between messages--> CLOSED
    """

    IDLE = "idle"
    SEND_RESPONSE = "send-response"  # the server owes a response
    SEND_BODY = "send-body"
    DONE = "done"  # this message is complete; the connection may carry another
    MUST_CLOSE = "must-close"  # complete, and the connection ends after this cycle
    CLOSED = "closed"
    SWITCHED_PROTOCOL = "switched-protocol"  # after a 101: bytes, not HTTP
    ERROR = "error"


class Pending(enum.Enum):
    """What ``next_event`` returns when it has no event to give."""

    NEED_DATA = "need-data"  # feed more bytes (``receive_data``)
    PAUSED = "paused"  # the next request waits until this cycle ends


NEED_DATA: Final = Pending.NEED_DATA
PAUSED: Final = Pending.PAUSED


# The events made per message write their ``__init__`` out (``init=False``): the
# one dataclasses generates is Python even in the compiled core, and cost ~0.3 µs
# per event there against ~0.05 µs compiled. Equality and repr stay generated.


@dataclass(slots=True, init=False)
class Request:
    method: bytes
    target: bytes
    headers: Headers
    http_version: bytes = b"1.1"
    # What the headers say, gathered as they were parsed (``header_facts``);
    # None for a request built by hand (``facts_of`` scans it then).
    facts: HeaderFacts | None = field(default=None, compare=False, repr=False)
    # How its body is framed, known by whoever built it (``framing``: (LENGTH or
    # CHUNKED, Content-Length)), its headers closing nothing; None: ``send``
    # works it out from the headers.
    framing: tuple[int, int] | None = field(default=None, compare=False, repr=False)

    def __init__(
        self,
        method: bytes,
        target: bytes,
        headers: Headers,
        http_version: bytes = b"1.1",
        facts: HeaderFacts | None = None,
        framing: tuple[int, int] | None = None,
    ) -> None:
        self.method = method
        self.target = target
        self.headers = headers
        self.http_version = http_version
        self.facts = facts
        self.framing = framing


@dataclass(slots=True, init=False)
class InformationalResponse:
    """A 1xx response (100 Continue, 101 Switching Protocols, 103 Early Hints...)."""

    status_code: int
    headers: Headers
    reason: bytes = b""
    http_version: bytes = b"1.1"

    def __init__(
        self, status_code: int, headers: Headers, reason: bytes = b"", http_version: bytes = b"1.1"
    ) -> None:
        self.status_code = status_code
        self.headers = headers
        self.reason = reason
        self.http_version = http_version


@dataclass(slots=True, init=False)
class Response:
    """A final (2xx-5xx) response head."""

    status_code: int
    headers: Headers
    reason: bytes = b""
    http_version: bytes = b"1.1"
    # What the hop-by-hop filter has to do (``header_facts.HOP_*``), as the parser
    # saw the headers; a response built by hand gets the whole filter.
    hop_by_hop: int = field(default=HOP_ANY, compare=False, repr=False)

    def __init__(
        self,
        status_code: int,
        headers: Headers,
        reason: bytes = b"",
        http_version: bytes = b"1.1",
        hop_by_hop: int = HOP_ANY,
    ) -> None:
        self.status_code = status_code
        self.headers = headers
        self.reason = reason
        self.http_version = http_version
        self.hop_by_hop = hop_by_hop


@dataclass(slots=True, init=False)
class Data:
    data: bytes

    def __init__(self, data: bytes) -> None:
        self.data = data


@dataclass(frozen=True, slots=True)
class EndOfMessage:
    """The end of a message body (trailers are parsed, checked and dropped)."""


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The peer closed its side between messages."""


Event = Request | InformationalResponse | Response | Data | EndOfMessage | ConnectionClosed

# Events are never changed: one of each field-less kind serves every message.
END_OF_MESSAGE: Final = EndOfMessage()
CONNECTION_CLOSED: Final = ConnectionClosed()

# RFC 9110 5.6.2 token; field values are visible ASCII, obs-text, SP and HTAB inside.
_TOKEN: Final = re.compile(rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+")
_FIELD_VALUE: Final = re.compile(
    rb"(?:[\x21-\x7e\x80-\xff](?:[ \t\x21-\x7e\x80-\xff]*[\x21-\x7e\x80-\xff])?)?"
)


def checked_headers(headers: Iterable[tuple[bytes, bytes]]) -> Headers:
    """``headers`` with lower-case names, if each name is a token and each value
    has no control characters (no CR, LF or NUL: no header injection) and no
    surrounding whitespace; else LocalProtocolError.

    For headers not parsed from a peer: status pages, a ``Destination``'s filters.
    """
    checked: Headers = []
    for name, value in headers:
        if _TOKEN.fullmatch(name) is None:
            raise LocalProtocolError(f"illegal header name {name!r}")
        if _FIELD_VALUE.fullmatch(value) is None:
            raise LocalProtocolError(f"illegal header value {value!r}")
        checked.append((name.lower(), value))
    return checked
