"""``Deadline``: a reusable ``asyncio.timeout`` — fires like it, costs one timer per task.

Plain functions driving asyncio scenarios with ``asyncio.run`` under a hard
deadline (the suite's async tests run under trio). Timeouts under test are
``SHORT_S`` and met by futures that never resolve, so they fire on their own;
nothing sleeps to synchronise.
"""

from __future__ import annotations

import asyncio
from typing import TypeVar

import pytest

from hostmux.relay import Deadline

from .asyncio_bounded import run

T = TypeVar("T")

SHORT_S = 0.02  # a timeout under test
LONG_S = 60.0  # a timeout that must not fire during a test


def test_a_wait_longer_than_its_time_raises_timeout_error() -> None:
    async def scenario() -> float:
        deadline = Deadline()
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(TimeoutError), deadline.within(SHORT_S):
            await loop.create_future()  # never resolves
        return loop.time() - started

    assert run(scenario()) >= SHORT_S * 0.9


def test_waits_that_finish_in_time_leave_the_task_uncancelled() -> None:
    async def scenario() -> tuple[int, int]:
        deadline = Deadline()
        loop = asyncio.get_running_loop()
        results = 0
        for n in range(100):
            future: asyncio.Future[int] = loop.create_future()
            loop.call_soon(future.set_result, n)
            with deadline.within(LONG_S):
                results += await future
        task = asyncio.current_task()
        assert task is not None
        deadline.close()
        return results, task.cancelling()

    assert run(scenario()) == (sum(range(100)), 0)


def test_a_short_wait_after_long_ones_still_fires_on_time() -> None:
    """The timer armed for the long waits would fire too late: the short wait re-arms it."""

    async def scenario() -> None:
        deadline = Deadline()
        loop = asyncio.get_running_loop()
        for _ in range(3):
            future: asyncio.Future[None] = loop.create_future()
            loop.call_soon(future.set_result, None)
            with deadline.within(LONG_S):
                await future
        with pytest.raises(TimeoutError), deadline.within(SHORT_S):
            await loop.create_future()

    run(scenario())


def test_a_long_wait_after_a_short_one_outlives_the_early_timer() -> None:
    """The timer armed for the short wait fires early for the long one and re-arms."""

    async def scenario() -> str:
        deadline = Deadline()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        loop.call_soon(future.set_result, None)
        with deadline.within(SHORT_S):
            await future
        answer: asyncio.Future[str] = loop.create_future()
        # Answered after the short wait's expiry has passed, well before the long one's.
        loop.call_later(SHORT_S * 3, answer.set_result, "answered")
        with deadline.within(LONG_S):
            return await answer

    assert run(scenario()) == "answered"


def test_a_cancellation_from_outside_stays_a_cancellation() -> None:
    async def scenario() -> bool:
        loop = asyncio.get_running_loop()
        started = asyncio.Event()

        async def waiter() -> None:
            deadline = Deadline()
            with deadline.within(LONG_S):
                started.set()
                await loop.create_future()

        task = asyncio.create_task(waiter())
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return task.cancelled()

    assert run(scenario()) is True


def test_the_deadline_can_be_used_again_after_it_fired() -> None:
    async def scenario() -> str:
        deadline = Deadline()
        loop = asyncio.get_running_loop()
        with pytest.raises(TimeoutError), deadline.within(SHORT_S):
            await loop.create_future()
        answer: asyncio.Future[str] = loop.create_future()
        loop.call_soon(answer.set_result, "still works")
        with deadline.within(LONG_S):
            return await answer

    assert run(scenario()) == "still works"


def test_a_deadline_needs_a_task() -> None:
    with pytest.raises(RuntimeError):
        Deadline()


def test_an_expiry_already_past_then_a_longer_wait_works_under_uvloop() -> None:
    """uvloop's ``call_at`` for a past time gives a plain ``Handle`` (no ``when()``): a
    wait whose time ran out while parked, followed by the next, must still work."""
    import uvloop

    async def scenario() -> None:
        deadline = Deadline()
        loop = asyncio.get_running_loop()
        woken = loop.create_future()
        deadline.park(LONG_S, lambda: woken.set_result(True))
        deadline.move(-1.0)  # already past: the wake comes at once
        assert await woken is True
        task = asyncio.current_task()
        assert task is not None
        left = deadline.resume(task)
        assert left <= 0
        with deadline.within(left):  # armed in the past; left at once (nothing awaited)
            pass
        with deadline.within(LONG_S):  # the next wait finds that plain Handle still armed
            await asyncio.sleep(0)  # the early timer fires, re-arms for this wait
            deadline.move(LONG_S)
        with pytest.raises(TimeoutError), deadline.within(SHORT_S):
            await loop.create_future()  # and the deadline still fires on time
        deadline.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(asyncio.wait_for(scenario(), 30))
