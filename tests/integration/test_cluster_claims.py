"""Routers claim names through a shared route registry (issue 17, step 2).

Real parts: Debian's redis-server on a free loopback port, router processes,
stock OpenSSH ``ssh -R`` clients. The registry's state is read from Redis
itself (the holders hash, see docs/cluster.md), polled under a deadline.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import redis
import trio

from .cluster_world import holders
from .conftest import Router, Stack, public_key_of
from .redis_server import RedisServer

# Reason: SIGTERM must release at once (the issue's ~1 s), far below the 15 s lease.
RELEASE_WITHIN_S = 1.5
# Reason: the registry's 2 s timeout and one retry, plus a loaded 2-core machine.
REFUSAL_WITHIN_S = 20.0


async def clustered(stack: Stack, server: RedisServer, router_id: str, *keys: Path) -> Router:
    router = await stack.start_router("--registry", server.url, "--router-id", router_id)
    for key in keys:
        router.authorize(public_key_of(key))
    return router


async def test_two_routers_share_ownership_and_sigterm_releases_at_once(
    stack: Stack, redis_server: RedisServer
) -> None:
    app = await stack.start_app()
    alice, mallory = stack.new_key("alice"), stack.new_key("mallory")
    one = await clustered(stack, redis_server, "r1", alice, mallory)
    two = await clustered(stack, redis_server, "r2", alice, mallory)

    await stack.openssh_tunnel(one, alice, "demo", app.port)
    assert set(holders(redis_server, "demo")) == {"r1"}
    assert (await one.get("demo", "/")).status_code == 200

    # Another key is refused on the other router, with today's reason.
    mark = len(two.proc.lines)
    thief = await stack.openssh_tunnel(two, mallory, "demo", app.port, wait=False)
    assert await thief.wait_exit() != 0
    await two.proc.wait_for(
        r"event=forward_refused .*reason=.*'demo' is in use by another key", start=mark
    )
    # Router 2 serves only its own tunnels in this step: the name is not served there.
    assert (await two.get("demo", "/")).status_code == 404

    # The owner joins on router 2: both routers hold it, both serve it.
    await stack.openssh_tunnel(two, alice, "demo", app.port)
    assert set(holders(redis_server, "demo")) == {"r1", "r2"}
    assert (await two.get("demo", "/")).status_code == 200

    # SIGTERM on router 1: its lease goes now, not at lease expiry (15 s).
    sent = trio.current_time()
    one.proc.process.terminate()
    await one.proc.wait_for(r"event=registry_released router=r1 names=1")
    assert set(holders(redis_server, "demo")) == {"r2"}
    assert trio.current_time() - sent < RELEASE_WITHIN_S
    assert await one.proc.wait_exit() == 0
    assert (await two.get("demo", "/")).status_code == 200


async def test_registry_outage_fails_static_and_refuses_new_claims(
    stack: Stack, redis_server: RedisServer, tmp_path: Path
) -> None:
    app = await stack.start_app()
    alice = stack.new_key("alice")
    router = await clustered(stack, redis_server, "r1", alice)
    await stack.openssh_tunnel(router, alice, "held", app.port)

    redis_server.stop()
    # The tunnel already held keeps serving (fail static) ...
    assert (await router.get("held", "/")).status_code == 200
    # ... and a new claim is refused with the registry's reason, never guessed.
    mark = len(router.proc.lines)
    with trio.fail_after(REFUSAL_WITHIN_S):
        refused = await stack.openssh_tunnel(router, alice, "fresh", app.port, wait=False)
        assert await refused.wait_exit() != 0
    await router.proc.wait_for(
        r"event=forward_refused .*listen=fresh:80 reason=.*route registry is unreachable: try "
        r"again",
        start=mark,
    )
    assert (await router.get("held", "/")).status_code == 200

    # Redis is back (empty, on the same port): claims work again and the held
    # name is re-asserted first.
    back = RedisServer(tmp_path, port=redis_server.port)
    try:
        await stack.openssh_tunnel(router, alice, "fresh", app.port)
        assert set(holders(back, "fresh")) == {"r1"}
        assert set(holders(back, "held")) == {"r1"}
        assert (await router.get("fresh", "/")).status_code == 200
    finally:
        back.stop()


async def test_a_lost_lease_closes_its_tunnel_at_once(
    stack: Stack, redis_server: RedisServer
) -> None:
    """The registry lost its data (a restart) and another key took the name on
    another router before router 1 renewed: its renewal reports the lease lost
    and router 1 closes the tunnel at once."""
    app = await stack.start_app()
    alice, mallory = stack.new_key("alice"), stack.new_key("mallory")
    one = await stack.start_router(
        "--registry", redis_server.url, "--router-id", "r1", "--lease-ttl-s", "3"
    )
    one.authorize(public_key_of(alice))
    two = await clustered(stack, redis_server, "r2", mallory)
    tunnel = await stack.openssh_tunnel(one, alice, "contested", app.port)

    # Router 1 is held still (SIGSTOP) so that mallory's claim surely comes first.
    os.kill(one.proc.process.pid, signal.SIGSTOP)
    try:
        client = redis.Redis(host="127.0.0.1", port=redis_server.port)
        client.flushall()
        client.close()
        await stack.openssh_tunnel(two, mallory, "contested", app.port)
    finally:
        os.kill(one.proc.process.pid, signal.SIGCONT)
    await one.proc.wait_for(r"event=tunnel_closed name=contested .*reason=.*lease lost")
    assert await tunnel.wait_exit() != 0  # its only forward went: the client is told
    assert (await one.get("contested", "/")).status_code == 502
    assert set(holders(redis_server, "contested")) == {"r2"}


async def test_hostmux_listener_claims_through_the_registry(
    stack: Stack, redis_server: RedisServer
) -> None:
    app = await stack.start_app()
    key = stack.new_key("pod")
    router = await clustered(stack, redis_server, "r1", key)
    listener = await stack.listener(router, key, app.port)
    url = await listener.wait_for(rf"^https://([a-z0-9]+)\.localhost:{router.https_port}$")
    assert set(holders(redis_server, url[1])) == {"r1"}
    assert (await router.get(url[1], "/")).status_code == 200
    assert await listener.stop() == 0
    # The listener's goodbye releases the lease in the background (no holder left).
    await router.proc.wait_for(rf"event=tunnel_down name={url[1]} ")
    with trio.fail_after(REFUSAL_WITHIN_S):
        await router.proc.wait_for(rf"event=registry_released_tunnel name={url[1]} ")
    assert holders(redis_server, url[1]) == {}


async def test_tunnels_close_after_name_reservation_s_without_the_registry(
    stack: Stack, redis_server: RedisServer
) -> None:
    app = await stack.start_app()
    key = stack.new_key("alice")
    router = await stack.start_router(
        "--registry", redis_server.url, "--router-id", "r1",
        "--lease-ttl-s", "3", "--name-reservation-s", "2",
    )  # fmt: skip
    router.authorize(public_key_of(key))
    tunnel = await stack.openssh_tunnel(router, key, "static", app.port)
    redis_server.stop()
    assert (await router.get("static", "/")).status_code == 200  # fail static ...
    await router.proc.wait_for(
        r"event=tunnel_closed name=static .*reason=.*unreachable for name_reservation_s"
    )  # ... for at most name_reservation_s
    assert await tunnel.wait_exit() != 0
    assert (await router.get("static", "/")).status_code == 502
