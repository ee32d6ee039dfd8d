"""The byte splice after a WebSocket ``101``: both directions copied until both end.

Rules: each direction half-closes its sink when its source ends (EOF travels
through the SSH channel); the connection is idle only when *neither*
direction moved for ``idle_timeout_s`` (an upgraded stream may be quiet one
way for a long time); every copy is one chunk at a time with back-pressure.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

from ._streams import ByteStream


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


async def splice(
    client: ByteStream, upstream: ByteStream, *, idle_timeout_s: float, counter: ByteCounter
) -> None:
    """Copy both ways until both ended; raises TimeoutError when idle, OSError on I/O failure."""
    idle = _IdleClock(idle_timeout_s)
    async with asyncio.TaskGroup() as tg:
        tg.create_task(_copy(client, upstream, idle, counter, inbound=True))
        tg.create_task(_copy(upstream, client, idle, counter, inbound=False))


async def _copy(
    source: ByteStream, sink: ByteStream, idle: _IdleClock, counter: ByteCounter, *, inbound: bool
) -> None:
    while True:
        try:
            async with asyncio.timeout(max(idle.remaining(), 0.0)):
                data = await source.receive()
        except TimeoutError:
            if idle.remaining() > 0:
                continue  # the other direction was active: not idle
            raise
        if not data:
            await sink.send_eof()
            return
        idle.last = time.monotonic()
        if inbound:
            counter.bytes_in += len(data)
        else:
            counter.bytes_out += len(data)
        await sink.send_all(data)
