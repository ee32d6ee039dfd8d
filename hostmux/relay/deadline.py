"""A reusable timeout scope: ``asyncio.timeout`` for a task that waits again and again.

A keep-alive connection waits many times per request (for the next request,
for the app's answer), each under a timeout of a minute or more that almost
never fires. ``asyncio.timeout`` schedules and cancels a timer for every wait,
which measured ~8% of the router's time on small requests. A ``Deadline``
keeps one timer for its task and only moves a number on each wait:

* entering ``within(seconds)`` sets the expiry; the timer is re-armed only if
  it would fire too late for it;
* a timer that fires early (an older, sooner expiry) re-arms itself for the
  current expiry; one that fires between waits does nothing;
* one that fires past the expiry cancels the task, and leaving the scope turns
  that cancellation into ``TimeoutError``, exactly as ``asyncio.timeout``
  does (a cancellation from elsewhere still propagates as cancellation).

Scopes of one ``Deadline`` must not nest, and it serves the task it was made
in only; ``close`` drops the timer when the task is done with it.

A relay whose task ends while its connection idles (``park``: the express
path serves it from callbacks) keeps its deadline: the expiry then calls the
``wake`` it was given instead of cancelling a task, and ``resume`` hands the
wait, with what is left of it, to the task started again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import TracebackType
from typing import Final

# Timers may fire up to a clock tick early (uvloop's clock ticks in ms): that
# close to the expiry counts as expired, rather than re-arming for a moment.
_EARLY_S: Final = 0.001


class Deadline:
    """One task's reusable timeout: ``with deadline.within(60): await ...``."""

    __slots__ = (
        "_cancelling", "_expires", "_fired", "_handle", "_loop", "_task", "_wake", "_when",
    )  # fmt: skip

    def __init__(self) -> None:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("a Deadline belongs to a task")
        self._task: asyncio.Task[None] | None = task  # None while parked
        self._loop = task.get_loop()
        self._expires: float | None = None  # None: no wait in progress
        # The armed timer and when it fires (kept here: uvloop's ``call_at`` for a time
        # already past returns a plain ``Handle``, which has no ``when()``).
        self._handle: asyncio.Handle | None = None
        self._when = 0.0
        self._fired = False
        self._cancelling = 0
        self._wake: Callable[[], None] | None = None  # parked: called at the expiry

    def __repr__(self) -> str:
        return f"<Deadline expires={self._expires} armed={self._handle is not None}>"

    def within(self, seconds: float) -> Deadline:
        """The scope of one wait that may take at most ``seconds``."""
        assert self._expires is None, "Deadline scopes do not nest"
        expires = self._loop.time() + seconds
        self._expires = expires
        if self._handle is None or self._when > expires:
            self._arm(expires)
        return self

    def move(self, seconds: float) -> None:
        """Inside a scope: the wait in progress may now last ``seconds`` from now (the
        express path answers a request while its task waits for the next one)."""
        expires = self._loop.time() + seconds
        self._expires = expires
        handle = self._handle
        if handle is None or self._when > expires:
            self._arm(expires)

    def park(self, seconds: float, wake: Callable[[], None]) -> None:
        """The task stops waiting without ending the wait: at its expiry (now +
        ``seconds``, or as ``move`` and ``expire`` change it) ``wake`` is called."""
        assert self._expires is None, "Deadline scopes do not nest"
        self._wake = wake
        self._task = None  # ended: not kept alive by its deadline
        self.move(seconds)

    def resume(self, task: asyncio.Task[None]) -> float:
        """``task`` takes over a parked wait: the seconds left of it (0 or less: expired)."""
        self._task = task
        self._wake = None
        expires, self._expires = self._expires, None
        return 0.0 if expires is None else expires - self._loop.time()

    def __enter__(self) -> None:
        assert self._task is not None, "a parked Deadline is resumed first"
        self._cancelling = self._task.cancelling()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._expires = None  # the timer stays armed for the next wait
        if self._fired:
            self._fired = False
            assert self._task is not None
            if self._task.uncancel() <= self._cancelling and exc_type is asyncio.CancelledError:
                raise TimeoutError from exc

    def expire(self) -> None:
        """End the wait in progress now, as if its time were up (TimeoutError in the task)."""
        if self._expires is not None:
            self._expires = self._loop.time()
            self._arm(self._expires)

    def close(self) -> None:
        """Drop the timer (the task is done waiting)."""
        self._wake = None
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _arm(self, when: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._when = when
        self._handle = self._loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._handle = None
        expires = self._expires
        if expires is None:
            return  # between waits: the next wait arms it again
        if self._loop.time() + _EARLY_S < expires:
            self._arm(expires)  # armed for an earlier wait's expiry
            return
        wake = self._wake
        if wake is not None:  # parked: no task waits; the wake starts one
            self._wake = None
            wake()
            return
        if self._task is None:
            return  # parked, and its wake was called already
        self._fired = True
        self._task.cancel()
