"""The route registry's rules, against a real redis-server and the in-memory registry.

Each rule test runs twice (``backend``): on Redis with two clients standing for
two routers, and on one MemoryRegistry that both "routers" share. Expiry is
real time with small TTLs; a lease or reservation that must run out is waited
for by polling ``lookup`` under a deadline. The scenarios are asyncio (the
registry is), driven from sync tests under a hard deadline.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis.asyncio

from router.registry.memory import MemoryRegistry
from router.registry.model import (
    ClaimKind,
    Invalidation,
    Lease,
    LeaseLost,
    NameTaken,
    RegistryError,
    RegistryUnavailable,
    Route,
    RouteRegistry,
)
from router.registry.redis_store import RedisRegistry
from router.registry.renewal import LeaseKeeper
from router.routing import NameState
from router.routing import NameTaken as RoutingNameTaken

from ..unit.asyncio_bounded import run
from .redis_server import RedisServer

# Reason: rule tests must not see a reservation run out while they look at it.
LONG_S = 600.0
# Reason: expiry tests wait this out a few times; long enough for a loaded 2-core machine.
SHORT_S = 0.4
# Reason: how long a test waits for something that must happen within a TTL or two.
WAIT_S = 5.0
# Reason: every scenario's hard limit (each takes well under a second when healthy).
SCENARIO_S = 15.0
# Reason: the race check: enough rounds to catch an unatomic claim, still quick.
RACE_ROUNDS = 200


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@dataclass
class Backend:
    kind: str
    url: str | None  # None: the in-memory registry
    prefix: str

    @asynccontextmanager
    async def pair(
        self, *, reservation_s: float = LONG_S, lease_ttl_s: float = LONG_S
    ) -> AsyncIterator[tuple[RouteRegistry, RouteRegistry]]:
        """Two routers' views of one registry."""
        if self.url is None:
            shared = MemoryRegistry(reservation_s=reservation_s, lease_ttl_s=lease_ttl_s)
            yield shared, shared
            return
        a, b = (
            RedisRegistry.from_url(
                self.url, prefix=self.prefix, reservation_s=reservation_s, lease_ttl_s=lease_ttl_s
            )
            for _ in range(2)
        )
        try:
            yield a, b
        finally:
            await a.aclose()
            await b.aclose()


@pytest.fixture(params=["redis", "memory"])
def backend(request: pytest.FixtureRequest) -> Backend:
    prefix = f"test-{uuid.uuid4().hex[:8]}:"
    if request.param == "memory":
        return Backend("memory", None, prefix)
    server: RedisServer = request.getfixturevalue("redis_server")
    return Backend("redis", server.url, prefix)


def scenario(body: Callable[[], Awaitable[None]]) -> None:
    async def wrapped() -> None:
        await body()

    run(wrapped(), SCENARIO_S)


async def wait_for_route(
    registry: RouteRegistry, name: str, done: Callable[[Route | None], bool]
) -> Route | None:
    """Poll ``lookup`` until ``done`` holds (an expiry has no event to wait on)."""
    deadline = time.monotonic() + WAIT_S
    while True:
        route = await registry.lookup(name)
        if done(route):
            return route
        assert time.monotonic() < deadline, f"{name}: still {route} after {WAIT_S} s"
        await asyncio.sleep(0.02)


# --- rules 1-4 across routers -------------------------------------------------------------


def test_a_claimed_name_looks_up_to_its_owner_and_tunnel(backend: Backend) -> None:
    async def body() -> None:
        async with backend.pair() as (a, _):
            assert await a.lookup("app") is None
            claim = await a.claim("app", "key-a", "router-a", "conn-1")
            assert claim.kind is ClaimKind.NEW
            route = await a.lookup("app")
            assert route is not None
            assert (route.owner, route.generation, route.state) == (
                "key-a",
                claim.generation,
                NameState.HELD,
            )
            assert [(h.router_id, h.connection_id) for h in route.holders] == [
                ("router-a", "conn-1")
            ]
            assert route.reserved_until is None

    scenario(body)


