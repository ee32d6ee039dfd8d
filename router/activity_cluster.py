"""Idleness in a cluster: activity through the registry, one router deciding.

Rules (``router.activity`` has what one router counts):

1. Every router writes each name's last activity to the registry
   (``ActivityShare.merge``, the larger time wins) at most every
   ``WRITE_EVERY_S`` per name, and the first activity after a quiet spell at
   the next tick; a name a tunnel holds here is written when its tunnel comes
   up (or when the registry lost it).
2. One router at a time holds the activity lease (a Redis key with a TTL,
   renewed each round, like the ACME lock) and decides: a name whose
   cluster-wide last activity is older than ``idle_after_s`` plus the write
   delay (``WRITE_EVERY_S`` and a tick: the value may be that late) and that a
   router still holds (the route registry says so) gets one ``idle`` event; a
   newer activity time for an idle name one ``active`` event. So no router
   reports a name idle while another carries its traffic.
3. A name no router holds is forgotten (its activity and idle state) unless
   activity came since it was read; idle names are checked so once a minute.
4. A registry that cannot be reached is logged and tried again next tick;
   nothing here ever stops the router. A lease holder that dies is replaced
   once its lease lapses (``lease_ttl_s``).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

from hostmux.log import fields
from router.activity import Activity
from router.registry.activity_share import ActivityShare
from router.registry.model import RegistryError, Route

log = logging.getLogger("hostmux.activity")

# Reason: the rule: each router writes a name's activity at most this often.
WRITE_EVERY_S = 10.0
# Reason: names already idle are looked up this often to find those no router holds.
IDLE_RECHECK_S = 60.0


def lease_ttl_s(tick_s: float) -> float:
    """The lease outlives two missed rounds; a dead holder is replaced within this."""
    return max(3 * tick_s, 5.0)


class ClusterActivity:
    """This router's part: write its activity, read its names' state, decide when leading."""

    def __init__(
        self,
        activity: Activity,
        share: ActivityShare,
        lookup: Callable[[str], Awaitable[Route | None]],
        *,
        tick_s: float,
    ) -> None:
        self.activity = activity
        self.share = share
        self._lookup = lookup
        self.tick_s = tick_s
        self.leading = False
        self._rechecked: dict[str, float] = {}  # idle name -> when it was last looked up
        self._problem = False  # the last round failed (logged once until one succeeds)

    def __repr__(self) -> str:
        return f"<ClusterActivity leading={self.leading} {self.share!r}>"

    async def round(self, held: Sequence[str]) -> None:
        """One tick's registry work (rules 1-3); errors logged (rule 4)."""
        try:
            await self._write()
            await self._read(held)
            if self.activity.idle_after_s > 0:
                leading = await self.share.lock(lease_ttl_s(self.tick_s))
                if leading != self.leading:
                    log.info(fields("activity_lease", held=leading))
                self.leading = leading
                if leading:
                    await self._decide()
        except RegistryError as exc:
            if not self._problem:
                log.warning(fields("activity_registry_unavailable", error=str(exc)))
            self._problem = True
            return
        if self._problem:
            log.info(fields("activity_registry_back"))
        self._problem = False

    async def _write(self) -> None:
        now = self.activity.clock()
        due = {
            name: entry.last
            for name, entry in self.activity.names.items()
            if entry.dirty and now - entry.written >= WRITE_EVERY_S
        }
        if not due:
            return
        await self.share.merge(due)
        for name in due:
            entry = self.activity.names[name]
            entry.written, entry.dirty = now, False

    async def _read(self, held: Sequence[str]) -> None:
        last, idle = await self.share.read(held)
        for name, value, is_idle in zip(held, last, idle, strict=True):
            entry = self.activity.names.get(name)
            if entry is None:
                continue
            entry.idle = is_idle
            entry.cluster_last = value
            if value is None:  # the registry forgot a name held here: written next round
                entry.dirty, entry.written = True, 0.0

    async def _decide(self) -> None:
        activity = self.activity
        now = activity.clock()
        threshold = activity.idle_after_s + WRITE_EVERY_S + self.tick_s
        everything, idle = await self.share.everything()
        for name in list(self._rechecked):
            if name not in idle:
                del self._rechecked[name]
        for name, last in everything.items():
            idle_for = idle.get(name)
            if idle_for is not None:
                if last > idle_for:
                    await self.share.clear_idle(name)
                    activity.emit("active", name, {"last_activity": round(last, 3)})
                elif now - self._rechecked.setdefault(name, now) >= IDLE_RECHECK_S:
                    self._rechecked[name] = now
                    if not _held(await self._lookup(name)):
                        await self.share.forget(name, last)
                continue
            if now - last < threshold:
                continue
            if not _held(await self._lookup(name)):
                await self.share.forget(name, last)
                continue
            await self.share.set_idle(name, last)
            self._rechecked[name] = now
            activity.emit(
                "idle", name,
                {"last_activity": round(last, 3), "idle_after_s": activity.idle_after_s},
            )  # fmt: skip

    async def leave(self) -> None:
        """On shutdown: give the lease up so another router decides at once (best effort)."""
        try:
            if self.leading:
                await self.share.unlock()
        except RegistryError as exc:
            log.info(fields("activity_unlock_failed", error=str(exc)))
        finally:
            await self.share.aclose()


def _held(route: Route | None) -> bool:
    return route is not None and bool(route.holders)
