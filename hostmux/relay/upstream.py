"""The app's side of a relayed connection: one upstream stream and its parser.

An upstream is reused for the next request of the same browser connection
while both sides keep it alive (``key``: the requests that may share it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from hostmux.http1.connection import Http1Connection
from hostmux.http1.events import NEED_DATA, ConnectionClosed, Event, Headers, Pending, Role, State
from hostmux.relay.browser import BrowserSide
from hostmux.relay.deadline import Deadline
from hostmux.relay.records import RecordBuilder
from hostmux.relay.streams import ByteStream
from hostmux.relay.upload import receive_once_sent


@dataclass(slots=True)
class Upstream:
    stream: ByteStream
    key: str
    response_filter: Callable[[Headers], Headers] | None = None
    filter_checked: bool = False  # the filter's output needs no second check (``Destination``)
    conn: Http1Connection = field(default_factory=lambda: Http1Connection(Role.CLIENT))
    requests: int = 0
    got_response: bool = False  # any byte of the current response received
    # Whether its stream can hand arrivals to a callback (``sink``: the express path).
    sinkable: bool = field(init=False)

    def __post_init__(self) -> None:
        self.sinkable = hasattr(self.stream, "sink")

    async def next_event(
        self,
        browser: BrowserSide,
        deadline: Deadline,
        timeout_s: float,
        record: RecordBuilder,
        body: asyncio.Task[None] | None = None,
    ) -> Event:
        """The app's next event; flushes queued output to the browser before waiting.

        While ``body`` (the request body going up) runs, there is no deadline:
        ``timeout_s`` starts when it has finished.
        """
        conn = self.conn
        while True:
            event = conn.next_event()
            if event is not NEED_DATA:
                assert not isinstance(event, Pending), event  # PAUSED: not before the end
                return event
            if browser.queued:
                await browser.flush(record)
            if body is not None and not body.done():
                data = await receive_once_sent(self.stream, body, timeout_s)
            else:
                with deadline.within(timeout_s):
                    data = await self.stream.receive()
            if not data and conn.their_state is State.SEND_RESPONSE and not self.got_response:
                # Closed before a single byte of answer: the parser would call that
                # a protocol error; for us it is "closed without answering".
                return ConnectionClosed()
            if data:
                self.got_response = True
            conn.receive_data(data)