def test_another_key_is_refused_while_held_and_while_reserved(backend: Backend) -> None:
    async def body() -> None:
        async with backend.pair() as (a, b):
            first = await a.claim("app", "key-a", "router-a", "conn-1")
            with pytest.raises(NameTaken) as held:
                await b.claim("app", "key-b", "router-b", "conn-2")
            assert held.value.state is NameState.HELD
            assert isinstance(held.value, RoutingNameTaken)  # the router's one handler
            assert "key-a" not in str(held.value) and "held" in str(held.value)

            assert await a.release("app", "router-a", "conn-1")
            route = await b.lookup("app")
            assert route is not None and route.state is NameState.RESERVED
            assert route.owner == "key-a" and route.reserved_until is not None
            assert route.generation > first.generation
            with pytest.raises(NameTaken) as reserved:
                await b.claim("app", "key-b", "router-b", "conn-2")
            assert reserved.value.state is NameState.RESERVED
            assert "key-a" not in str(reserved.value) and "reserved" in str(reserved.value)

            # The owner comes back through the other router: a reserved name is its own.
            back = await b.claim("app", "key-a", "router-b", "conn-3")
            assert back.kind is ClaimKind.NEW and back.generation > route.generation

    scenario(body)


def test_a_job_that_ended_frees_its_name_once_no_router_holds_it(backend: Backend) -> None:
    """release(reserve=False): a certificate expired. With another router still holding the
    name only that hold goes; the last one frees the name at once (no reservation)."""

    async def body() -> None:
        async with backend.pair() as (a, b):
            await a.claim("job", "instance:job", "router-a", "conn-1")
            joined = await b.claim("job", "instance:job", "router-b", "conn-2")
            assert await a.release("job", "router-a", "conn-1", reserve=False)
            route = await b.lookup("job")
            assert route is not None and route.state is NameState.HELD
            assert [h.router_id for h in route.holders] == ["router-b"]
            assert route.generation > joined.generation
            assert not await a.release("job", "router-b", "conn-1", reserve=False)  # not its own

            assert await b.release("job", "router-b", "conn-2", reserve=False)
            assert await a.lookup("job") is None  # free: not RESERVED for its owner
            taken = await a.claim("job", "someone-else", "router-a", "conn-3")
            assert taken.kind is ClaimKind.NEW

    scenario(body)


def test_the_owner_replaces_its_tunnel_and_a_late_release_is_a_no_op(backend: Backend) -> None:
    async def body() -> None:
        async with backend.pair() as (a, _):
            first = await a.claim("app", "key-a", "router-a", "conn-1")
            second = await a.claim("app", "key-a", "router-a", "conn-2")
            assert second.kind is ClaimKind.REPLACED
            assert second.replaced_connection == "conn-1"
            assert second.generation > first.generation
            assert not await a.release("app", "router-a", "conn-1")  # rule 4
            route = await a.lookup("app")
            assert route is not None and route.generation == second.generation
            assert [h.connection_id for h in route.holders] == ["conn-2"]

            again = await a.claim("app", "key-a", "router-a", "conn-2")  # re-assertion
            assert again.kind is ClaimKind.KEPT and again.generation == second.generation

    scenario(body)


def test_the_owner_joins_from_a_second_router_one_generation_per_change(
    backend: Backend,
) -> None:
    async def body() -> None:
        async with backend.pair() as (a, b):
            first = await a.claim("app", "key-a", "router-a", "conn-1")
            joined = await b.claim("app", "key-a", "router-b", "conn-9")
            assert joined.kind is ClaimKind.JOINED and joined.replaced_connection is None
            route = await a.lookup("app")
            assert route is not None
            assert [(h.router_id, h.connection_id) for h in route.holders] == [
                ("router-a", "conn-1"),
                ("router-b", "conn-9"),
            ]
            assert route.generation == joined.generation > first.generation
            assert route.holder_on("router-b") is not None

            assert await a.release("app", "router-a", "conn-1")
            after = await b.lookup("app")
            assert after is not None and after.state is NameState.HELD
            assert [h.router_id for h in after.holders] == ["router-b"]
            assert after.generation > route.generation

    scenario(body)


