"""Sans-IO HTTP/1.1 connections on llhttp (via httptools): the relay's hot path.

One class, ``Http1Connection``, in either role: as the SERVER (the browser's
side) it parses requests and serialises responses, as the CLIENT (the app's
side) it serialises requests and parses responses. Its API is the part of h11's
``Connection`` the relay uses: ``receive_data``, ``next_event``, ``send``,
``our_state`` / ``their_state``, ``start_next_cycle`` and ``trailing_data``.
The events, states and errors are in ``events``, the framing of what is sent
in ``framing``; the parsing half (llhttp and its callbacks) is ``parser``.

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
   frames what it sends as h11 does (``framing``).
8. ``send`` refuses (LocalProtocolError) an event out of turn, a body where
   none is allowed, and more or less data than Content-Length said. It does
   not check header syntax: build headers from elsewhere with ``checked_headers``.
"""

from __future__ import annotations

import itertools
from typing import Final

from hostmux.http1.events import (
    CONNECTION_CLOSED,
    END_OF_MESSAGE,
    NEED_DATA,
    PAUSED,
    Data,
    EndOfMessage,
    Event,
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
    LENGTH,
    framed_request_head,
    head,
    request_head,
    response_head,
)
from hostmux.http1.parser import MODE_MANUAL_BODY, MODE_PARSING, MODE_PAUSED, LlhttpParsing

# h11's default for an unfinished head; the relay sets its own for browsers.
DEFAULT_MAX_HEAD_BYTES: Final = 16 * 1024

# States, looked up often (final module constants are quicker than enum attributes:
# compiled, each is a C static rather than a look-up in the module's dict).
_DONE: Final = State.DONE
_MUST_CLOSE: Final = State.MUST_CLOSE
_SWITCHED: Final = State.SWITCHED_PROTOCOL
_ERROR: Final = State.ERROR


class Http1Connection(LlhttpParsing):
    """One HTTP/1.1 connection's protocol state, in the SERVER or CLIENT role.

    Feed what arrives with ``receive_data`` (``b""`` at EOF), take events with
    ``next_event`` until it returns ``NEED_DATA`` (or ``PAUSED``: this cycle is
    over on their side), and turn events into bytes with ``send``.
    """

    __slots__ = (
        "_eof", "_keep_alive", "_out_framing", "_out_left", "_their_version", "_upgrade",
        "our_role", "our_state", "their_state",
    )  # fmt: skip

    def __init__(
        self,
        role: Role,
        *,
        max_head_bytes: int = DEFAULT_MAX_HEAD_BYTES,
        max_target_bytes: int | None = None,
    ) -> None:
        super().__init__(
            server=role is Role.SERVER,
            max_head_bytes=max_head_bytes,
            max_target_bytes=max_head_bytes if max_target_bytes is None else max_target_bytes,
        )
        self.our_role = role
        self.our_state = State.IDLE
        self.their_state = State.IDLE
        self._eof = False
        # The current cycle.
        self._keep_alive = True
        self._upgrade = False
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
        if mode == MODE_PARSING:
            self._feed(data)
        elif mode == MODE_MANUAL_BODY:
            self._feed_manual_body(data)
        elif mode == MODE_PAUSED:
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
        event = self._events.pop(0)
        if isinstance(event, Data):
            return event
        info = (True, False)
        if isinstance(event, tuple):
            info, event = event, self._events.pop(0)
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

    def waiting_for_a_head(self) -> bool:
        """Between two messages with nothing parsed or ended on their side: ``next_event``
        would say NEED_DATA and nothing else (a relay may stop waiting on it)."""
        return self.their_state is State.IDLE and not self._events and not self._eof

    def whole_response_queued(self, max_body: int) -> bool:
        """Whether exactly one final response is parsed and queued, head to end, with at
        most ``max_body`` bytes of body and nothing after it (the express path)."""
        events = self._events
        if len(events) < 3 or events[-1] is not END_OF_MESSAGE or type(events[1]) is not Response:
            return False
        if self.their_state is not State.SEND_RESPONSE:
            return False
        body = 0
        for event in itertools.islice(events, 2, len(events) - 1):
            if type(event) is not Data:
                return False
            body += len(event.data)
        return body <= max_body

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
        if self._mode == MODE_PAUSED:  # after a declined upgrade, or the head of a HEAD response
            self._mode = MODE_PARSING
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
        framing = request.framing
        if framing is None:
            data, self._out_framing, self._out_left, keep_alive = request_head(request)
        else:  # its builder knew: no header looked up again
            data, keep_alive = framed_request_head(request), True
            self._out_framing, self._out_left = framing
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
