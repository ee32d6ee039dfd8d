"""When to try again: jittered, capped exponential back-off (pure), and work a stop cuts short.

"Full jitter" (AWS architecture blog, 2015): the n-th delay is uniform in
[0, min(cap, base * 2**n)], so a router restart does not see every listener
reconnect in the same instant. A connection that stayed up for
``stable_after_s`` resets the schedule, so a flapping router is not hammered
while a brief blip is retried at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(slots=True)
class Backoff:
    base_s: float = 0.5
    cap_s: float = 30.0
    stable_after_s: float = 60.0
    attempt: int = 0
    _random: random.Random = field(default_factory=random.Random, repr=False)

    def next_delay(self) -> float:
        """The delay before the next attempt; each call advances the schedule."""
        ceiling = min(self.cap_s, self.base_s * (2 ** min(self.attempt, 32)))
        self.attempt += 1
        return self._random.uniform(0.0, ceiling) if self.attempt > 1 else min(self.base_s, ceiling)

    def connection_lasted(self, seconds: float) -> None:
        """Record how long the last connection stayed up."""
        if seconds >= self.stable_after_s:
            self.attempt = 0


async def unless_stopped(work: Coroutine[Any, Any, T], stop: asyncio.Event) -> T | None:
    """Run ``work`` unless ``stop`` is set first; then cancel it and return None."""
    task = asyncio.create_task(work)
    stopper = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    return None if task.cancelled() else task.result()