def test_release_router_drops_only_that_routers_holders(backend: Backend) -> None:
    async def body() -> None:
        async with backend.pair() as (a, b):
            await a.claim("one", "key-a", "router-a", "c1")
            await a.claim("both", "key-a", "router-a", "c2")
            await b.claim("both", "key-a", "router-b", "c3")
            await b.claim("other", "key-b", "router-b", "c4")
            assert await a.release_router("router-a") == 2
            one, both, other = [await b.lookup(n) for n in ("one", "both", "other")]
            assert one is not None and one.state is NameState.RESERVED
            assert both is not None and [h.router_id for h in both.holders] == ["router-b"]
            assert other is not None and [h.connection_id for h in other.holders] == ["c4"]
            assert await a.release_router("router-a") == 0

    scenario(body)


# --- leases and reservations in time -----------------------------------------------------


def test_a_lapsed_lease_reserves_the_name_then_frees_it(backend: Backend) -> None:
    async def body() -> None:
        async with backend.pair(reservation_s=SHORT_S, lease_ttl_s=SHORT_S) as (a, b):
            claim = await a.claim("app", "key-a", "router-a", "conn-1")
            held = await a.lookup("app")
            assert held is not None
            lease_expires = held.holders[0].lease_expires
            # router-a "died": nobody renews. The lease lapses into a reservation.
            reserved = await wait_for_route(
                b, "app", lambda r: r is None or r.state is NameState.RESERVED
            )
            if reserved is not None:  # a slow machine may look only after it ran out
                assert reserved.generation > claim.generation
                assert reserved.reserved_until == pytest.approx(lease_expires + SHORT_S)
                with pytest.raises(NameTaken):
                    await b.claim("app", "key-b", "router-b", "conn-2")
            await wait_for_route(b, "app", lambda r: r is None)
            taken = await b.claim("app", "key-b", "router-b", "conn-2")
            assert taken.kind is ClaimKind.NEW

    scenario(body)


def test_renewing_keeps_a_lease_past_its_ttl(backend: Backend) -> None:
    async def body() -> None:
        async with backend.pair(reservation_s=LONG_S, lease_ttl_s=SHORT_S) as (a, b):
            claim = await a.claim("app", "key-a", "router-a", "conn-1")
            end = time.monotonic() + 3 * SHORT_S
            while time.monotonic() < end:  # renew at a third of the TTL, as the router will
                renewed = await a.renew("app", "key-a", "router-a", "conn-1")
                assert renewed.kind is ClaimKind.KEPT
                await asyncio.sleep(SHORT_S / 3)
            route = await b.lookup("app")
            assert route is not None and route.state is NameState.HELD
            assert route.generation == claim.generation  # renewals change nothing

    scenario(body)


def test_renew_reclaims_a_lapsed_lease_and_reports_lost_ones(backend: Backend) -> None:
    async def body() -> None:
        async with backend.pair(reservation_s=SHORT_S, lease_ttl_s=SHORT_S) as (a, b):
            await a.claim("mine", "key-a", "router-a", "conn-1")
            await a.claim("stolen", "key-a", "router-a", "conn-2")
            # Everything lapses (as while Redis was unreachable) and another key takes one.
            await wait_for_route(b, "stolen", lambda r: r is None)
            await b.claim("stolen", "key-b", "router-b", "conn-5")
            await a.claim("replaced", "key-a", "router-a", "conn-3")
            await a.claim("replaced", "key-a", "router-a", "conn-4")  # conn-3 is stale
            renewal = await a.renew_all(
                "router-a",
                [
                    Lease("mine", "key-a", "conn-1"),
                    Lease("stolen", "key-a", "conn-2"),
                    Lease("replaced", "key-a", "conn-3"),
                ],
            )
            assert [(c.name, c.kind) for c in renewal.kept] == [("mine", ClaimKind.NEW)]
            taken, superseded = renewal.lost
            assert isinstance(taken, NameTaken) and taken.name == "stolen"
            assert isinstance(superseded, LeaseLost) and superseded.name == "replaced"
            with pytest.raises(NameTaken):
                await a.renew("stolen", "key-a", "router-a", "conn-2")

    scenario(body)


