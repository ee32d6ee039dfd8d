"""Keeping a router's leases alive: renew them all every lease_ttl_s / 3.

Renewing is also how a router re-asserts its names after the registry was
unreachable (or restarted empty): a lapsed lease is claimed again under the
usual rules, and a lease whose name another key took meanwhile, or that a
newer connection on this router replaced, is reported lost so the router
closes that tunnel at once.

A round with no lease to renew pings the registry instead (one PING), so
that a router holding no tunnel knows too whether the registry answers (its
/readyz and metrics say so); a round that renews sends nothing more.

The keeper records since when the registry has been unreachable; the router
decides from it when to stop serving (fail static for at most
name_reservation_s, issue 17) — this module only tells.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import NoReturn

from router.registry.model import (
    Lease,
    RegistryError,
    RegistryUnavailable,
    Renewal,
    RouteRegistry,
)

log = logging.getLogger(__name__)

# Reason: the schedule; two renewals may fail before a lease lapses.
RENEWALS_PER_TTL = 3


class LeaseKeeper:
    """Renews the leases ``leases()`` lists, for one router, until cancelled."""

    def __init__(
        self,
        registry: RouteRegistry,
        router_id: str,
        leases: Callable[[], Sequence[Lease]],
        on_lost: Callable[[RegistryError], None],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._registry = registry
        self._router_id = router_id
        self._leases = leases
        self._on_lost = on_lost
        self._clock = clock
        self.unavailable_since: float | None = None  # on ``clock``; None while reachable
        self.rounds = 0  # renewal rounds done, answered or not (for tests and logs)

    def __repr__(self) -> str:
        return (
            f"<LeaseKeeper router={self._router_id!r} rounds={self.rounds}"
            f" unavailable_since={self.unavailable_since}>"
        )

    async def renew_once(self) -> None:
        """One round: renew every lease (none: a ping); report lost ones; note reachability."""
        leases = self._leases()
        try:
            if leases:
                renewal = await self._registry.renew_all(self._router_id, leases)
            else:  # nothing to renew: the registry is asked for an answer all the same
                await self._registry.ping()
                renewal = Renewal(kept=(), lost=())
        except RegistryUnavailable as error:
            if self.unavailable_since is None:
                self.unavailable_since = self._clock()
                log.warning("registry unreachable, serving held tunnels only: %s", error)
        else:
            if self.unavailable_since is not None:
                log.warning("registry reachable again; leases re-asserted")
                self.unavailable_since = None
            for lost in renewal.lost:
                log.warning("lease lost: %s", lost)
                self._on_lost(lost)
        finally:
            self.rounds += 1

    async def run(self) -> NoReturn:
        """Renew every lease_ttl_s / RENEWALS_PER_TTL, forever.

        Resource handling: holds nothing between rounds; cancel it to stop.

        Error handling: an unreachable registry is recorded and retried next
        round; any other RegistryError is logged and retried the same way.
        """
        interval_s = self._registry.lease_ttl_s / RENEWALS_PER_TTL
        while True:
            try:
                await self.renew_once()
            except RegistryError as error:
                log.error("lease renewal failed: %s", error)
            await asyncio.sleep(interval_s)  # the renewal period, not a synchronisation
