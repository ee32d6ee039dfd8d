"""Sans-IO HTTP/1.1 connections on llhttp (via httptools): the relay's hot path.

One class, ``Http1Connection``, in either role: as the SERVER (the browser's
side) it parses requests and serialises responses, as the CLIENT (the app's
side) it serialises requests and parses responses. Its API is the part of h11's
``Connection`` the relay uses: ``receive_data``, ``next_event``, ``send``,
``our_state`` / ``their_state``, ``start_next_cycle`` and ``trailing_data``.
The events, states and errors are in ``_http1_events``, the framing of what
is sent in ``_http1_framing``.

Rules it enforces (llhttp checks the grammar strictly; no lenient flag is set):

1. Framing: Content-Length or chunked (trailers are checked, then dropped); a
   request with neither has no body. Content-Length with Transfer-Encoding, a
   repeated Content-Length, bad chunk sizes, obs-fold, bare CR or LF, control
   characters, and whitespace in or around header names are 400
   (RemoteProtocolError); a Transfer-Encoding other than ``chunked`` is 501.
2. Versions: HTTP/1.0 and 1.1 (2.0 is parsed for the relay to refuse with
   505; other versions are 505 here, a request line without one 400). An
   HTTP/1.1 request has exactly one Host (else 400). The request line is
   ``method SP target SP version``: the runs of spaces llhttp tolerates are 400.
3. Limits: a request head still unfinished after ``max_head_bytes`` is 431, a
   target over ``max_target_bytes`` 414. Bytes are counted as they are fed:
   nothing is buffered beyond the limit plus one read.
4. Pipelining: what is fed is parsed at once; the events are handed out one
   request at a time (``PAUSED`` until the cycle ends), and an error in a later
   request is raised only once that request is reached.
5. Keep-alive: ``Connection: close`` on either message, an HTTP/1.0 request
   without ``keep-alive``, or a body that ends at EOF make both sides
   MUST_CLOSE once the cycle is done.
6. Upgrades: parsing pauses after a request asking for one (Connection: upgrade
   and Upgrade, or CONNECT). A 101 sent back switches protocols, and the bytes
   after the request are ``trailing_data``; any other response resumes HTTP at
   the next cycle. (An upgrade request with a chunked body is 400.)
7. Responses: 1xx, 204 and 304 responses, and responses to HEAD, have no
   body; one with neither Content-Length nor chunked ends at EOF. ``send``
   frames what it sends as h11 does (``_http1_framing``).
8. ``send`` refuses (LocalProtocolError) an event out of turn, a body where
   none is allowed, and more or less data than Content-Length said. It does
   not check header syntax: build headers from elsewhere with ``checked_headers``.
"""

from __future__ import annotations

from collections import deque

from httptools import HttpParserError, HttpParserUpgrade, HttpRequestParser, HttpResponseParser

from hostmux.http1.events import (
    CONNECTION_CLOSED,
    END_OF_MESSAGE,
    NEED_DATA,
    PAUSED,
    Data,
    EndOfMessage,
    Event,
    Headers,
    InformationalResponse,
    LocalProtocolError,
    Pending,
    RemoteProtocolError,
    Request,
    Response,
    Role,
    State,
)
from hostmux.http1.framing import (
    CHUNKED,
    CL,
    HOST,
    LENGTH,
    SPECIAL,
    TE,
    head,
    request_head,
    response_head,
)
from hostmux.http1.header_facts import HeaderScan

# h11's default for an unfinished head; the relay sets its own for browsers.
DEFAULT_MAX_HEAD_BYTES = 16 * 1024