# --- concurrency and invalidations -------------------------------------------------------


def test_two_routers_racing_two_keys_for_a_name_give_it_to_exactly_one(
    backend: Backend,
) -> None:
    async def body() -> None:
        async with backend.pair() as (a, b):
            for round_ in range(RACE_ROUNDS):
                name = f"race-{round_}"
                outcomes = await asyncio.gather(
                    a.claim(name, "key-a", "router-a", "conn-a"),
                    b.claim(name, "key-b", "router-b", "conn-b"),
                    return_exceptions=True,
                )
                won = [o for o in outcomes if not isinstance(o, BaseException)]
                lost = [o for o in outcomes if isinstance(o, NameTaken)]
                assert (len(won), len(lost)) == (1, 1), outcomes
                route = await a.lookup(name)
                assert route is not None and len(route.holders) == 1

    scenario(body)


def test_the_same_key_joining_from_two_routers_at_once_holds_through_both(
    backend: Backend,
) -> None:
    async def body() -> None:
        async with backend.pair() as (a, b):
            for round_ in range(RACE_ROUNDS // 4):
                name = f"join-{round_}"
                claims = await asyncio.gather(
                    a.claim(name, "key-a", "router-a", "conn-a"),
                    b.claim(name, "key-a", "router-b", "conn-b"),
                )
                assert sorted(c.kind.value for c in claims) == ["joined", "new"]
                low, high = sorted(c.generation for c in claims)
                assert high > low
                route = await a.lookup(name)
                assert route is not None and route.generation == high
                assert [h.router_id for h in route.holders] == ["router-a", "router-b"]

    scenario(body)


def test_every_change_is_announced_with_its_generation(backend: Backend) -> None:
    async def body() -> None:
        async with backend.pair() as (a, b), b.invalidations() as changes:
            claim = await a.claim("app", "key-a", "router-a", "conn-1")
            assert await anext(changes) == Invalidation("app", claim.generation)
            await a.release("app", "router-a", "conn-1")
            route = await a.lookup("app")
            assert route is not None
            assert await anext(changes) == Invalidation("app", route.generation)

    scenario(body)


# --- the lease keeper ----------------------------------------------------------------------


def test_the_lease_keeper_holds_names_past_the_ttl_and_reports_a_lost_one(
    backend: Backend,
) -> None:
    async def body() -> None:
        async with backend.pair(reservation_s=LONG_S, lease_ttl_s=SHORT_S) as (a, b):
            lost: list[RegistryError] = []
            lost_one = asyncio.Event()

            def on_lost(error: RegistryError) -> None:
                lost.append(error)
                lost_one.set()

            leases = [Lease("app", "key-a", "conn-1"), Lease("web", "key-a", "conn-2")]
            for lease in leases:
                await a.claim(lease.name, lease.owner, "router-a", lease.connection_id)
            keeper = LeaseKeeper(a, "router-a", lambda: leases, on_lost)
            async with asyncio.TaskGroup() as tasks:
                running = tasks.create_task(keeper.run())
                started = time.monotonic()
                await wait_for_route(  # rounds are the keeper's own clock: wait out 2 TTLs
                    b, "app", lambda _: time.monotonic() - started > 2 * SHORT_S
                )
                for name in ("app", "web"):
                    route = await b.lookup(name)
                    assert route is not None and route.state is NameState.HELD, name
                # A newer connection on router-a takes "web" over: the keeper must say so.
                await b.claim("web", "key-a", "router-a", "conn-3")
                async with asyncio.timeout(WAIT_S):
                    await lost_one.wait()
                running.cancel()
            assert len(lost) == 1 and isinstance(lost[0], LeaseLost)
            assert lost[0].name == "web" and keeper.unavailable_since is None

    scenario(body)


def test_the_lease_keeper_reasserts_leases_when_redis_comes_back_empty(tmp_path: Path) -> None:
    first = RedisServer(tmp_path)
    servers = [first]

    async def body() -> None:
        registry = RedisRegistry.from_url(
            first.url, prefix="keep:", reservation_s=LONG_S, timeout_s=0.5
        )
        lost: list[RegistryError] = []
        lease = Lease("app", "key-a", "conn-1")
        keeper = LeaseKeeper(registry, "router-a", lambda: [lease], lost.append)
        try:
            claim = await registry.claim("app", "key-a", "router-a", "conn-1")
            await keeper.renew_once()
            assert keeper.unavailable_since is None
            first.stop()
            await keeper.renew_once()
            assert keeper.unavailable_since is not None  # the router fails static from here
            servers.append(RedisServer(tmp_path, port=first.port))  # back, and empty
            assert await registry.lookup("app") is None
            await keeper.renew_once()
            assert keeper.unavailable_since is None and lost == []
            route = await registry.lookup("app")
            assert route is not None and route.owner == "key-a"
            assert [(h.router_id, h.connection_id) for h in route.holders] == [
                ("router-a", "conn-1")
            ]
            # The fresh Redis's counter starts at its clock: tokens never repeat.
            assert route.generation > claim.generation
        finally:
            await registry.aclose()

    try:
        scenario(body)
    finally:
        for server in servers:
            server.stop()


def test_the_lease_keeper_pings_only_when_it_has_no_lease_to_renew(tmp_path: Path) -> None:
    """A router with no tunnel still learns that Redis went and came back (a PING per
    round); one with leases sends its renewal and nothing more."""
    first = RedisServer(tmp_path)
    servers = [first]

    async def pings_and_renewals(stats: redis.asyncio.Redis) -> tuple[int, int]:
        info = await stats.info("commandstats")
        return (
            int(info.get("cmdstat_ping", {}).get("calls", 0)),
            int(info.get("cmdstat_evalsha", {}).get("calls", 0)),
        )

    async def body() -> None:
        registry = RedisRegistry.from_url(
            first.url, prefix="ping:", reservation_s=LONG_S, timeout_s=0.5
        )
        leases: list[Lease] = []
        keeper = LeaseKeeper(registry, "router-a", lambda: leases, lambda _: None)
        stats = redis.asyncio.from_url(first.url)
        try:
            await stats.config_resetstat()
            await keeper.renew_once()
            assert keeper.unavailable_since is None
            assert await pings_and_renewals(stats) == (1, 0)
            await registry.claim("app", "key-a", "router-a", "conn-1")
            leases.append(Lease("app", "key-a", "conn-1"))
            await keeper.renew_once()  # the first loads the renewal script (NOSCRIPT, LOAD)
            await stats.config_resetstat()
            await keeper.renew_once()
            assert await pings_and_renewals(stats) == (0, 1)  # the renewal, no PING
            leases.clear()
            await stats.aclose()
            first.stop()
            await keeper.renew_once()
            assert keeper.unavailable_since is not None
            servers.append(RedisServer(tmp_path, port=first.port))
            await keeper.renew_once()
            assert keeper.unavailable_since is None
        finally:
            await stats.aclose()
            await registry.aclose()

    try:
        scenario(body)
    finally:
        for server in servers:
            server.stop()


# --- Redis only ------------------------------------------------------------------------------


def test_two_prefixes_on_one_redis_do_not_see_each_other(redis_server: RedisServer) -> None:
    async def body() -> None:
        one = RedisRegistry.from_url(redis_server.url, prefix="one:", reservation_s=LONG_S)
        two = RedisRegistry.from_url(redis_server.url, prefix="two:", reservation_s=LONG_S)
        try:
            async with two.invalidations() as changes:
                await one.claim("app", "key-a", "router-a", "conn-1")
                assert await two.lookup("app") is None
                await two.claim("app", "key-b", "router-b", "conn-2")  # no NameTaken
                # two's channel carries its own change only, not one's earlier one.
                assert (await anext(changes)).name == "app"
                route = await one.lookup("app")
                assert route is not None and route.owner == "key-a"
        finally:
            await one.aclose()
            await two.aclose()

    scenario(body)


def test_abandoned_names_leave_no_keys_behind(redis_server: RedisServer) -> None:
    prefix = f"gone-{uuid.uuid4().hex[:8]}:"

    async def body() -> None:
        registry = RedisRegistry.from_url(
            redis_server.url, prefix=prefix, reservation_s=SHORT_S, lease_ttl_s=SHORT_S
        )
        raw = redis.asyncio.from_url(redis_server.url, decode_responses=True)
        try:
            await registry.claim("app", "key-a", "router-a", "conn-1")
            assert len(await raw.keys(f"{prefix}*")) == 4  # name, holders, router, generation
            # Nobody looks the name up again: Redis itself must expire it.
            deadline = time.monotonic() + WAIT_S
            while (keys := await raw.keys(f"{prefix}*")) != [f"{prefix}generation"]:
                assert time.monotonic() < deadline, keys
                await asyncio.sleep(0.05)
        finally:
            await registry.aclose()
            await raw.aclose()

    scenario(body)


def test_scripts_reload_after_the_server_forgets_them(redis_server: RedisServer) -> None:
    async def body() -> None:
        registry = RedisRegistry.from_url(redis_server.url, prefix="flush:", reservation_s=1.0)
        raw = redis.asyncio.from_url(redis_server.url)
        try:
            await registry.claim("app", "key-a", "router-a", "conn-1")
            await raw.script_flush()  # as after a Redis restart: EVALSHA answers NOSCRIPT
            assert await registry.release("app", "router-a", "conn-1")
        finally:
            await registry.aclose()
            await raw.aclose()

    scenario(body)


@pytest.mark.parametrize("fault", ["stopped", "stalled"])
def test_an_unreachable_redis_is_an_error_within_the_timeout_not_a_hang(
    tmp_path: Path, fault: str
) -> None:
    server = RedisServer(tmp_path)
    timeout_s = 0.5

    async def body() -> None:
        registry = RedisRegistry.from_url(
            server.url, prefix="down:", reservation_s=LONG_S, timeout_s=timeout_s
        )
        try:
            await registry.claim("app", "key-a", "router-a", "conn-1")
            if fault == "stopped":
                server.stop()
            else:
                server.pause()
            started = time.monotonic()
            with pytest.raises(RegistryUnavailable, match="registry lookup"):
                await registry.lookup("app")
            # One try and one retry, each bounded by the socket timeout.
            assert time.monotonic() - started < 4 * timeout_s + 1.0
        finally:
            server.stop()
            await registry.aclose()

    try:
        scenario(body)
    finally:
        server.stop()


@pytest.mark.parametrize("fault", ["stopped", "stalled"])
def test_a_lost_subscription_is_an_error_so_caches_are_dropped(tmp_path: Path, fault: str) -> None:
    server = RedisServer(tmp_path)
    timeout_s = 0.3

    async def body() -> None:
        registry = RedisRegistry.from_url(
            server.url, prefix="sub:", reservation_s=LONG_S, timeout_s=timeout_s
        )
        try:
            async with registry.invalidations() as changes:
                claim = await registry.claim("app", "key-a", "router-a", "conn-1")
                assert await anext(changes) == Invalidation("app", claim.generation)
                if fault == "stopped":
                    server.stop()
                else:
                    server.pause()
                started = time.monotonic()
                with pytest.raises(RegistryUnavailable, match="invalidations"):
                    await anext(changes)
                # stalled: found by an unanswered keep-alive PING, within a few timeouts
                assert time.monotonic() - started < 4 * timeout_s + 1.0
        finally:
            server.stop()
            await registry.aclose()

    try:
        scenario(body)
    finally:
        server.stop()
