"""One router-link connection as an asyncio protocol: bytes in, HTTP/1.1 events out.

Both ends of the link (``link``: the sender, ``peer_server``: the holder)
used to read through ``asyncio.StreamReader`` and write through
``StreamWriter``. Profiled under wrk -c64 (bench/OPTIMISATION.md), those
layers, a task woken per chunk in each direction, and a ``Data`` event built
per chunk written were a large share of what forwarding cost on top of a
local request. ``LinkProtocol`` is the TLS transport's protocol itself:

- what arrives is fed straight to the connection's ``Http1Connection``
  (llhttp parses the chunked framing); a reader takes events with
  ``next_event``, which waits only when llhttp has nothing parsed;
- or, while a ``sink`` is set (the holder piping a stream to its SSH
  channel), each arrival is handed to the sink at once, in the transport's
  callback: no task wakes for it, and every link connection's bytes of one
  loop turn reach the SSH connection's coalesced write together;
- writes go to the transport; ``chunk`` frames a chunk of the (always
  chunked) stream body without building an event.

Back-pressure: with more than ``HIGH_WATER_BYTES`` fed but not yet taken
(``next_event`` has not reached ``NEED_DATA``), reading pauses, as
StreamReader pauses at twice its limit; a sink pauses reading itself while
its channel is full. Writes wait in ``drain`` while the transport has paused
its writer.

Error handling: a connection lost (or a protocol error in what the peer
sent) makes ``next_event``, ``write`` and ``drain`` raise
``ConnectionResetError``, the one error both ends treat as a broken link.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, cast

from hostmux.http1 import NEED_DATA, Http1Connection, ProtocolError, Role
from hostmux.relay import READ_CHUNK_BYTES

# Reason: what StreamReader(limit=READ_CHUNK_BYTES) held before pausing (twice its limit).
HIGH_WATER_BYTES = 2 * READ_CHUNK_BYTES


def chunk(data: bytes) -> bytes:
    """``data`` as one chunk of a chunked body (the link's bodies are always chunked)."""
    return b"%x\r\n%b\r\n" % (len(data), data)


class LinkProtocol(asyncio.Protocol):
    """A link connection's transport, its HTTP/1.1 state and its waiters (either end)."""

    def __init__(
        self,
        role: Role,
        *,
        max_head_bytes: int = 16 * 1024,
        on_made: Callable[[LinkProtocol], None] | None = None,
    ) -> None:
        self.h = Http1Connection(role, max_head_bytes=max_head_bytes)
        self.transport: asyncio.Transport | None = None
        # Pipe mode: called after each arrival instead of waking a reader (holder).
        self.sink: Callable[[], None] | None = None
        self._on_made = on_made
        self._fed = 0  # bytes fed since the reader last drained every event
        self._read_paused = False
        self._write_paused = False
        self._lost: BaseException | None = None
        self._read_waiter: asyncio.Future[None] | None = None
        self._drain_waiter: asyncio.Future[None] | None = None

    def __repr__(self) -> str:
        return f"<LinkProtocol {self.h!r} lost={self._lost is not None}>"

    # -- the transport's callbacks ------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports do not subclass asyncio.Transport; both have its methods)
        self.transport = cast(asyncio.Transport, transport)
        if self._on_made is not None:
            self._on_made(self)

    def data_received(self, data: bytes) -> None:
        try:
            self.h.receive_data(data)
        except ProtocolError as error:  # (llhttp reports most errors at next_event)
            self._fail(ConnectionResetError(f"link: {error}"))
            return
        if self.sink is not None:
            self.sink()
            return
        self._fed += len(data)
        if self._fed > HIGH_WATER_BYTES and not self._read_paused and self.transport is not None:
            self._read_paused = True
            self.transport.pause_reading()
        _wake(self._read_waiter)

    def eof_received(self) -> bool | None:
        self.h.receive_data(b"")
        if self.sink is not None:
            self.sink()
        _wake(self._read_waiter)
        return None  # TLS has no half-close: the transport closes

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc or ConnectionResetError("link closed"))

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        _wake(self._drain_waiter)

    def _fail(self, error: BaseException) -> None:
        if self._lost is None:
            self._lost = error
        if self.transport is not None:
            self.transport.abort()
        if self.sink is not None:
            self.sink()  # it finds the connection lost and ends its stream
        _wake(self._read_waiter)
        _wake(self._drain_waiter)

    # -- reading ------------------------------------------------------------------

    @property
    def lost(self) -> BaseException | None:
        return self._lost

    async def next_event(self) -> Any:
        """The peer's next event (ConnectionResetError if the link broke)."""
        h = self.h
        while True:
            try:
                event = h.next_event()
            except ProtocolError as error:
                raise ConnectionResetError(f"link: {error}") from None
            if event is not NEED_DATA:
                return event
            self._fed = 0
            if self._read_paused and self.transport is not None:
                self._read_paused = False
                self.transport.resume_reading()
            if self._lost is not None:
                raise self._reset()
            waiter = self._read_waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self._read_waiter = None

    def pause_reading(self) -> None:
        if self.transport is not None and not self._read_paused:
            self._read_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and self._read_paused:
            self._read_paused = False
            self.transport.resume_reading()

    # -- writing ------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        transport = self.transport
        if self._lost is not None or transport is None or transport.is_closing():
            raise self._reset()
        transport.write(data)

    def must_drain(self) -> bool:
        """Whether a writer should wait: the transport paused it, or the link is gone."""
        return self._write_paused or self._lost is not None

    async def drain(self) -> None:
        while self._write_paused and self._lost is None:
            waiter = self._drain_waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self._drain_waiter = None
        if self._lost is not None:
            raise self._reset()

    def usable(self) -> bool:
        """Neither lost nor closing (an idle connection the peer closed is lost)."""
        transport = self.transport
        return self._lost is None and transport is not None and not transport.is_closing()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def _reset(self) -> ConnectionResetError:
        if isinstance(self._lost, ConnectionResetError):
            return ConnectionResetError(*self._lost.args)
        return ConnectionResetError(f"link: {self._lost or 'closed'}")


def _wake(waiter: asyncio.Future[None] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)
