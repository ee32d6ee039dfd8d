"""Pools (``router.pool``): selection, back-off, membership and the affinity cookie, exactly.

The SSH channels are replaced by ``FakeChannel`` here (the integration tests,
``tests/integration/test_pools.py``, use real listeners, OpenSSH and apps).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest

from hostmux.http1 import ClientInfo
from hostmux.http1.events import Request
from hostmux.relay import Destination, UpstreamUnavailable
from router.pool import (
    COOKIE_NAME,
    Member,
    Pick,
    Pool,
    PoolSettings,
    check_member_id,
    cookie_attributes,
    cookie_token,
)
from router.routing import NameTaken, Offline
from router.tunnels import Tunnel, TunnelGateway, TunnelHub

from .asyncio_bounded import run

SETTINGS = PoolSettings(secret=b"k" * 32, backoff_s=10.0, open_timeout_s=0.05)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class FakeChannel:
    """What a channel offers a pool: ``on_lost``, called when it ends."""

    def __init__(self, member: str) -> None:
        self.member = member
        self.on_lost: Any = None

    def end(self) -> None:
        if self.on_lost is not None:
            self.on_lost()
            self.on_lost = None


def tunnel(name: str, owner: str = "alice", member: str = "", behaviour: str = "ok") -> Tunnel:
    async def open_stream(ip: str, port: int) -> Any:
        if behaviour == "refuse":
            raise UpstreamUnavailable("the tunnel client could not reach its app (refused)")
        if behaviour == "hang":
            await asyncio.Event().wait()
        return FakeChannel(member)

    made = Tunnel(name=name, owner=owner, peer=f"peer-{member}", open_stream=open_stream)
    made.member_id = member
    made.wants_pool = True
    return made


def pool_of(*members: str, clock: Clock | None = None) -> tuple[Pool, list[Tunnel]]:
    pool = Pool("web", SETTINGS, clock=clock or Clock())
    tunnels = [tunnel("web", member=m) for m in members]
    for t in tunnels:
        t.pool = pool
        pool.add(t, t.member_id)
    return pool, tunnels


def test_fresh_connections_go_round_robin_over_equal_members() -> None:
    pool, _ = pool_of("a", "b", "c")
    assert [pool.pick().member_id for _ in range(6)] == ["a", "b", "c", "a", "b", "c"]  # type: ignore[union-attr]


def test_the_member_with_fewest_outstanding_wins() -> None:
    pool, _ = pool_of("a", "b", "c")
    pool.members[0].outstanding = 2
    pool.members[1].outstanding = 1
    assert pool.pick().member_id == "c"  # type: ignore[union-attr]
    pool.members[2].outstanding = 5
    assert pool.pick().member_id == "b"  # type: ignore[union-attr]


def test_a_failed_member_is_skipped_for_the_backoff_then_tried_again() -> None:
    clock = Clock()
    pool, _ = pool_of("a", "b", clock=clock)
    pool.failed(pool.members[0])
    assert {pool.pick().member_id for _ in range(4)} == {"b"}  # type: ignore[union-attr]
    clock.now += SETTINGS.backoff_s
    assert {pool.pick().member_id for _ in range(4)} == {"a", "b"}  # type: ignore[union-attr]


def test_when_every_member_backs_off_they_are_tried_anyway() -> None:
    pool, _ = pool_of("a", "b")
    for member in pool.members:
        pool.failed(member)
    assert pool.pick() is not None


def test_a_member_coming_again_replaces_its_old_tunnel() -> None:
    pool, (a, b) = pool_of("a", "b")
    again = tunnel("web", member="a")
    assert pool.add(again, "a") is a
    assert [m.tunnel for m in pool.members] == [b, again]
    assert pool.rename(again, "b") is b  # a late HOSTMUX_POOL_MEMBER naming another member
    assert [m.tunnel for m in pool.members] == [again]


async def opened(pool: Pool, port: int) -> tuple[FakeChannel, Member]:
    stream, member = await pool.open_stream("192.0.2.1", port)
    assert isinstance(stream, FakeChannel)
    return stream, member


def test_open_counts_channels_until_they_end() -> None:
    run(_open_counts())


async def _open_counts() -> None:
    pool, _ = pool_of("a", "b")
    first, member = await opened(pool, 1000)
    second, _ = await opened(pool, 1001)
    assert {first.member, second.member} == {"a", "b"}
    assert [m.outstanding for m in pool.members] == [1, 1]
    first.end()
    first.end()  # once only
    assert member.outstanding == 0
    third, _ = await opened(pool, 1002)
    assert third.member == first.member  # the one with nothing outstanding


@pytest.mark.parametrize("behaviour", ["refuse", "hang"])
def test_a_failing_member_is_backed_off_and_the_next_one_serves(behaviour: str) -> None:
    run(_failing_member(behaviour))


async def _failing_member(behaviour: str) -> None:
    clock = Clock()
    pool = Pool("web", SETTINGS, clock=clock)
    bad, good = tunnel("web", member="bad", behaviour=behaviour), tunnel("web", member="good")
    pool.add(bad, "bad")
    pool.add(good, "good")
    served = [(await opened(pool, 1))[0].member for _ in range(4)]
    assert served == ["good"] * 4
    assert pool.members[0].failures == 1  # tried once, then skipped while backing off


def test_every_member_failing_is_one_clear_error() -> None:
    pool = Pool("web", SETTINGS, clock=Clock())
    for name in ("x", "y"):
        pool.add(tunnel("web", member=name, behaviour="refuse"), name)
    with pytest.raises(UpstreamUnavailable, match=r"no member of the pool 'web'.*refused"):
        run(pool.open_stream("192.0.2.1", 1))


def test_member_ids_from_clients_are_bounded() -> None:
    assert check_member_id("3f2a9c") == "3f2a9c"
    for bad in ("", "a b", "x" * 65, "é", "a\nb"):
        assert check_member_id(bad) is None


def test_cookie_tokens_belong_to_one_name_and_member() -> None:
    web, other = Pool("web", SETTINGS), Pool("other", SETTINGS)
    assert web.token_for("a") != web.token_for("b")
    assert web.token_for("a") != other.token_for("a")  # not replayable into another name
    assert Pool("web", PoolSettings(secret=b"z" * 32)).token_for("a") != web.token_for("a")
    assert cookie_token([(b"cookie", b"x=1; hostmux_pool=abc; y=2")]) == b"abc"
    assert cookie_token([(b"cookie", b"x=1")]) is None
    assert cookie_attributes(True).endswith(b"; Secure")
    assert b"Domain" not in cookie_attributes(True) and b"HttpOnly" in cookie_attributes(False)


def test_a_pick_sets_its_members_cookie_unless_the_request_had_it() -> None:
    run(_pick_cookie())


async def _pick_cookie() -> None:
    pool, _ = pool_of("a", "b")
    pick = Pick(pool, "192.0.2.1", 1, None, cookie_attributes(False), None)
    await pick.open()
    assert pick.member is not None
    headers = pick.response_headers([(b"content-type", b"text/plain")])
    assert headers[-1] == (
        b"set-cookie",
        COOKIE_NAME + b"=" + pick.member.token + b"; Path=/; HttpOnly; SameSite=Lax",
    )
    member = pick.member
    sticky = Pick(pool, "192.0.2.1", 2, member, cookie_attributes(False), None)
    for _ in range(3):
        stream = await sticky.open()
        assert stream.member == member.member_id  # type: ignore[attr-defined]
    assert sticky.response_headers([]) == []


# -- the hub: claims, joins, releases -----------------------------------------------


def hub() -> TunnelHub:
    made = TunnelHub(domain="example.org", scheme="https", public_port=443, reservation_s=60)
    made.pool_settings = SETTINGS
    return made


def test_the_first_tunnel_decides_and_the_owner_adds_members() -> None:
    h = hub()
    a, b = tunnel("web", member="a"), tunnel("web", member="b")
    h.claim(a)
    b.wants_pool = False  # a tunnel of the owner at a pool's name joins, said or not
    h.claim(b)
    assert a.pool is b.pool and a.pool is not None
    assert [t.member_id for t in h.tunnels()] == ["a", "b"]
    assert b.lease_id == a.lease_id  # one lease per pool and router (the registry's holder)
    with pytest.raises(NameTaken):
        h.claim(tunnel("web", owner="mallory", member="m"))
    assert len(h.tunnels()) == 2


def test_without_pool_a_new_tunnel_replaces_the_old_one() -> None:
    h = hub()
    old, new = tunnel("web", member="a"), tunnel("web", member="b")
    old.wants_pool = new.wants_pool = False
    h.claim(old)
    h.claim(new)
    assert h.tunnels() == [new] and new.pool is None
    h.release(old)  # late: changes nothing
    assert h.routes.lookup("web") is new


def test_a_member_leaving_keeps_the_name_served_by_the_others() -> None:
    h = hub()
    a, b = tunnel("web", member="a"), tunnel("web", member="b")
    h.claim(a)
    h.claim(b)
    events: list[str] = []
    h.observers.append(lambda event, *_: events.append(event))
    h.release(a)  # the head
    assert h.routes.lookup("web") is b and h.tunnels() == [b]
    assert events == []
    h.release(b)
    assert isinstance(h.routes.lookup("web"), Offline) and events == ["tunnel_down"]


def test_a_pool_requested_after_the_forward_makes_the_name_a_pool() -> None:
    h = hub()
    first = tunnel("web", member="")
    first.wants_pool = False
    h.claim(first)
    assert first.pool is None
    h.pool_requested(first, "m1")  # OpenSSH: the env arrives on the session, later
    assert first.pool is not None and first.member_id == "m1"
    second = tunnel("web", member="")
    second.wants_pool = False
    h.claim(second)
    assert len(h.tunnels()) == 2
    h.kick("web", "test")  # kicking a name closes every member (none has a close here)


def test_the_gateway_sends_a_pools_requests_through_a_pick() -> None:
    h = hub()
    h.pool_settings = PoolSettings(secret=b"k" * 32, affinity="cookie")
    a, b = tunnel("web", member="a"), tunnel("web", member="b")
    h.claim(a)
    h.claim(b)
    gateway = TunnelGateway(h)
    assert a.pool is not None
    token = a.pool.members[1].token
    request = Request(
        b"GET", b"/", [(b"host", b"web.example.org"), (b"cookie", COOKIE_NAME + b"=" + token)]
    )
    client = ClientInfo(peer_ip="192.0.2.1", peer_port=5, scheme="https")
    routed = gateway.route("web.example.org", request, "rid", client)
    assert isinstance(routed, Destination) and routed.key == "web.example.org"
    picks: Counter[str] = Counter()

    async def opens() -> None:
        for _ in range(3):
            done = gateway.route("web.example.org", request, "rid", client)
            assert isinstance(done, Destination)
            picks[(await done.open()).member] += 1  # type: ignore[attr-defined]

    run(opens())
    assert picks == {"b": 3}


def test_a_reload_retunes_the_pools_there_are_and_those_to_come() -> None:
    h = hub()
    a = tunnel("web", member="a")
    h.claim(a)
    h.retune_pools(affinity="cookie", backoff_s=2.0, open_timeout_s=1.0)
    assert a.pool is not None and a.pool.settings.affinity == "cookie"
    assert a.pool.settings.backoff_s == 2.0 and a.pool.settings.secret == SETTINGS.secret
    later = tunnel("other", member="b")
    h.claim(later)
    assert later.pool is not None and later.pool.settings.open_timeout_s == 1.0


def test_a_pool_tunnel_replacing_a_plain_one_makes_the_name_a_pool() -> None:
    h = hub()
    plain, pooled, joining = tunnel("web"), tunnel("web", member="p"), tunnel("web", member="q")
    plain.wants_pool = False
    h.claim(plain)
    h.claim(pooled)  # replaces, as a plain tunnel would; says pool
    assert h.routes.lookup("web") is pooled and pooled.pool is not None
    joining.wants_pool = False
    h.claim(joining)
    assert h.tunnels() == [pooled, joining]
    h.release(pooled)
    h.release(joining)  # all gone: reserved; the next first tunnel decides again
    again = tunnel("web", member="r")
    again.wants_pool = False
    h.claim(again)
    assert again.pool is None and h.tunnels() == [again]


def test_a_replaced_or_departed_member_gives_kept_alive_connections_a_new_key() -> None:
    """Rule 1's epoch: a kept-alive connection must not reuse a channel of a member's old
    tunnel (a renewed certificate's swap closes it), so the Destination's key changes."""
    h = hub()
    a, b = tunnel("web", member="a"), tunnel("web", member="b")
    h.claim(a)
    h.claim(b)
    gateway = TunnelGateway(h)
    request = Request(b"GET", b"/", [(b"host", b"web.example.org")])
    client = ClientInfo(peer_ip="192.0.2.1", peer_port=5, scheme="https")

    def key() -> str:
        routed = gateway.route("web.example.org", request, "rid", client)
        assert isinstance(routed, Destination)
        return routed.key

    first = key()
    assert key() == first  # steady: one upstream for the connection's requests
    h.claim(tunnel("web", member="a"))  # member a comes again (a swap)
    swapped = key()
    assert swapped != first
    h.release(b)  # member b goes
    assert key() not in (first, swapped)
