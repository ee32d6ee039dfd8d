"""The response path: the app's answer relayed to the browser, event by event.

Rules (the relay's 5 and 6):

1. Nothing of the answer reaches the browser before its head is checked;
   once any of it has (``record.response_started``), a failure can only end
   the connection (``Abort``): a status page would corrupt the response.
2. Before that, a failure is a status page (``Refusal``): 504 no answer in
   time, 502 an invalid answer, a close without one, or a 101 unasked; the
   body's own failure (400, 408, 504) wins when the body pump reports one.
3. A ``101`` to a WebSocket upgrade is relayed and the caller splices bytes
   (``SWITCHED``); other 1xx responses pass on and the final one follows.
4. The response says ``Connection: close`` when it is the last on the
   connection (shutdown, or ``max_requests_per_connection`` reached).
"""

from __future__ import annotations

import asyncio
import enum

from hostmux.http1.checked_events import (
    END_OF_MESSAGE,
    response_checking_headers,
    response_of_checked_headers,
)
from hostmux.http1.events import (
    ConnectionClosed,
    Data,
    EndOfMessage,
    InformationalResponse,
    RemoteProtocolError,
    Response,
    State,
)
from hostmux.http1.headers import response_headers_for_client
from hostmux.relay.browser import BrowserSide
from hostmux.relay.deadline import Deadline
from hostmux.relay.outcomes import Abort, Refusal, StaleUpstream
from hostmux.relay.records import RecordBuilder
from hostmux.relay.upload import failure_of
from hostmux.relay.upstream import Upstream


class ResponseEnd(enum.Enum):
    """How a relayed response ended."""

    REUSABLE = "reusable"  # complete, and the upstream may carry the next request
    FINISHED = "finished"  # complete; the upstream is not to be reused
    SWITCHED = "switched"  # a 101 was relayed: bytes are spliced from now on


class ResponsePath:
    """Relays the app's responses on one browser connection (one per ``HttpRelay``)."""

    __slots__ = ("_browser", "_deadline", "_going_away", "_idle_s", "_response_s")

    def __init__(
        self,
        browser: BrowserSide,
        deadline: Deadline,
        going_away: asyncio.Event,
        *,
        response_timeout_s: float,
        idle_timeout_s: float,
    ) -> None:
        self._browser = browser
        self._deadline = deadline  # the waits' timer, in the task that relays
        self._going_away = going_away  # set: the response says Connection: close
        self._response_s = response_timeout_s  # for the head (nginx proxy_read_timeout)
        self._idle_s = idle_timeout_s  # between the body's chunks

    async def relay(
        self,
        upstream: Upstream,
        record: RecordBuilder,
        websocket: bool,
        last_request: bool,
        body: asyncio.Task[None] | None = None,
    ) -> ResponseEnd:
        """Relay the app's response; ``body`` is the request body still going up, if any.

        The response says ``Connection: close`` if it is the ``last_request`` the
        connection may carry, or ``going_away`` is set when its head arrives.
        Error handling: raises Refusal, Abort or StaleUpstream (above), and what
        either stream raised.
        """
        browser = self._browser
        timeout = self._response_s
        while True:
            try:
                event = await upstream.next_event(
                    browser, self._deadline, timeout, record,
                    None if record.response_started else body,
                )  # fmt: skip
            except (TimeoutError, RemoteProtocolError) as exc:
                raise _failure(exc, record, body) from None
            if isinstance(event, Data):
                await browser.send(event, record)
            elif isinstance(event, Response):
                last = last_request or self._going_away.is_set()
                await browser.send(response_head(upstream, record, event, last), record)
                timeout = self._idle_s
            elif isinstance(event, EndOfMessage):
                await browser.send(END_OF_MESSAGE, record)
                await browser.flush(record)
                return reuse(upstream, websocket)
            elif isinstance(event, InformationalResponse):
                if event.status_code == 101:
                    await _switch(browser, upstream, record, event, websocket)
                    return ResponseEnd.SWITCHED
                headers = response_headers_for_client(event.headers)
                await browser.send(
                    InformationalResponse(event.status_code, headers, event.reason), record
                )
            else:
                assert isinstance(event, ConnectionClosed), event
                raise _closed(upstream, record, body)


def reuse(upstream: Upstream, websocket: bool) -> ResponseEnd:
    """Whether ``upstream`` may carry the next request, its response complete."""
    # After a refused upgrade the app's side of the connection is in
    # doubt (hypercorn, for one, errors on what follows): not reused.
    conn = upstream.conn
    if not websocket and conn.our_state is State.DONE and conn.their_state is State.DONE:
        conn.start_next_cycle()
        return ResponseEnd.REUSABLE
    return ResponseEnd.FINISHED


def _failure(exc: Exception, record: RecordBuilder, body: asyncio.Task[None] | None) -> Exception:
    """What a timeout or an invalid answer amounts to (rules 1 and 2)."""
    if record.response_started:
        return Abort()
    if isinstance(exc, RemoteProtocolError):
        return Refusal(502, "the app sent an invalid response")
    failed = failure_of(body)
    if failed is not None:
        return Refusal(failed.status, failed.detail)
    record.note = record.note or "response timeout"
    return Refusal(504, "the app did not answer in time")


def _closed(
    upstream: Upstream, record: RecordBuilder, body: asyncio.Task[None] | None
) -> Exception:
    """What the app's close amounts to (rules 1 and 2; a reused upstream is retried)."""
    failed = failure_of(body)
    if failed is not None and not record.response_started:
        return Refusal(failed.status, failed.detail)
    if not record.response_started and upstream.requests > 1:
        return StaleUpstream()
    if record.response_started:
        return Abort()
    return Refusal(502, "the app closed the connection without answering")


async def _switch(
    browser: BrowserSide,
    upstream: Upstream,
    record: RecordBuilder,
    event: InformationalResponse,
    websocket: bool,
) -> None:
    """Relay a 101 (rule 3) and flush it: the splice follows."""
    if not websocket:
        raise Refusal(502, "the app switched protocols unasked")
    switched = response_headers_for_client(event.headers, websocket_accepted=True)
    if upstream.response_filter is not None:  # a 101 may set cookies too
        switched = upstream.response_filter(switched)
    await browser.send(InformationalResponse(101, switched, event.reason), record)
    record.status = 101
    record.response_started = True
    await browser.flush(record)


def response_head(
    upstream: Upstream, record: RecordBuilder, event: Response, last: bool
) -> Response:
    """The final response head for the browser (rule 4)."""
    record.status = event.status_code
    record.response_started = True
    headers = response_headers_for_client(event.headers, hop_by_hop=event.hop_by_hop)
    if last:
        # Shutting down, or the last request this connection may carry:
        # say so, as nginx does after keepalive_requests (then it closes).
        headers.append((b"connection", b"close"))
    if upstream.response_filter is not None:
        headers = upstream.response_filter(headers)
        if not upstream.filter_checked:
            return response_checking_headers(event.status_code, event.reason, headers)
    return response_of_checked_headers(event, headers)
