"""Limits on real connections: per-IP browser connections, per-key tunnels, SSH login failures."""

from __future__ import annotations

import trio

from .conftest import Stack, World, public_key_of


async def _one_request(port: int) -> bytes:
    """A request on a new connection: the answer's first bytes, or b"" if refused."""
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        try:
            await stream.send_all(b"GET / HTTP/1.1\r\nHost: x.localhost\r\n\r\n")
            return await stream.receive_some(100)
        except trio.BrokenResourceError:  # reset by the router: refused
            return b""


async def test_connections_per_ip_are_capped(stack: Stack) -> None:
    router = await stack.start_router("--max-connections-per-ip", "2")
    # Two idle connections (no request yet: the router waits for their headers).
    held = [await trio.open_tcp_stream("127.0.0.1", router.http_port) for _ in range(2)]
    try:
        with trio.fail_after(30):
            assert await _one_request(router.http_port) == b""  # the third is refused
        await router.proc.wait_for(r"event=connection_refused .*reason=limit")
    finally:
        await held[0].aclose()
    try:
        # The router frees the place when it sees the close; until then it refuses.
        with trio.fail_after(30):
            while not (reply := await _one_request(router.http_port)):
                await trio.lowlevel.checkpoint()
        assert reply.startswith(b"HTTP/1.1 404 ")
    finally:
        await held[1].aclose()


async def test_tunnels_per_key_are_capped(stack: Stack) -> None:
    router = await stack.start_router("--max-tunnels-per-key", "1")
    app = await stack.start_app()
    key = stack.new_key("capped")
    router.authorize(public_key_of(key))
    await stack.openssh_tunnel(router, key, "one", app.port)
    second = await stack.openssh_tunnel(router, key, "two", app.port, wait=False)
    assert await second.wait_exit() != 0
    await router.proc.wait_for(r"event=forward_refused .*listen=two:80 reason=.*already holds 1")
    assert (await router.get("one", "/")).status_code == 200


async def test_failed_ssh_logins_are_rate_limited_per_ip(stack: Stack) -> None:
    router = await stack.start_router(
        "--ssh-auth-failures-burst", "2", "--ssh-auth-failures-per-minute", "1"
    )
    good = stack.new_key("good")
    router.authorize(public_key_of(good))
    stranger = stack.new_key("stranger")
    for attempt in range(2):
        refused = await stack.spawn(
            f"ssh-bad-{attempt}", stack.ssh_argv(router, stranger, "-N", "x@127.0.0.1")
        )
        assert await refused.wait_exit() != 0
    mark = len(router.proc.lines)
    blocked = await stack.spawn("ssh-good", stack.ssh_argv(router, good, "-N", "x@127.0.0.1"))
    assert await blocked.wait_exit() != 0  # even a good key waits while the IP is cooling down
    await router.proc.wait_for(r"event=ssh_rate_limited ", start=mark)


async def test_world_is_unaffected_by_default_limits(world: World) -> None:
    await world.stack.openssh_tunnel(world.router, world.key, "plenty", world.app.port)
    assert (await world.router.get("plenty", "/")).status_code == 200
