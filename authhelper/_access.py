"""When each session's access is asked of the portal again (the re-check schedule).

A pushed revocation can be lost (the helper was restarting, the router was
down), so the helper does not rely on it alone: a session whose last answer
from the portal is older than ``access_recheck_s`` is checked again before its
next request goes through. The rules:

1. A login is a check (the portal just said yes).
2. A session with no recorded check (the helper restarted) is due at once.
3. Requests of one session that find it due wait for one shared check.
4. The portal says no (or no longer knows the grant): the session is revoked.
5. The portal cannot be reached: the last answer stands and the check is tried
   again after ``RETRY_UNREACHABLE_S`` — a portal that is down cannot log
   anyone out either, and the apps keep working while it restarts.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

# While the portal is unreachable, one re-check per session per this long.
RETRY_UNREACHABLE_S = 10.0
# Past this many sessions, entries that are due anyway are forgotten (bounded memory).
_MAX_TRACKED = 100_000


class AccessChecks:
    """sid → when the portal last answered for it; one check in flight per sid."""

    def __init__(self, recheck_s: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._recheck_s = recheck_s
        self._clock = clock
        self._checked: dict[str, float] = {}
        self._inflight: dict[str, asyncio.Future[bool]] = {}

    def __repr__(self) -> str:
        return f"<AccessChecks every {self._recheck_s}s tracked={len(self._checked)}>"

    def is_due(self, sid: str) -> bool:
        last = self._checked.get(sid)
        return last is None or self._clock() - last >= self._recheck_s

    def record(self, sid: str, *, retry_in_s: float | None = None) -> None:
        """A check answered now (or, with ``retry_in_s``, failed: try again that soon)."""
        now = self._clock()
        if retry_in_s is not None:
            now -= max(0.0, self._recheck_s - retry_in_s)
        self._checked[sid] = now
        if len(self._checked) > _MAX_TRACKED:
            self._checked = {
                s: t for s, t in self._checked.items() if self._clock() - t < self._recheck_s
            }

    def forget(self, sid: str) -> None:
        self._checked.pop(sid, None)

    async def check(self, sid: str, ask: Callable[[], Awaitable[bool]]) -> bool:
        """``ask()``'s answer, shared by every request of ``sid`` that waits meanwhile."""
        pending = self._inflight.get(sid)
        if pending is None:
            pending = asyncio.ensure_future(ask())
            self._inflight[sid] = pending
            pending.add_done_callback(lambda _: self._inflight.pop(sid, None))
        return await asyncio.shield(pending)
