"""When to try again: jittered, capped exponential back-off (pure), and work a stop cuts short.

"Full jitter" (AWS architecture blog, 2015): the n-th delay is uniform in
[0, min(cap, base * 2**n)], so a router restart does not see every listener
reconnect in the same instant.

A connection that *lasted* (up at least ``stable_after_s``, ``LASTED_S`` by
default) resets the schedule, and for ``QUICK_WINDOW_S`` after it ended the
retries come quickly (``QUICK_RETRY_S``, jittered): a router restart is
over in a second or two, and its tunnels should be back as soon as it listens
again. A connection that did not last changes nothing, so a router that grants
and then drops (a crash loop, shedding under load) still sees the back-off
grow to ``cap_s``, as do repeated failures once the quick window has passed.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")

# A tunnel up this long was serving, not a router that grants and drops at
# once (crash loop, shedding): a handshake, the forward and the URL check take
# ~0.1 s on loopback and ~1 s across the world, so 5 s is well past them while
# still bounding a flapping router at one quick reconnect per listener per 5 s.
LASTED_S = 5.0
# After a connection that lasted, retries stay quick this long: a router
# restart (systemd, a rolling deploy of one process) listens again within a
# few seconds; past that the router is really gone and the schedule grows.
QUICK_WINDOW_S = 5.0
# The quick retries' delay range: the jitter spreads a router's listeners over
# 0.4 s, the top bounds how late a listener dials once the router listens
# (a refused connect costs the router host a RST, nothing more).
QUICK_RETRY_S = (0.1, 0.5)


@dataclass(slots=True)
class Backoff:
    base_s: float = 0.5
    cap_s: float = 30.0
    stable_after_s: float = LASTED_S
    attempt: int = 0
    _quick_until: float = field(default=-math.inf, repr=False)
    _random: random.Random = field(default_factory=random.Random, repr=False)
    _clock: Callable[[], float] = field(default=time.monotonic, repr=False)

    def next_delay(self) -> float:
        """The delay before the next attempt; each call advances the schedule."""
        if self._clock() < self._quick_until:
            return self._random.uniform(*QUICK_RETRY_S)
        ceiling = min(self.cap_s, self.base_s * (2 ** min(self.attempt, 32)))
        self.attempt += 1
        return self._random.uniform(0.0, ceiling) if self.attempt > 1 else min(self.base_s, ceiling)

    def connection_lasted(self, seconds: float) -> None:
        """Record how long the last connection stayed up (call when it ended)."""
        if seconds >= self.stable_after_s:
            self.attempt = 0
            self._quick_until = self._clock() + QUICK_WINDOW_S


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
