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
from dataclasses import dataclass

from hostmux.http1.checked_events import (
    END_OF_MESSAGE,
    response_checking_headers,
    response_of_checked_headers,
)
from hostmux.http1.events import (
    ConnectionClosed,
    Data,
    EndOfMessage,
    Event,
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


@dataclass(frozen=True, slots=True)
class ResponseTimeouts:
    response_s: float  # for the app's response head (nginx proxy_read_timeout)
    idle_s: float  # between the response's body chunks


async def relay_response(
    browser: BrowserSide,
    upstream: Upstream,
    deadline: Deadline,
    record: RecordBuilder,
    *,
    timeouts: ResponseTimeouts,
    websocket: bool,
    going_away: asyncio.Event,
    last_request: bool,
    body: asyncio.Task[None] | None = None,
) -> ResponseEnd:
    """Relay the app's response; ``body`` is the request body still going up, if any.

    The response says ``Connection: close`` if it is the ``last_request`` the
    connection may carry, or ``going_away`` is set when its head arrives.
    Error handling: raises Refusal, Abort or StaleUpstream (above), and what
    either stream raised.
    """
    timeout = timeouts.response_s
    while True:
        event = await _next_event(browser, upstream, deadline, record, timeout, body)
        if isinstance(event, InformationalResponse):
            if event.status_code == 101:
                await _switch(browser, upstream, record, event, websocket)
                return ResponseEnd.SWITCHED
            headers = response_headers_for_client(event.headers)
            await browser.send(
                InformationalResponse(event.status_code, headers, event.reason), record
            )
        elif isinstance(event, Response):
            last = last_request or going_away.is_set()
            await _send_head(browser, upstream, record, event, last)
            timeout = timeouts.idle_s
        elif isinstance(event, Data):
            await browser.send(event, record)
        elif isinstance(event, EndOfMessage):
            await browser.send(END_OF_MESSAGE, record)
            await browser.flush(record)
            # After a refused upgrade the app's side of the connection is in
            # doubt (hypercorn, for one, errors on what follows): not reused.
            conn = upstream.conn
            if not websocket and conn.our_state is State.DONE and conn.their_state is State.DONE:
                conn.start_next_cycle()
                return ResponseEnd.REUSABLE
            return ResponseEnd.FINISHED


async def _next_event(
    browser: BrowserSide,
    upstream: Upstream,
    deadline: Deadline,
    record: RecordBuilder,
    timeout_s: float,
    body: asyncio.Task[None] | None,
) -> Event:
    """The app's next event, or the failure it amounts to (rules 1 and 2)."""
    started = record.response_started
    try:
        event = await upstream.next_event(
            browser, deadline, timeout_s, record, None if started else body
        )
    except TimeoutError:
        if record.response_started:
            raise Abort() from None
        failed = failure_of(body)
        if failed is not None:
            raise Refusal(failed.status, failed.detail) from None
        record.note = record.note or "response timeout"
        raise Refusal(504, "the app did not answer in time") from None
    except RemoteProtocolError:
        if record.response_started:
            raise Abort() from None
        raise Refusal(502, "the app sent an invalid response") from None
    if isinstance(event, ConnectionClosed):
        failed = failure_of(body)
        if failed is not None and not record.response_started:
            raise Refusal(failed.status, failed.detail)
        if not record.response_started and upstream.requests > 1:
            raise StaleUpstream()
        if record.response_started:
            raise Abort()
        raise Refusal(502, "the app closed the connection without answering")
    return event


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


async def _send_head(
    browser: BrowserSide, upstream: Upstream, record: RecordBuilder, event: Response, last: bool
) -> None:
    """Relay the final response head (rule 4)."""
    record.status = event.status_code
    record.response_started = True
    headers = response_headers_for_client(event.headers)
    if last:
        # Shutting down, or the last request this connection may carry:
        # say so, as nginx does after keepalive_requests (then it closes).
        headers.append((b"connection", b"close"))
    if upstream.response_filter is not None:
        response = response_checking_headers(
            event.status_code, event.reason, upstream.response_filter(headers)
        )
    else:
        response = response_of_checked_headers(event, headers)
    await browser.send(response, record)