_VERSIONS = {"1.1": b"1.1", "1.0": b"1.0", "2.0": b"2.0"}
# llhttp's reasons for a transfer coding it does not read as chunked: h11 says 501.
_UNSUPPORTED_CODING = ("Transfer-Encoding` header value", "invalid `Transfer-Encoding`")
_NO_BODY_STATUSES = frozenset({204, 304})  # (and 1xx: llhttp knows)
# States, looked up often (module globals are quicker than enum attributes).
_DONE, _MUST_CLOSE, _SWITCHED, _ERROR = (
    State.DONE, State.MUST_CLOSE, State.SWITCHED_PROTOCOL, State.ERROR
)  # fmt: skip
_OWS = b" \t"
# Empty until the next message begins (``_begin_message`` gives it fresh lists;
# nothing appends to these).
_NO_HEADERS: Headers = []
_NO_CODINGS: list[bytes] = []
_IDLE_SCAN = HeaderScan()  # nothing is added to it: replaced when a request begins
# Parser modes.
_PARSING, _MANUAL_BODY, _PAUSED, _DEAD = range(4)


class _Stop(Exception):
    """Raised in a callback to stop llhttp at the end of a head (101, HEAD responses)."""


class Http1Connection:
    """One HTTP/1.1 connection's protocol state, in the SERVER or CLIENT role.

    Feed what arrives with ``receive_data`` (``b""`` at EOF), take events with
    ``next_event`` until it returns ``NEED_DATA`` (or ``PAUSED``: this cycle is
    over on their side), and turn events into bytes with ``send``.
    """

    __slots__ = (
        "_body_in_feed", "_content_length", "_data", "_eof", "_events", "_failure",
        "_head_bytes", "_headers", "_heads_in_feed", "_hosts", "_in_head", "_in_message",
        "_informational", "_keep_alive", "_line_carried", "_line_carry", "_line_from",
        "_manual_left", "_max_head", "_max_target", "_mode", "_out_framing", "_out_left",
        "_parser", "_progress", "_raw", "_reason", "_request_method", "_scan", "_server",
        "_skip_end", "_stalled", "_stopping", "_tail", "_te", "_their_version", "_until_close",
        "_upgrade", "_url", "our_role", "our_state", "their_state",
    )  # fmt: skip

    def __init__(
        self,
        role: Role,
        *,
        max_head_bytes: int = DEFAULT_MAX_HEAD_BYTES,
        max_target_bytes: int | None = None,
    ) -> None:
        self.our_role = role
        self.our_state = State.IDLE
        self.their_state = State.IDLE
        self._server = role is Role.SERVER
        self._max_head = max_head_bytes
        self._max_target = max_head_bytes if max_target_bytes is None else max_target_bytes
        # What was parsed, in order; a head's (keep-alive, upgrade requested) goes
        # just before it (one deque: an idle connection holds it, ~0.4 KiB each).
        self._events: deque[Event | RemoteProtocolError | tuple[bool, bool]] = deque()
        self._parser: HttpRequestParser | HttpResponseParser = self._new_parser()
        self._mode = _PARSING
        self._raw = b""  # bytes not parsed (after an upgrade or a stop), or those of an error
        self._eof = False
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
        self._scan = _IDLE_SCAN  # a request's header facts, gathered as they arrive
        self._head_bytes = 0
        self._hosts = 0
        self._te: list[bytes] = []
        self._content_length: bytes | None = None
        self._in_message = False
        self._in_head = False
        # The current cycle.
        self._keep_alive = True
        self._upgrade = False
        self._request_method: bytes | None = None
        self._their_version: bytes | None = None
        self._out_framing = LENGTH
        self._out_left = 0

    def __repr__(self) -> str:
        return (
            f"<Http1Connection {self.our_role.value} ours={self.our_state.value}"
            f" theirs={self.their_state.value} queued={len(self._events)}>"
        )

    @property
    def trailing_data(self) -> bytes:
        """Bytes received but not parsed: after a 101, or the read that failed to parse."""
        return self._raw

    # -- receiving -----------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Take bytes from the peer; ``b""`` means it closed its side."""
        if not data:
            self._eof = True
            if self._until_close and self._in_message:
                self._in_message = self._until_close = False
                self._events.append(END_OF_MESSAGE)
            return
        mode = self._mode
        if mode == _PARSING:
            self._feed(data)
        elif mode == _MANUAL_BODY:
            self._feed_manual_body(data)
        elif mode == _PAUSED:
            self._raw += data  # the relay reads no more than one read ahead

    def next_event(self) -> Event | Pending:
        """The next event, NEED_DATA, or PAUSED (their message of this cycle is complete).

        Raises RemoteProtocolError for what cannot be parsed, once it is reached.
        """
        their = self.their_state
        if their is _DONE or their is _MUST_CLOSE or their is _SWITCHED or their is _ERROR:
            if their is _ERROR:
                raise RemoteProtocolError("the peer's previous message could not be parsed")
            return PAUSED
        if not self._events:
            if not self._eof:
                return NEED_DATA
            if self._in_message or their is State.SEND_BODY or their is State.SEND_RESPONSE:
                self.their_state = State.ERROR
                raise RemoteProtocolError("the peer closed the connection mid-message")
            self.their_state = State.CLOSED
            return CONNECTION_CLOSED
        event = self._events.popleft()
        if isinstance(event, Data):
            return event
        info = (True, False)
        if isinstance(event, tuple):
            info, event = event, self._events.popleft()
            assert not isinstance(event, tuple)  # a head's info is followed by its head
        if isinstance(event, EndOfMessage):
            self.their_state = _DONE if self._keep_alive else _MUST_CLOSE
        elif isinstance(event, Request):
            self.their_state = State.SEND_BODY
            self.our_state = State.SEND_RESPONSE
            keep_alive, self._upgrade = info
            self._request_method = event.method
            self._their_version = event.http_version
            if not keep_alive:
                self._disable_keep_alive()
        elif isinstance(event, Response):
            self.their_state = State.SEND_BODY
            keep_alive, _ = info
            if not keep_alive:
                self._disable_keep_alive()
        elif isinstance(event, InformationalResponse):
            if event.status_code == 101:
                self.our_state = self.their_state = State.SWITCHED_PROTOCOL
        elif isinstance(event, RemoteProtocolError):
            self.their_state = State.ERROR
            raise event
        return event

    def start_next_cycle(self) -> None:
        """Both messages of this cycle are done: get ready for the next request."""
        if self.our_state is not State.DONE or self.their_state is not State.DONE:
            raise LocalProtocolError(
                f"not reusable: ours {self.our_state.value}, theirs {self.their_state.value}"
            )
        self.our_state = self.their_state = State.IDLE
        self._keep_alive = True
        self._upgrade = False
        self._request_method = self._their_version = None
        if self._mode == _PAUSED:  # after a declined upgrade, or the head of a HEAD response
            self._mode = _PARSING
            self._parser = self._new_parser()
            raw, self._raw = self._raw, b""
            if raw:
                self._feed(raw)

    # -- sending -------------------------------------------------------------

    def send(self, event: Event) -> bytes:
        """The bytes for ``event``; LocalProtocolError if it may not be sent now."""
        kind = type(event)
        if kind is Data:
            assert isinstance(event, Data)
            return self._send_data(event.data)
        if kind is EndOfMessage:
            return self._send_end()
        if self._server:
            if kind is Response:
                assert isinstance(event, Response)
                return self._send_response(event)
            if kind is InformationalResponse:
                assert isinstance(event, InformationalResponse)
                return self._send_informational(event)
        elif kind is Request:
            assert isinstance(event, Request)
            return self._send_request(event)
        raise LocalProtocolError(f"a {self.our_role.value} cannot send {kind.__name__}")

    def _send_request(self, request: Request) -> bytes:
        if self.our_state is not State.IDLE:
            raise LocalProtocolError(f"cannot send a request in state {self.our_state.value}")
        data, self._out_framing, self._out_left, keep_alive = request_head(request)
        self._request_method = request.method
        self.our_state = State.SEND_BODY
        if self.their_state is State.IDLE:
            self.their_state = State.SEND_RESPONSE
        if not keep_alive:
            self._disable_keep_alive()
        return data

    def _send_informational(self, response: InformationalResponse) -> bytes:
        if self.our_state is not State.SEND_RESPONSE:
            raise LocalProtocolError(f"cannot send a 1xx in state {self.our_state.value}")
        if response.status_code == 101:
            if not self._upgrade:
                raise LocalProtocolError("101 without an upgrade request")
            self.our_state = self.their_state = State.SWITCHED_PROTOCOL
        return head(b"HTTP/1.1 %d %b\r\n" % (response.status_code, response.reason),
                    response.headers)  # fmt: skip

    def _send_response(self, response: Response) -> bytes:
        if self.our_state is not State.SEND_RESPONSE and self.our_state is not State.IDLE:
            raise LocalProtocolError(f"cannot send a response in state {self.our_state.value}")
        data, self._out_framing, self._out_left, closes = response_head(
            response,
            method=self._request_method,
            peer_version=self._their_version,
            keep_alive=self._keep_alive,
        )
        self.our_state = State.SEND_BODY
        self._upgrade = False  # declined, if it was asked for
        if closes:
            self._disable_keep_alive()
        return data

    def _send_data(self, data: bytes) -> bytes:
        if self.our_state is not State.SEND_BODY:
            raise LocalProtocolError(f"cannot send data in state {self.our_state.value}")
        framing = self._out_framing
        if framing == LENGTH:
            if len(data) > self._out_left:
                raise LocalProtocolError("more data than Content-Length (or a body where none is)")
            self._out_left -= len(data)
            return data
        if framing == CHUNKED:
            return b"%x\r\n%b\r\n" % (len(data), data) if data else b""
        return data

    def _send_end(self) -> bytes:
        if self.our_state is not State.SEND_BODY:
            raise LocalProtocolError(f"cannot end a message in state {self.our_state.value}")
        if self._out_framing == LENGTH and self._out_left:
            raise LocalProtocolError("less data than Content-Length")
        self.our_state = State.DONE if self._keep_alive else State.MUST_CLOSE
        return b"0\r\n\r\n" if self._out_framing == CHUNKED else b""

    def _disable_keep_alive(self) -> None:
        self._keep_alive = False
        if self.our_state is State.DONE:
            self.our_state = State.MUST_CLOSE
        if self.their_state is State.DONE:
            self.their_state = State.MUST_CLOSE

    # -- parsing -------------------------------------------------------------

    def _new_parser(self) -> HttpRequestParser | HttpResponseParser:
        if self._server:
            return HttpRequestParser(self)
        return HttpResponseParser(self)

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
        self._mode = _DEAD
        self._raw = data
        self._in_message = self._until_close = False

    def _after_upgrade(self, rest: bytes) -> None:
        """llhttp stopped after a request asking for an upgrade: parsing pauses."""
        self._in_message = self._in_head = False
        self._mode = _PAUSED
        if self._manual_left:
            self._mode = _MANUAL_BODY
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
            self._mode = _PAUSED
            self._raw = data[len(body) :]

    def _after_stop(self, data: bytes, continuing_head: bool) -> None:
        """A callback stopped llhttp at the end of a head: the rest is not parsed."""
        self._stopping = False
        self._in_message = self._in_head = False
        self._mode = _PAUSED
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
        if self._server:
            self._scan = HeaderScan()
        self._head_bytes = -1  # not counted yet (see _feed)
        self._hosts = 0
        self._te = []
        self._content_length = None

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

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._in_head:
            return  # a trailer: llhttp checked its syntax; it is not passed on
        name = name.lower()
        trimmed = value.rstrip(_OWS)  # llhttp keeps trailing whitespace
        self._headers.append((name, trimmed))
        if self._server:
            self._scan.add(name, trimmed)
        special = SPECIAL.get(name)
        if special is not None:
            if special == HOST:
                self._hosts += 1
            elif special == TE:
                self._te.append(value)  # as llhttp read it
            elif special == CL:
                self._content_length = trimmed

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
        self._events.append(Request(method, self._url, self._headers, version, self._scan.facts()))

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
        self._events.append(Response(status, self._headers, self._reason, version))
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
        self._scan = _IDLE_SCAN
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
