"""Running an asyncio scenario from a plain test function, under a hard deadline.

The suite's async tests run under trio (pytest-trio); the router's pieces are
asyncio, so their tests drive scenarios with ``asyncio.run``. The deadline only
trips on a hang: each scenario takes micro- to milliseconds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

DEADLINE_S = 10.0


def run(scenario: Coroutine[Any, Any, T], deadline_s: float = DEADLINE_S) -> T:
    """Run ``scenario`` to completion in a fresh event loop; TimeoutError after ``deadline_s``."""

    async def bounded() -> T:
        async with asyncio.timeout(deadline_s):
            return await scenario

    return asyncio.run(bounded())
