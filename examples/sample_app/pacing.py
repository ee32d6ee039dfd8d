"""Paced event streams for the sample app: ``/events?paced=ID`` sends its first
event at once and each next one only when ``POST /events/next?paced=ID`` allows
it, so a test knows that an event got through before the next was even sent.

The streams open now live in this process, by their client's ID.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import trio

# Cap on paced streams open at once: the app keeps a counter for each.
MAX_PACED_STREAMS = 100


class PacingRefused(Exception):
    """The ID is in use, or too many paced streams are open."""


@dataclass
class Pacer:
    """How many events after the first its stream may send so far."""

    allowed: int = 0
    changed: trio.Event = field(default_factory=trio.Event)

    def allow_one(self) -> None:
        self.allowed += 1
        self.changed.set()
        self.changed = trio.Event()

    async def turn(self, index: int) -> None:
        """Returns once event ``index`` (from 0: the first goes at once) is allowed."""
        while self.allowed < index:
            await self.changed.wait()


_open: dict[str, Pacer] = {}


@contextmanager
def paced_stream(stream_id: str) -> Iterator[Pacer]:
    """The pacer of stream ``stream_id`` while the stream is open."""
    if stream_id in _open:
        raise PacingRefused(f"paced stream {stream_id!r} is already open")
    if len(_open) >= MAX_PACED_STREAMS:
        raise PacingRefused(f"more than {MAX_PACED_STREAMS} paced streams")
    pacer = _open[stream_id] = Pacer()
    try:
        yield pacer
    finally:
        del _open[stream_id]


def allow_next(stream_id: str) -> int | None:
    """Let stream ``stream_id`` send one more event: how many it may send now
    after the first, or None when no such stream is open."""
    pacer = _open.get(stream_id)
    if pacer is None:
        return None
    pacer.allow_one()
    return pacer.allowed
