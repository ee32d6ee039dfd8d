"""A request body on its way up to the app, and the deadlines around it.

The relay streams a request body up while it waits for the answer. Three
deadlines keep either side from holding the other for ever (as nginx's do):

1. each read from the browser has ``body_timeout_s`` (``client_body_timeout``),
   else 408 — a slow POST;
2. each write to the app has ``app_timeout_s`` (``proxy_send_timeout``),
   else 504 — an app (or tunnel client) that stopped reading;
3. the app's response timeout starts only once the whole body is up
   (``proxy_read_timeout``): a long upload is not a slow answer.

A malformed body, or one cut short, is a 400. When the body stalls or breaks
off, the app's stream is closed at once: the app never gets a complete
request that the browser did not send.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from hostmux.http1.connection import Http1Connection
from hostmux.http1.events import NEED_DATA, Data, EndOfMessage, Event, Pending, RemoteProtocolError
from hostmux.relay.records import RecordBuilder
from hostmux.relay.streams import ByteStream

# What the parser yields while reading a request body (PAUSED cannot occur mid-body).
BodyEvent = Event | Pending


class BodyFailed(Exception):
    """The request body could not be relayed: 400 malformed, 408 browser or 504 app too slow."""

    def __init__(self, status: int, detail: str, note: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail  # for the browser's status page
        self.note = note  # for the request's log line


def buffered_body_events(browser_h: Http1Connection) -> list[BodyEvent]:
    """The body's events in what already arrived (ends in NEED_DATA or EndOfMessage).

    Raises RemoteProtocolError for a malformed body: it is refused before
    the request is routed, so the app never sees its head.
    """
    events: list[BodyEvent] = []
    while True:
        event = browser_h.next_event()
        events.append(event)
        if event is NEED_DATA or isinstance(event, EndOfMessage):
            return events


def failure_of(body: asyncio.Task[None] | None) -> BodyFailed | None:
    """Why the body pump ``body`` failed, if it did."""
    if body is None or not body.done() or body.cancelled():
        return None
    failure = body.exception()
    return failure if isinstance(failure, BodyFailed) else None


async def pump_request_body(
    browser_h: Http1Connection,
    browser: ByteStream,
    app: ByteStream,
    app_h: Http1Connection,
    events: Sequence[BodyEvent],
    record: RecordBuilder,
    *,
    body_timeout_s: float,
    app_timeout_s: float,
) -> None:
    """Move the body from ``browser`` (parsed by ``browser_h``) to ``app`` (``app_h``),
    starting with ``events`` (those parsed from what had already arrived).

    Error handling: raises BodyFailed for a deadline or a malformed body, or
    what either stream raised; in every case ``app`` is closed first and
    ``record.note`` says why.
    """
    queued = list(events)
    event = queued.pop(0)
    try:
        while True:
            if event is NEED_DATA:
                try:
                    async with asyncio.timeout(body_timeout_s):
                        data = await browser.receive()
                except TimeoutError:
                    raise BodyFailed(
                        408, "the request body did not arrive in time", "body timeout"
                    ) from None
                browser_h.receive_data(data)
            elif isinstance(event, Data | EndOfMessage):
                if isinstance(event, Data):
                    record.bytes_in += len(event.data)
                try:
                    async with asyncio.timeout(app_timeout_s):
                        await app.send_all(app_h.send(event))
                except TimeoutError:
                    raise BodyFailed(
                        504, "the app did not take the request body in time", "app not reading"
                    ) from None
                if isinstance(event, EndOfMessage):
                    return
            else:  # pragma: no cover - the parser yields nothing else mid-body
                raise RemoteProtocolError(f"unexpected {event!r}")
            if queued:
                event = queued.pop(0)
                continue
            try:
                event = browser_h.next_event()
            except RemoteProtocolError:  # also: the browser left mid-body
                raise BodyFailed(
                    400, "the request body is malformed", "malformed or cut short"
                ) from None
    except BaseException as exc:
        # The browser's body broke off (or was too slow), or the app stopped
        # taking it: the app must not wait for the rest, and the response
        # cannot be trusted to complete.
        note = exc.note if isinstance(exc, BodyFailed) else type(exc).__name__
        record.note = record.note or f"request body: {note}"
        app.close()
        raise


async def receive_once_sent(
    stream: ByteStream, body: asyncio.Task[None], timeout_s: float
) -> bytes:
    """``stream.receive()`` with a deadline of ``timeout_s`` counted from when ``body`` ends.

    If ``body`` fails, the wait ends at once (TimeoutError; see ``failure_of``):
    a closed SSH channel's reader may wait for the client's own close.
    """
    loop = asyncio.get_running_loop()
    waiting = True
    async with asyncio.timeout(None) as deadline:

        def start_deadline(task: asyncio.Task[None]) -> None:
            if not waiting:  # already scheduled when the wait ended: too late to matter
                return
            failed = task.cancelled() or task.exception() is not None
            deadline.reschedule(loop.time() + (0.0 if failed else timeout_s))

        body.add_done_callback(start_deadline)
        try:
            return await stream.receive()
        finally:
            waiting = False
            body.remove_done_callback(start_deadline)
