"""What ``Http1Connection`` does with the bytes fed to it: llhttp and its callbacks.

``LlhttpParsing`` feeds llhttp (through httptools) and turns its callbacks
into events queued for ``Http1Connection.next_event``; the rules it enforces
are listed in ``connection``'s docstring (framing, versions, limits,
pipelining, upgrades, responses). A request's headers are also gathered into
its ``HeaderFacts`` here, in the same pass that lists them.
"""

from __future__ import annotations

from typing import Final

from httptools import HttpParserError, HttpParserUpgrade, HttpRequestParser, HttpResponseParser

from hostmux.http1.events import (
    END_OF_MESSAGE,
    Data,
    Event,
    Headers,
    InformationalResponse,
    RemoteProtocolError,
    Request,
    Response,
)
from hostmux.http1.header_facts import (
    ACCEPT,
    CONNECTION,
    CONTENT_LENGTH,
    HOP_ANY,
    HOP_CONNECTION,
    HOP_NONE,
    HOST,
    HOSTMUX_PREFIX,
    NAME_KINDS,
    NO_TOKENS,
    TRANSFER_ENCODING,
    UPGRADE,
    HeaderFacts,
    token_set,
    upgrade_tuple,
)

_VERSIONS: Final = {"1.1": b"1.1", "1.0": b"1.0", "2.0": b"2.0"}
# llhttp's reasons for a transfer coding it does not read as chunked: h11 says 501.
_UNSUPPORTED_CODING: Final = ("Transfer-Encoding` header value", "invalid `Transfer-Encoding`")
_NO_BODY_STATUSES: Final = frozenset({204, 304})  # (and 1xx: llhttp knows)
_OWS: Final = b" \t"
# Connection values that name no other header (the response's filter then drops
# only the Connection headers themselves).
_PLAIN_CONNECTION: Final = frozenset({b"keep-alive", b"close"})
# Empty until the next message begins (``_begin_message`` gives it fresh lists;
# nothing appends to these).
_NO_HEADERS: Final[Headers] = []
_NO_CODINGS: Final[list[bytes]] = []
# Parser modes: llhttp parses what is fed; an upgrade request's Content-Length
# body is read by hand; parsing waits for the next cycle; an error ended it.
MODE_PARSING: Final = 0
MODE_MANUAL_BODY: Final = 1
MODE_PAUSED: Final = 2
MODE_DEAD: Final = 3


class _Stop(Exception):
    """Raised in a callback to stop llhttp at the end of a head (101, HEAD responses)."""


