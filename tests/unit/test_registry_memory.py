"""The in-memory registry on a fake clock: lease and reservation edges, exactly.

The integration suite runs every rule against Redis and this registry in real
time; here time moves only when a test says so, so the edges are exact: a
lease is live at ``lease_ttl_s - epsilon`` and lapsed at ``lease_ttl_s``, and
the reservation runs from the moment the lease lapsed, not from when someone
looked.
"""

from __future__ import annotations

import pytest

from router.registry.memory import MemoryRegistry
from router.registry.model import ClaimKind, NameTaken
from router.routing import NameState

from .asyncio_bounded import run

LEASE_S = 15.0
RESERVATION_S = 600.0
EPSILON = 1e-6


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_a_lease_lapses_exactly_at_its_ttl_into_a_reservation_from_that_moment() -> None:
    clock = FakeClock()
    registry = MemoryRegistry(reservation_s=RESERVATION_S, lease_ttl_s=LEASE_S, clock=clock)

    async def scenario() -> None:
        await registry.claim("app", "key-a", "router-a", "conn-1")
        clock.now += LEASE_S - EPSILON
        route = await registry.lookup("app")
        assert route is not None and route.state is NameState.HELD
        clock.now += 100.0  # nobody looked while the lease lapsed
        route = await registry.lookup("app")
        assert route is not None and route.state is NameState.RESERVED
        assert route.reserved_until == 1000.0 + LEASE_S + RESERVATION_S
        clock.now = 1000.0 + LEASE_S + RESERVATION_S - EPSILON
        with pytest.raises(NameTaken) as refused:
            await registry.claim("app", "key-b", "router-b", "conn-2")
        assert refused.value.state is NameState.RESERVED
        clock.now += EPSILON
        claim = await registry.claim("app", "key-b", "router-b", "conn-2")
        assert claim.kind is ClaimKind.NEW

    run(scenario())


def test_a_renewal_moves_the_lease_on_from_now() -> None:
    clock = FakeClock()
    registry = MemoryRegistry(reservation_s=0.0, lease_ttl_s=LEASE_S, clock=clock)

    async def scenario() -> None:
        first = await registry.claim("app", "key-a", "router-a", "conn-1")
        clock.now += LEASE_S / 3
        renewed = await registry.renew("app", "key-a", "router-a", "conn-1")
        assert (renewed.kind, renewed.generation) == (ClaimKind.KEPT, first.generation)
        route = await registry.lookup("app")
        assert route is not None
        assert route.holders[0].lease_expires == 1000.0 + LEASE_S / 3 + LEASE_S
        clock.now += LEASE_S  # no reservation: the lapsed name is free at once
        assert await registry.lookup("app") is None

    run(scenario())


def test_ids_with_spaces_are_refused_before_they_reach_the_store() -> None:
    registry = MemoryRegistry(reservation_s=RESERVATION_S)
    with pytest.raises(ValueError, match="connection id"):
        run(registry.claim("app", "key-a", "router-a", "conn 1"))
