"""The express path: a small request on a kept-alive connection, answered from callbacks.

The relay's task wakes twice per request (the browser's bytes, the app's
answer) and walks its whole coroutine chain each time. For the request most
browsers send most of the time — no body, on a connection whose upstream is
open and idle, answered by a small response that arrives whole — the same
steps run from the transports' callbacks instead, while the task stays parked
in its wait for the next request:

1. the browser's bytes (``TransportStream.express``) are parsed; a complete
   request without a body is checked and routed exactly as ``HttpRelay._handle``
   does (the same functions), its head rewritten, serialised and written to
   the open upstream;
2. the app's bytes (the upstream's ``sink``: the SSH channel's callback) are
   parsed; once a whole response (head to end, at most ``FLUSH_BYTES`` of
   body) is queued, it is rewritten and serialised by the same functions as
   ``ResponsePath`` and written to the browser in one write; the request is
   logged, both cycles restart, and the task's deadline is the keep-alive
   timeout again.

Anything else is handed back to the task at the point reached, which finishes
it with the general code (and its rules, timeouts and retries):

- before the request went up (not a plain request, a refusal, a page, another
  upstream, a routing that needs I/O, the last request a connection may
  carry, a shutdown, an upstream with unread or unsent bytes): the request,
  with what was done for it (``Prepared``), as the task's next event;
- after (the answer is partial, large, informational or invalid, the
  upstream ended, the browser's transport holds unsent bytes, a shutdown):
  ``RESUME``, and the task relays the answer as if it had sent the request
  (``HttpRelay._resume``); the response timeout is the task's deadline, moved
  when the request went up, and its expiry is a 504 as in the task.

While a request is in flight, the browser's further bytes are queued without
waking the task (``TransportStream.hold``, bounded by its pause): pipelined
requests wait for the response, as in the task.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from hostmux.http1.checked_events import END_OF_MESSAGE
from hostmux.http1.checks import CheckedRequest
from hostmux.http1.events import (
    CONNECTION_CLOSED,
    NEED_DATA,
    PAUSED,
    Data,
    EndOfMessage,
    RemoteProtocolError,
    Request,
    Response,
    State,
)
from hostmux.http1.headers import ClientInfo
from hostmux.http1.pages import Page
from hostmux.relay.browser import FLUSH_BYTES, RESUME
from hostmux.relay.gateway import Destination
from hostmux.relay.outcomes import Refusal
from hostmux.relay.records import RecordBuilder, new_request_id
from hostmux.relay.response import response_head, reuse
from hostmux.relay.transport_stream import TransportStream
from hostmux.relay.upload import BodyEvent

if TYPE_CHECKING:
    from hostmux.relay.relay import HttpRelay

log = logging.getLogger("hostmux.relay")

_IDLE: Final = State.IDLE


@dataclass(slots=True)
class Prepared:
    """What the express path did for a request before handing it back."""

    started: float
    rid: str
    record: RecordBuilder
    checked: CheckedRequest
    body_events: list[BodyEvent]
    client: ClientInfo
    routed: Destination | Page | Awaitable[Destination | Page]  # the gateway's answer


@dataclass(slots=True, init=False)
class Inflight:
    """A request the express path sent up, waiting for its answer (made per
    request: its ``__init__`` written out, so that it is compiled)."""

    request: Request
    decision: Destination
    upstream_request: Request
    record: RecordBuilder
    started: float

    def __init__(
        self,
        request: Request,
        decision: Destination,
        upstream_request: Request,
        record: RecordBuilder,
        started: float,
    ) -> None:
        self.request = request
        self.decision = decision
        self.upstream_request = upstream_request
        self.record = record
        self.started = started


class Express:
    """One browser connection's express path (see the module docstring)."""

    __slots__ = ("_relay", "_stream", "armed", "inflight")

    def __init__(self, relay: HttpRelay, stream: TransportStream) -> None:
        self._relay = relay
        self._stream = stream
        # Set by the task while it waits for the next request with an upstream open.
        self.armed = False
        self.inflight: Inflight | None = None
        stream.express = self._on_browser_bytes

    def __repr__(self) -> str:
        return f"<Express armed={self.armed} inflight={self.inflight is not None}>"

    def stop(self) -> None:
        """The connection ends: no more callbacks."""
        self.armed = False
        self._stream.express = None
        self._stream.hold = False
        self._drop_sink()

    # -- the request -----------------------------------------------------------

    def _on_browser_bytes(self, data: bytes) -> bool:
        if not self.armed or self.inflight is not None:
            return False
        relay = self._relay
        relay._browser.h.receive_data(data)
        try:
            self._next_request()
        except Exception:  # a bug here must not take the event loop's callback down
            log.exception("express path failed; closing the connection")
            self._fail()
        return True

    def _next_request(self) -> None:
        relay = self._relay
        h = relay._browser.h
        try:
            event = h.next_event()
        except RemoteProtocolError as exc:
            self._give(exc)
            return
        if event is NEED_DATA:
            return  # the rest of the head is still to come: the task's deadline runs on
        assert event is not PAUSED
        if type(event) is not Request:
            self._give(event)  # ConnectionClosed
            return
        self._begin(event)

    def _begin(self, request: Request) -> None:
        relay = self._relay
        upstream = relay._upstream
        facts = request.facts
        if (
            upstream is None
            or not upstream.sinkable
            or relay._served >= relay._limits.max_requests_per_connection  # the last: says close
            or relay._going_away.is_set()
            or facts is None
            or facts.upgrade
            or not upstream.stream.quiet  # type: ignore[attr-defined]
            or upstream.conn.our_state is not _IDLE
            or upstream.conn.their_state is not _IDLE
        ):
            self._give(request)
            return
        started = time.perf_counter()
        rid = new_request_id()
        record = RecordBuilder(rid, relay._peer, request)
        try:
            checked, body_events = relay._check(request, record)
        except Refusal:
            self._give(request)  # the task checks it again and refuses it (nothing changed)
            return
        client = relay._info
        if relay._trusted is not None:
            client = relay._trusted.client_of(request.headers, client)
        routed = relay._gateway.route(checked.host, request, rid, client)
        if (
            not isinstance(routed, Destination)
            or routed.key != upstream.key
            or type(body_events[0]) is not EndOfMessage
        ):
            relay.prepared = Prepared(started, rid, record, checked, body_events, client, routed)
            self._give(request)
            return
        record.name = routed.label
        record.user = routed.user
        upstream_request = relay._upstream_request(request, checked, routed, client, rid, False)
        upstream.requests += 1
        upstream.got_response = False
        conn = upstream.conn
        head = conn.send(upstream_request) + conn.send(END_OF_MESSAGE)
        self.inflight = Inflight(request, routed, upstream_request, record, started)
        self._stream.hold = True
        # Whatever wakes the task now (a lost connection) finds this request first.
        relay._browser.busy = True
        relay._deadline.move(relay._limits.response_timeout_s)
        try:
            upstream.stream.write(head)
        except (ConnectionError, OSError):
            self.hand_back()  # the task finds the upstream gone and retries on a fresh one
            return
        upstream.stream.sink = self._on_app_bytes  # type: ignore[attr-defined]

    # -- the response ----------------------------------------------------------

    def _on_app_bytes(self, data: bytes) -> None:
        try:
            self._app_bytes(data)
        except Exception:  # as above: never into asyncssh's callback
            log.exception("express path failed; closing the connection")
            self._fail()

    def _app_bytes(self, data: bytes) -> None:
        relay = self._relay
        upstream = relay._upstream
        inflight = self.inflight
        if not data or upstream is None or inflight is None:
            self.hand_back()  # the app's side ended: the task decides (retry, 502, abort)
            return
        upstream.got_response = True
        conn = upstream.conn
        conn.receive_data(data)
        browser = relay._browser
        if (
            not conn.whole_response_queued(FLUSH_BYTES)
            or relay._going_away.is_set()
            or browser.queued
            or self._stream.must_drain()
        ):
            self.hand_back()
            return
        self._drop_sink()
        record = inflight.record
        h = browser.h
        parts: list[bytes] = []
        while True:
            event = conn.next_event()
            if type(event) is Response:
                parts.append(h.send(response_head(upstream, record, event, False)))
            elif type(event) is Data:
                record.bytes_out += len(event.data)
                parts.append(h.send(event))
            else:
                assert type(event) is EndOfMessage, event
                parts.append(h.send(END_OF_MESSAGE))
                break
        end = reuse(upstream, False)
        self.inflight = None
        browser.busy = False
        try:
            self._stream.write(b"".join(parts))
        except ConnectionError:  # the browser went away: the connection ends
            self._stream.hold = False
            relay._on_request(record.finish(inflight.started))
            self._give_end()
            return
        relay._after_response(end)
        relay._on_request(record.finish(inflight.started))
        self._stream.hold = False
        if h.our_state is not State.DONE or h.their_state is not State.DONE:
            self._give_end()  # the connection ends after this response
            return
        h.start_next_cycle()
        relay._served += 1
        relay._deadline.move(relay._limits.keepalive_timeout_s)
        if relay._upstream is None:
            self.armed = False  # the next request opens a fresh upstream: the task's work
            self._stream.kick()
        elif self._stream.has_queued:
            self._stream.kick()  # what came meanwhile: the task reads it
        else:
            self._next_request()  # a pipelined request parsed already, if any

    # -- handing back --------------------------------------------------------------

    def hand_back(self) -> None:
        """The request in flight goes back to the task (``RESUME``)."""
        self._drop_sink()
        self.armed = False
        self._stream.hold = False
        self._relay._browser.busy = True  # (already: the task finds RESUME first)
        self._stream.kick()

    def take_back(self) -> Inflight:
        """The task takes the request in flight (after ``RESUME`` or its deadline)."""
        inflight = self.inflight
        assert inflight is not None
        self.inflight = None
        self._drop_sink()
        self._stream.hold = False
        self._relay._browser.busy = False
        return inflight

    def _give(self, event: Request | RemoteProtocolError | object) -> None:
        """Hand the task its next event (or the parser's error)."""
        self.armed = False
        self._relay._browser.handover = event  # type: ignore[assignment]
        self._stream.kick()

    def _give_end(self) -> None:
        """The connection ends: the task sees it as a close."""
        self._give(CONNECTION_CLOSED)

    def _fail(self) -> None:
        self.stop()
        self.inflight = None
        self._relay._browser.busy = False
        self._stream.abort()
        self._give_end()

    def _drop_sink(self) -> None:
        upstream = self._relay._upstream
        if upstream is not None and upstream.sinkable:
            upstream.stream.sink = None  # type: ignore[attr-defined]


__all__ = ["RESUME", "Express", "Inflight", "Prepared"]