class LlhttpParsing:
    """The parsing half of ``Http1Connection``: llhttp, its callbacks, the queued events."""

    __slots__ = (
        "_accept",
        "_body_in_feed",
        "_connection",
        "_content_length",
        "_data",
        "_droppable",
        "_events",
        "_failure",
        "_head_bytes",
        "_headers",
        "_heads_in_feed",
        "_hop",
        "_host",
        "_hosts",
        "_in_head",
        "_in_message",
        "_informational",
        "_line_carried",
        "_line_carry",
        "_line_from",
        "_manual_left",
        "_max_head",
        "_max_target",
        "_mode",
        "_parser",
        "_progress",
        "_raw",
        "_reason",
        "_request_method",
        "_server",
        "_size",
        "_skip_end",
        "_stalled",
        "_stopping",
        "_tail",
        "_te",
        "_until_close",
        "_upgrade_values",
        "_url",
    )  # fmt: skip

    def __init__(self, *, server: bool, max_head_bytes: int, max_target_bytes: int) -> None:
        self._server = server
        self._max_head = max_head_bytes
        self._max_target = max_target_bytes
        # What was parsed, in order; a head's (keep-alive, upgrade requested) goes
        # just before it. A list, not a deque: an idle connection holds it empty,
        # 56 bytes against a deque's 760, and it rarely holds more than a few.
        self._events: list[Event | RemoteProtocolError | tuple[bool, bool]] = []
        self._parser: HttpRequestParser | HttpResponseParser = self._new_parser()
        self._mode = MODE_PARSING
        self._raw = b""  # bytes not parsed (after an upgrade or a stop), or those of an error
        self._failure: RemoteProtocolError | None = None  # raised by a callback
        self._stopping = False
        self._data = b""  # the bytes being fed (for the request-line check)
        self._line_from = 0
        # The reads an unfinished request head came in, up to the one where it
        # began plus enough to hold its request line (``_line_carried`` bytes).
        self._line_carry: list[bytes] = []
        self._line_carried = 0
        self._tail = b""  # the last bytes of an unfinished response head
        self._stalled = 0  # bytes fed mid-body without any progress (trailer floods)
        self._progress = False
        self._heads_in_feed = 0
        self._body_in_feed = False
        self._manual_left = 0
        self._skip_end = False
        self._until_close = False
        self._informational = False
        # The message being parsed (reset by on_message_begin).
        self._url = self._reason = b""
        self._headers: Headers = []
        self._head_bytes = 0
        self._hosts = 0
        self._te: list[bytes] = []
        self._content_length: bytes | None = None
        # A request's header facts, collected as llhttp hands over each header.
        self._host: bytes | None = None
        self._accept: bytes | None = None
        self._connection: bytes | None = None  # every value, joined
        self._upgrade_values: list[bytes] | None = None
        self._size = 0
        self._droppable = False
        self._hop = HOP_NONE  # a response's: what the hop-by-hop filter has to do
        self._in_message = False
        self._in_head = False
        self._request_method: bytes | None = None  # of the current cycle

    # -- parsing -------------------------------------------------------------

    def _new_parser(self) -> HttpRequestParser | HttpResponseParser:
        if self._server:
            return HttpRequestParser(self)
        return HttpResponseParser(_ResponseCallbacks(self))

    def _feed(self, data: bytes) -> None:
        continuing_head = self._in_head
        if continuing_head:
            self._head_bytes += len(data)
        self._progress = self._body_in_feed = False
        self._heads_in_feed = 0
        self._data = data
        self._line_from = 0
        try:
            self._parser.feed_data(data)
        except HttpParserUpgrade as upgrade:
            self._after_upgrade(data[upgrade.args[0] :])
            return
        except HttpParserError as exc:
            if self._stopping:
                self._after_stop(data, continuing_head)
            else:
                self._fail_feed(data, self._failure or _remote_error(str(exc)))
            return
        finally:
            self._data = b""
        if self._in_head:
            if self._head_bytes < 0:  # it began in this read: at least what was parsed of it
                self._head_bytes = 16 + len(self._url) + len(self._reason)
                self._head_bytes += sum(len(n) + len(v) + 4 for n, v in self._headers)
            if self._head_bytes > self._max_head:
                self._fail_feed(data, RemoteProtocolError("the head is too large", 431))
            elif self._server:
                if not self._line_carry or self._line_carried < self._max_target + 64:
                    self._line_carried += len(data) if self._line_carry else 0
                    self._line_carry.append(data)
            else:
                self._tail = (self._tail + data)[-3:]
        elif self._in_message and not self._progress:
            # Mid-body and nothing came of it: a chunk extension or trailer that never ends.
            self._stalled += len(data)
            if self._stalled > self._max_head:
                self._fail_feed(data, RemoteProtocolError("no progress in the body", 400))
        else:
            self._stalled = 0

    def _fail_feed(self, data: bytes, failure: RemoteProtocolError) -> None:
        self._events.append(failure)
        self._mode = MODE_DEAD
        self._raw = data
        self._in_message = self._until_close = False

    def _after_upgrade(self, rest: bytes) -> None:
        """llhttp stopped after a request asking for an upgrade: parsing pauses."""
        self._in_message = self._in_head = False
        self._mode = MODE_PAUSED
        if self._manual_left:
            self._mode = MODE_MANUAL_BODY
            self._in_message = True
            self._feed_manual_body(rest)
        else:
            self._raw = rest

    def _feed_manual_body(self, data: bytes) -> None:
        """The Content-Length body of an upgrade request (llhttp skips those)."""
        body = data[: self._manual_left]
        self._manual_left -= len(body)
        if body:
            self._events.append(Data(body))
        if not self._manual_left:
            self._events.append(END_OF_MESSAGE)
            self._in_message = self._skip_end = False
            self._mode = MODE_PAUSED
            self._raw = data[len(body) :]

    def _after_stop(self, data: bytes, continuing_head: bool) -> None:
        """A callback stopped llhttp at the end of a head: the rest is not parsed."""
        self._stopping = False
        self._in_message = self._in_head = False
        self._mode = MODE_PAUSED
        carry = self._tail if continuing_head else b""
        if self._body_in_feed:  # the end of the head cannot be told from a body's bytes
            self._fail_feed(data, RemoteProtocolError("a response after a body in one read"))
            return
        buffer = carry + data
        at = 0
        for head_number in range(self._heads_in_feed):
            if head_number or not continuing_head:
                # llhttp skips empty lines before a message: they are not its end.
                while buffer[at : at + 1] in (b"\r", b"\n"):
                    at += 1
            at = buffer.find(b"\r\n\r\n", at) + 4
        self._raw = buffer[at:]

    def _begin_message(self) -> None:
        self._url = self._reason = b""
        self._headers = []
        self._head_bytes = -1  # not counted yet (see _feed)
        self._hosts = 0
        self._te = []
        self._content_length = None
        self._host = self._accept = None
        self._connection = self._upgrade_values = None
        self._size = 0
        self._droppable = False
        self._hop = HOP_NONE

    def _fail(self, message: str, status: int = 400) -> RemoteProtocolError:
        """The error for a callback to raise (llhttp then reports a callback error)."""
        self._failure = RemoteProtocolError(message, status)
        return self._failure

    # llhttp's callbacks (httptools calls them by these names).

    def on_message_begin(self) -> None:
        self._begin_message()
        self._in_message = self._in_head = True

    def on_url(self, piece: bytes) -> None:
        url = self._url + piece if self._url else piece
        if len(url) > self._max_target:
            raise self._fail("the request target is too long", 414)
        self._url = url

    def on_status(self, piece: bytes) -> None:
        self._reason += piece

    def on_response_header(self, name: bytes, value: bytes) -> None:
        """A response's header: only what its framing needs is noted (no facts)."""
        if not self._in_head:
            return  # a trailer: llhttp checked its syntax; it is not passed on
        name = name.lower()
        trimmed = value.rstrip(_OWS)  # llhttp keeps trailing whitespace
        self._headers.append((name, trimmed))
        kind = NAME_KINDS.get(name)
        if kind is None:
            # A "_" spelling may fold into a hop-by-hop name; "close" may be named
            # by a Connection header: the whole filter decides.
            if b"_" in name or name == b"close":
                self._hop = HOP_ANY
        elif kind == TRANSFER_ENCODING:
            self._te.append(value)  # as llhttp read it
        elif kind == CONTENT_LENGTH:
            self._content_length = trimmed
        elif kind == CONNECTION and trimmed.lower() in _PLAIN_CONNECTION:
            if self._hop == HOP_NONE:
                self._hop = HOP_CONNECTION
        elif kind != HOST and kind != ACCEPT:
            self._hop = HOP_ANY  # another hop-by-hop or forwarding name, or Upgrade

    def on_header(self, name: bytes, value: bytes) -> None:
        """A request's header, and what it adds to the request's facts."""
        if not self._in_head:
            return  # a trailer: llhttp checked its syntax; it is not passed on
        name = name.lower()
        trimmed = value.rstrip(_OWS)  # llhttp keeps trailing whitespace
        self._headers.append((name, trimmed))
        self._size += len(name) + len(trimmed) + 4
        kind = NAME_KINDS.get(name)
        if kind is None:
            # Some servers fold "_" into "-": the filter decides; x-hostmux-* is the router's.
            if b"_" in name or name.startswith(HOSTMUX_PREFIX):
                self._droppable = True
        elif kind == HOST:
            self._hosts += 1
            if self._host is None:
                self._host = trimmed
        elif kind == TRANSFER_ENCODING:
            self._te.append(value)  # as llhttp read it
        elif kind == CONTENT_LENGTH:
            self._content_length = trimmed
        elif kind == ACCEPT:
            if self._accept is None:
                self._accept = trimmed
        else:  # the rest is for the hop-by-hop filter
            self._droppable = True
            if kind == CONNECTION:  # several are one comma-separated list (RFC 9110 5.3)
                if self._connection is None:
                    self._connection = trimmed
                else:
                    self._connection += b"," + trimmed
            elif kind == UPGRADE:
                if self._upgrade_values is None:
                    self._upgrade_values = []
                self._upgrade_values.append(trimmed)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._progress = True
        parser = self._parser
        version = _VERSIONS.get(parser.get_http_version())
        if version is None:
            if parser.get_http_version() == "0.9":
                raise self._fail("no HTTP version (HTTP/0.9 is not supported)")
            raise self._fail("only HTTP/1.0 and HTTP/1.1 are supported", 505)
        if self._te and not self._chunked_only():
            raise self._fail("only the chunked transfer coding is supported", 501)
        if isinstance(parser, HttpRequestParser):
            self._request_head(parser, version)
        else:
            self._response_head(parser, version)

    def _chunked_only(self) -> bool:
        # Only spaces around a coding: llhttp does not read "chunked<TAB>" as chunked.
        codings = [c.strip(b" ").lower() for value in self._te for c in value.split(b",")]
        if codings != [b"chunked"]:
            return False
        if self._te != [b"chunked"]:  # h11 passed it on in lower case
            self._headers = [
                (n, b"chunked" if n == b"transfer-encoding" else v) for n, v in self._headers
            ]
        return True

    def _request_head(self, parser: HttpRequestParser, version: bytes) -> None:
        if self._hosts > 1 or (self._hosts == 0 and version == b"1.1"):
            raise self._fail("an HTTP/1.1 request needs exactly one Host header")
        method = parser.get_method()
        line = b"%b %b HTTP/%b\r\n" % (method, self._url, version)
        if self._line_carry:
            # A head that came in several reads: looked for in what was kept of them.
            found = (b"".join(self._line_carry) + self._data).find(line) >= 0
            self._line_carry.clear()
            self._line_carried = 0
        else:
            at = self._data.find(line, self._line_from)
            found = at >= 0
            self._line_from = at + len(line)
        if not found:
            raise self._fail("the request line has extra spaces")
        upgrade = parser.should_upgrade()
        if upgrade and (self._te or self._content_length not in (None, b"0")):
            if self._te:
                raise self._fail("an upgrade request with a chunked body is not supported")
            assert self._content_length is not None
            self._manual_left = int(self._content_length)
            self._skip_end = True  # llhttp skips an upgrade request's body: read by hand
        self._events.append((parser.should_keep_alive(), upgrade))
        connection, upgrades = self._connection, self._upgrade_values
        # (tuple.__new__: HeaderFacts's own __new__ is a Python call more per request)
        facts = tuple.__new__(HeaderFacts, (
            self._host, self._content_length, bool(self._te), self._accept,
            NO_TOKENS if connection is None else token_set(connection),
            () if upgrades is None else upgrade_tuple(upgrades), self._size, self._droppable,
        ))  # fmt: skip
        self._events.append(Request(method, self._url, self._headers, version, facts))

    def _response_head(self, parser: HttpResponseParser, version: bytes) -> None:
        status = parser.get_status_code()
        self._heads_in_feed += 1
        if status < 200:
            self._events.append(InformationalResponse(status, self._headers, self._reason, version))
            if status == 101:  # the rest is another protocol's: stop here
                self._stopping = True
                raise _Stop()
            self._informational = True  # 1xx messages have no end-of-message event
            return
        self._events.append((parser.should_keep_alive(), False))
        self._events.append(Response(status, self._headers, self._reason, version, self._hop))
        if self._request_method == b"HEAD":
            self._events.append(END_OF_MESSAGE)  # whatever it says, no body follows
            self._stopping = True
            raise _Stop()
        self._until_close = (
            not self._te and self._content_length is None and status not in _NO_BODY_STATUSES
        )

    def on_body(self, body: bytes) -> None:
        self._events.append(Data(body))
        self._progress = self._body_in_feed = True

    def on_message_complete(self) -> None:
        # The message's head belongs to its event now: an idle keep-alive
        # connection holds no copy of its last request or response.
        self._headers, self._te, self._url, self._reason = _NO_HEADERS, _NO_CODINGS, b"", b""
        self._progress = True
        self._in_message = self._until_close = False
        if self._informational:
            self._informational = False
        elif self._skip_end:
            pass  # the upgrade request's body is read by hand, then ended
        else:
            self._events.append(END_OF_MESSAGE)


def _remote_error(reason: str) -> RemoteProtocolError:
    """Translate llhttp's complaint (only its reason is exposed) into a status."""
    if any(text in reason for text in _UNSUPPORTED_CODING):
        return RemoteProtocolError(reason, 501)
    if reason == "Invalid HTTP version":
        return RemoteProtocolError(reason, 505)
    return RemoteProtocolError(reason, 400)


class _ResponseCallbacks:
    """llhttp's callbacks for parsing responses: the connection's own, but for
    ``on_header`` (a response has no facts to collect: its headers are many
    and each costs less so). httptools looks them up once, per parser."""

    __slots__ = (
        "on_body", "on_header", "on_headers_complete", "on_message_begin",
        "on_message_complete", "on_status",
    )  # fmt: skip

    def __init__(self, parsing: LlhttpParsing) -> None:
        self.on_message_begin = parsing.on_message_begin
        self.on_status = parsing.on_status
        self.on_header = parsing.on_response_header
        self.on_headers_complete = parsing.on_headers_complete
        self.on_body = parsing.on_body
        self.on_message_complete = parsing.on_message_complete
