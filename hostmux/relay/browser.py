"""The browser's side of a relayed connection: its parser and its queued output.

Small pieces of a response are batched into one write (``FLUSH_BYTES``),
large ones go as they are; a browser that stops reading for
``send_timeout_s`` ends the connection with a reset (``stalled``).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from typing import Final

from hostmux.http1.checked_events import END_OF_MESSAGE, response_checking_headers
from hostmux.http1.checks import reason_phrase
from hostmux.http1.connection import Http1Connection
from hostmux.http1.events import (
    NEED_DATA,
    Data,
    Event,
    LocalProtocolError,
    Pending,
    RemoteProtocolError,
    Role,
)
from hostmux.http1.pages import Page
from hostmux.relay.outcomes import Abort
from hostmux.relay.records import RecordBuilder
from hostmux.relay.streams import ByteStream
from hostmux.relay.transport_stream import Kicked, TransportStream

# Queued browser output is written once it reaches this size (a bounded buffer).
FLUSH_BYTES: Final = 64 * 1024


class Resume(enum.Enum):
    RESUME = "resume"


# What next_event returns when the express path hands its request back.
RESUME: Final = Resume.RESUME


class BrowserSide:
    """The browser's stream, the parser of its requests, and what is queued for it."""

    __slots__ = ("_out", "busy", "h", "handover", "send_timeout_s", "stalled", "stream")

    def __init__(
        self,
        stream: ByteStream,
        *,
        max_head_bytes: int,
        max_target_bytes: int,
        send_timeout_s: float,
    ) -> None:
        self.stream = stream
        self.h = Http1Connection(
            Role.SERVER, max_head_bytes=max_head_bytes, max_target_bytes=max_target_bytes
        )
        self.send_timeout_s = send_timeout_s
        self.stalled = False  # stopped reading the response: reset, not close
        self._out = bytearray()  # response bytes queued for the browser
        # The relay's express path (``TransportStream`` only): what it hands back to
        # the task (an event, or the error the parser raised), and whether it has
        # a request in flight (the task then resumes that first).
        self.handover: Event | Resume | RemoteProtocolError | None = None
        self.busy = False

    async def next_event(self) -> Event | Resume:
        """The browser's next event (a request head, or its close); reads as needed.

        ``RESUME``: the express path has a request in flight that the task must finish.
        """
        while True:
            handover = self.handover
            if handover is not None:
                self.handover = None
                if isinstance(handover, RemoteProtocolError):
                    raise handover
                return handover
            if self.busy:
                return RESUME
            event = self.h.next_event()
            if event is NEED_DATA:
                try:
                    data = await self.stream.receive()
                except Kicked:
                    continue
                except (ConnectionError, OSError):
                    if self.busy:  # the request in flight ends as the task's would
                        return RESUME
                    raise
                if self.busy or self.handover is not None:
                    assert isinstance(self.stream, TransportStream)
                    self.stream.unread(data)  # after what the express path left
                    continue
                self.h.receive_data(data)
                continue
            assert not isinstance(event, Pending), event  # PAUSED never happens here
            return event

    @property
    def queued(self) -> bool:
        return bool(self._out)

    async def send(self, event: Event, record: RecordBuilder) -> None:
        """Queue ``event`` for the browser; written out before the relay next waits."""
        data = self.h.send(event)
        if data:
            if isinstance(event, Data):
                record.bytes_out += len(event.data)
            if len(self._out) + len(data) < FLUSH_BYTES:
                self._out += data  # small pieces: batched into one write
                return
            if self._out:
                self.stream.write(bytes(self._out))
                self._out.clear()
            self.stream.write(data)  # large pieces go as they are: no copies
            await self.flush(record)

    async def flush(self, record: RecordBuilder) -> None:
        """Write what is queued in one go; wait (bounded) only if the browser is slow."""
        if self._out:
            self.stream.write(bytes(self._out))
            self._out.clear()
        if self.stream.must_drain():
            try:
                async with asyncio.timeout(self.send_timeout_s):
                    await self.stream.drain()
            except TimeoutError:
                record.note = "send timeout"
                self.stalled = True
                raise Abort() from None

    async def send_page(self, page: Page, *, head_only: bool) -> None:
        """Send a status page as the whole response (nothing, if one already started)."""
        try:
            data = self.h.send(
                response_checking_headers(page.status, reason_phrase(page.status), page.headers)
            )
            if not head_only:
                data += self.h.send(Data(page.body))
            data += self.h.send(END_OF_MESSAGE)
        except LocalProtocolError:
            return  # a response already started: closing is all that is left
        with contextlib.suppress(ConnectionError, OSError, TimeoutError):
            async with asyncio.timeout(self.send_timeout_s):
                await self.stream.send_all(data)

    def close(self) -> None:
        if self.stalled:
            # A browser that stopped reading would keep a graceful close
            # (and its queued bytes) waiting: reset it instead.
            self.stream.abort()
        else:
            self.stream.close()  # flushes what is queued (bounded by the stream)
