"""The byte splice after a WebSocket ``101``: both directions copied until both end.

Rules: each direction half-closes its sink when its source ends (EOF travels
through the SSH channel), and once both close frames have passed, the first
side to end ends the splice (the server closes first, RFC 6455); the
connection is idle only when *neither* direction moved for ``idle_timeout_s``
(an upgraded stream may be quiet one way for a long time); every copy is one
chunk at a time with back-pressure.

Shutdown: when ``going_away`` is set, both copies stop at the next frame
edge (``_frame_edges``), the browser gets a close frame with code 1001 and
the app gets one too, within ``goodbye_s``; then both sides are half-closed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Protocol

from hostmux.http1.frame_edges import FrameEdges, close_frame
from hostmux.relay.streams import ByteStream

log = logging.getLogger("hostmux.relay")

# Time to finish the frame in flight and say goodbye on shutdown; a frame
# that takes longer is cut (the WebSocket then closes with 1006, as on a crash).
GOODBYE_S = 2.0


class ByteCounter(Protocol):
    bytes_in: int
    bytes_out: int


class _IdleClock:
    """Shared last-activity time of both splice directions."""

    __slots__ = ("last", "limit_s")

    def __init__(self, limit_s: float) -> None:
        self.limit_s = limit_s
        self.last = time.monotonic()

    def remaining(self) -> float:
        return self.last + self.limit_s - time.monotonic()


class _Direction:
    """One way of the splice: where from, where to, and its frame edges."""

    __slots__ = ("edges", "inbound", "sink", "source")

    def __init__(self, source: ByteStream, sink: ByteStream, *, inbound: bool) -> None:
        self.source = source
        self.sink = sink
        self.inbound = inbound  # browser -> app (frames to the app are masked)
        self.edges = FrameEdges()


async def splice(
    client: ByteStream,
    upstream: ByteStream,
    *,
    idle_timeout_s: float,
    counter: ByteCounter,
    going_away: asyncio.Event | None = None,
    goodbye_s: float = GOODBYE_S,
    client_rest: bytes = b"",
    upstream_rest: bytes = b"",
) -> None:
    """Copy both ways until both ended; raises TimeoutError when idle, OSError on I/O failure.

    ``client_rest`` and ``upstream_rest``: bytes each side sent right behind the
    upgrade (read already while parsing HTTP), passed on first.
    """
    idle = _IdleClock(idle_timeout_s)
    directions = (
        _Direction(client, upstream, inbound=True),
        _Direction(upstream, client, inbound=False),
    )
    for direction, rest in zip(directions, (client_rest, upstream_rest), strict=True):
        if rest:
            await _pass_on(direction, rest, counter)
    async with asyncio.TaskGroup() as tg:
        copies = [tg.create_task(_copy(d, idle, counter)) for d in directions]

        def closing_handshake_done(_: object) -> None:
            # RFC 6455 7.1.1: once both close frames have passed and one side
            # ended, the server closes the TCP connection. A TLS browser stream
            # cannot be half-closed, so waiting for the browser's own end would
            # make every client wait out its close timeout.
            if all(d.edges.saw_close for d in directions):
                for copy in copies:
                    copy.cancel()

        for copy in copies:
            copy.add_done_callback(closing_handshake_done)
        if going_away is not None:
            goodbye = tg.create_task(_goodbye_on(going_away, copies, directions, goodbye_s))

            def copies_ended(_: object) -> None:
                if all(copy.done() for copy in copies) and not going_away.is_set():
                    goodbye.cancel()  # both ended by themselves: nothing to say goodbye to

            for copy in copies:
                copy.add_done_callback(copies_ended)


async def splice_until_ended(
    client: ByteStream,
    upstream: ByteStream,
    *,
    peer: str,
    idle_timeout_s: float,
    counter: ByteCounter,
    going_away: asyncio.Event | None = None,
    client_rest: bytes = b"",
    upstream_rest: bytes = b"",
) -> None:
    """``splice``, whose usual ends (a side lost, the idle timeout) are logged, not raised.

    (Here, not in the relay: mypyc, which compiles the relay, cannot compile ``except*``.)
    """
    try:
        await splice(
            client, upstream, idle_timeout_s=idle_timeout_s, counter=counter,
            going_away=going_away, client_rest=client_rest, upstream_rest=upstream_rest,
        )  # fmt: skip
    except* (ConnectionError, OSError, TimeoutError) as group:
        log.debug("websocket splice %s ended: %r", peer, group.exceptions)


async def _copy(direction: _Direction, idle: _IdleClock, counter: ByteCounter) -> None:
    source = direction.source
    while True:
        try:
            async with asyncio.timeout(max(idle.remaining(), 0.0)):
                data = await source.receive()
        except TimeoutError:
            if idle.remaining() > 0:
                continue  # the other direction was active: not idle
            raise
        if not data:
            await direction.sink.send_eof()
            return
        idle.last = time.monotonic()
        await _pass_on(direction, data, counter)


async def _pass_on(direction: _Direction, data: bytes, counter: ByteCounter) -> None:
    if direction.inbound:
        counter.bytes_in += len(data)
    else:
        counter.bytes_out += len(data)
    # Followed before the write: a copy cancelled in send_all has queued all of it.
    direction.edges.feed(data)
    await direction.sink.send_all(data)


async def _goodbye_on(
    going_away: asyncio.Event,
    copies: list[asyncio.Task[None]],
    directions: tuple[_Direction, ...],
    goodbye_s: float,
) -> None:
    await going_away.wait()
    for copy in copies:
        copy.cancel()
    await asyncio.wait(copies)
    async with asyncio.timeout(goodbye_s):
        async with asyncio.TaskGroup() as tg:
            for direction, copy in zip(directions, copies, strict=True):
                if copy.cancelled():  # a direction that had ended has nothing to say
                    tg.create_task(_say_goodbye(direction))


async def _say_goodbye(direction: _Direction) -> None:
    """Finish the frame in flight, send a 1001 close frame (unless one went), half-close."""
    source, sink, edges = direction.source, direction.sink, direction.edges
    while not edges.at_edge:
        data = await source.receive()
        if not data:
            break
        taken = edges.feed(data, stop_at_edge=True)
        await sink.send_all(data[:taken])  # anything after the edge is dropped
    if edges.at_edge and not edges.saw_close:
        await sink.send_all(close_frame(masked=direction.inbound))
    await sink.send_eof()
