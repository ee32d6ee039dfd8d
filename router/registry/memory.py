"""The route registry in one process's memory: the embedded default, no Redis.

The same rules as the Lua in ``router.registry.scripts``, step for step (the
integration tests run one rule suite against both), on an injected clock. Each
call runs without awaiting anything, so on one event loop it is atomic as a
script is in Redis.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from router.registry.model import (
    DEFAULT_LEASE_TTL_S,
    Claim,
    ClaimKind,
    Holder,
    Invalidation,
    Lease,
    LeaseLost,
    NameTaken,
    RegistryError,
    RegistryUnavailable,
    Renewal,
    Route,
    check_id,
)
from router.routing import NameState

# Reason: a route cache that falls this far behind must drop everything and resubscribe
# (Redis likewise disconnects a subscriber whose output buffer overflows).
MAX_PENDING_INVALIDATIONS = 10_000


@dataclass(slots=True)
class _Name:
    owner: str
    generation: int
    reserved_until: float = 0.0  # 0 while held
    holders: dict[str, tuple[str, float]] = field(default_factory=dict)  # router: (conn, expiry)


@dataclass(slots=True, eq=False)  # identity: each subscriber is its own
class _Subscriber:
    queue: asyncio.Queue[Invalidation] = field(
        default_factory=lambda: asyncio.Queue(MAX_PENDING_INVALIDATIONS)
    )
    overflowed: bool = False


class MemoryRegistry:
    """Names -> owner, generation and holders, kept in this process."""

    def __init__(
        self,
        *,
        reservation_s: float,
        lease_ttl_s: float = DEFAULT_LEASE_TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._reservation_s = reservation_s
        self._lease_ttl_s = lease_ttl_s
        self._clock = clock
        self._names: dict[str, _Name] = {}
        self._generation = 0
        self._subscribers: set[_Subscriber] = set()
        self._peers: dict[str, tuple[str, float]] = {}  # router id: (address, expiry)

    def __repr__(self) -> str:
        held = sum(1 for entry in self._names.values() if entry.holders)
        return f"<MemoryRegistry names={len(self._names)} held={held}>"

    @property
    def lease_ttl_s(self) -> float:
        return self._lease_ttl_s

    async def claim(self, name: str, owner: str, router_id: str, connection_id: str) -> Claim:
        return self._claim(name, owner, router_id, connection_id, renewing=False)

    async def renew(self, name: str, owner: str, router_id: str, connection_id: str) -> Claim:
        return self._claim(name, owner, router_id, connection_id, renewing=True)

    async def renew_all(self, router_id: str, leases: Sequence[Lease]) -> Renewal:
        kept: list[Claim] = []
        lost: list[RegistryError] = []
        for lease in leases:
            try:
                kept.append(
                    self._claim(
                        lease.name, lease.owner, router_id, lease.connection_id, renewing=True
                    )
                )
            except (NameTaken, LeaseLost) as error:
                lost.append(error)
        return Renewal(kept=tuple(kept), lost=tuple(lost))

    async def release(
        self, name: str, router_id: str, connection_id: str, *, reserve: bool = True
    ) -> bool:
        now = self._clock()
        if self._settle(name, now) is not NameState.HELD:
            return False
        entry = self._names[name]
        holder = entry.holders.get(router_id)
        if holder is None or holder[0] != connection_id:
            return False
        self._drop_holder(name, router_id, now, reserve=reserve)
        return True

    async def release_router(self, router_id: str) -> int:
        now = self._clock()
        released = 0
        for name in list(self._names):
            if self._settle(name, now) is NameState.HELD and router_id in self._names[name].holders:
                self._drop_holder(name, router_id, now)
                released += 1
        return released

    async def lookup(self, name: str) -> Route | None:
        if self._settle(name, self._clock()) is NameState.FREE:
            return None
        entry = self._names[name]
        holders = tuple(
            Holder(router_id=router, connection_id=conn, lease_expires=expires)
            for router, (conn, expires) in sorted(entry.holders.items())
        )
        return Route(
            name=name,
            owner=entry.owner,
            generation=entry.generation,
            holders=holders,
            reserved_until=None if holders else entry.reserved_until,
        )

    async def advertise(self, router_id: str, address: str, ttl_s: float) -> None:
        check_id("router id", router_id)
        self._peers[router_id] = (check_id("address", address), self._clock() + ttl_s)

    async def peer_address(self, router_id: str) -> str | None:
        found = self._peers.get(router_id)
        if found is None or found[1] <= self._clock():
            self._peers.pop(router_id, None)
            return None
        return found[0]

    async def ping(self) -> None:
        return None  # always reachable

    @asynccontextmanager
    async def invalidations(self) -> AsyncIterator[AsyncIterator[Invalidation]]:
        """Resource handling: the subscription ends when the block does.

        Error handling: a subscriber that fell MAX_PENDING_INVALIDATIONS behind
        gets RegistryUnavailable once it has read what was queued.
        """
        subscriber = _Subscriber()
        self._subscribers.add(subscriber)

        async def messages() -> AsyncIterator[Invalidation]:
            while True:
                if subscriber.overflowed and subscriber.queue.empty():
                    raise RegistryUnavailable("the invalidation subscriber fell behind")
                yield await subscriber.queue.get()

        try:
            yield messages()
        finally:
            self._subscribers.discard(subscriber)

    async def aclose(self) -> None:
        self._subscribers.clear()

    def _claim(
        self, name: str, owner: str, router_id: str, connection_id: str, *, renewing: bool
    ) -> Claim:
        check_id("owner", owner)
        check_id("router id", router_id)
        check_id("connection id", connection_id)
        now = self._clock()
        state = self._settle(name, now)
        entry = self._names.get(name)
        if entry is not None and entry.owner != owner:
            raise NameTaken(name, state)
        previous = entry.holders.get(router_id) if entry is not None else None
        kind, replaced = ClaimKind.NEW, None
        if previous is not None:
            if previous[0] == connection_id:
                kind = ClaimKind.KEPT
            elif renewing:
                raise LeaseLost(name, connection_id)
            else:
                kind, replaced = ClaimKind.REPLACED, previous[0]
        elif state is NameState.HELD:
            kind = ClaimKind.JOINED
        if entry is None:
            entry = self._names[name] = _Name(owner=owner, generation=0)
        entry.holders[router_id] = (connection_id, now + self._lease_ttl_s)
        entry.owner, entry.reserved_until = owner, 0.0
        if kind is not ClaimKind.KEPT:
            entry.generation = self._changed(name)
        return Claim(name, entry.generation, kind, replaced)

    def _settle(self, name: str, now: float) -> NameState:
        """Drop lapsed leases; a name left without holders is reserved from when they lapsed."""
        entry = self._names.get(name)
        if entry is None:
            return NameState.FREE
        lapsed = {r: exp for r, (_, exp) in entry.holders.items() if exp <= now}
        for router in lapsed:
            del entry.holders[router]
        if entry.holders:
            if lapsed:
                entry.generation = self._changed(name)
            return NameState.HELD
        if lapsed:
            return self._reserve(name, max(lapsed.values()), now)
        if entry.reserved_until > now:
            return NameState.RESERVED
        self._forget(name)
        return NameState.FREE

    def _drop_holder(self, name: str, router_id: str, now: float, *, reserve: bool = True) -> None:
        entry = self._names[name]
        del entry.holders[router_id]
        if entry.holders:
            entry.generation = self._changed(name)
        elif reserve:
            self._reserve(name, now, now)
        else:
            self._forget(name)

    def _reserve(self, name: str, since: float, now: float) -> NameState:
        until = since + self._reservation_s
        if until <= now:
            self._forget(name)
            return NameState.FREE
        entry = self._names[name]
        entry.reserved_until = until
        entry.generation = self._changed(name)
        return NameState.RESERVED

    def _forget(self, name: str) -> None:
        self._changed(name)
        del self._names[name]

    def _changed(self, name: str) -> int:
        self._generation += 1
        for subscriber in self._subscribers:
            try:
                subscriber.queue.put_nowait(Invalidation(name, self._generation))
            except asyncio.QueueFull:
                subscriber.overflowed = True
        return self._generation
