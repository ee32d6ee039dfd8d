"""Pools: several tunnels for one name, with real listeners, OpenSSH, apps and TLS.

Each backend answers with its own label, so where a request went is read from
its body. Fresh connections are made per request (``Connection: close``).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio
import trio_websocket

from .cluster_world import ClusterCA, holders, link_line, start_member
from .conftest import LoggedProcess, Router, Stack, public_key_of, websocket_and_stream
from .redis_server import RedisServer
from .test_admin import start_admin_router
from .test_cluster_claims import clustered
from .test_listener_ha import ha_listener_argv
from .test_ssh_abuse import start_peer

# A request head larger than this is not one of ours.
MAX_HEAD_BYTES = 64 * 1024


async def label_app(nursery: trio.Nursery, label: str, release: trio.Event | None = None) -> int:
    """An HTTP/1.1 app on loopback that answers every GET with ``label`` (keep-alive);
    ``GET /hold`` sends ``label`` as a first chunk and ends only once ``release`` is set."""

    async def serve(stream: trio.SocketStream) -> None:
        async with stream:
            buffer = b""
            while True:
                while b"\r\n\r\n" not in buffer:
                    if len(buffer) > MAX_HEAD_BYTES:
                        return
                    try:
                        chunk = await stream.receive_some(65536)
                    except trio.BrokenResourceError:
                        return
                    if not chunk:
                        return
                    buffer += chunk
                head, buffer = buffer.split(b"\r\n\r\n", 1)
                if head.startswith(b"GET /hold ") and release is not None:
                    await stream.send_all(
                        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
                        + f"{len(label):x}\r\n{label}\r\n".encode()
                    )
                    await release.wait()
                    await stream.send_all(b"4\r\ndone\r\n0\r\n\r\n")
                    continue
                close = b"connection: close" in head.lower()
                body = label.encode()
                await stream.send_all(
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: "
                    + str(len(body)).encode()
                    + (b"\r\nconnection: close" if close else b"")
                    + b"\r\n\r\n"
                    + body
                )
                if close:
                    return

    listeners = await nursery.start(partial(trio.serve_tcp, serve, 0, host="127.0.0.1"))
    return int(listeners[0].socket.getsockname()[1])


async def fresh_requests(
    router: Router, name: str, count: int, headers: dict[str, str] | None = None
) -> Counter[str]:
    """``count`` GETs, each on a new connection: how many each backend answered (or status)."""
    answered: Counter[str] = Counter()
    async with router.client() as client:
        for _ in range(count):
            request = router.request(
                client, "GET", name, "/", headers={"connection": "close", **(headers or {})}
            )
            response = await client.send(request)
            answered[
                response.text if response.status_code == 200 else str(response.status_code)
            ] += 1
    return answered


async def pool_listener(
    stack: Stack, router: Router, key: Path, port: int, name: str = "web"
) -> LoggedProcess:
    start = len(router.proc.lines)
    listener = await stack.listener(router, key, port, "--name", name, "--pool", "--no-check-url")
    await router.proc.wait_for(rf"event=(pool_up|pool_member_up) name={name} ", start=start)
    return listener


# -- the acceptance test -----------------------------------------------------------------


async def test_two_listeners_share_a_name_and_one_may_go(stack: Stack) -> None:
    router = await stack.start_router()
    key = stack.new_key("alice")
    router.authorize(public_key_of(key))
    port_a = await label_app(stack.nursery, "A")
    port_b = await label_app(stack.nursery, "B")
    first = await pool_listener(stack, router, key, port_a)
    await pool_listener(stack, router, key, port_b)
    assert router.proc.find(r"event=pool_member_up name=web .*members=2") is not None
    # The listener says HOSTMUX_POOL on a session before it asks for its forward.
    assert router.proc.find(r"event=pool_env .*forwards_before=0") is not None
    assert router.proc.find(r"event=pool_env .*forwards_before=[1-9]") is None

    spread = await fresh_requests(router, "web", 200)
    print(f"200 fresh requests over two members: {dict(spread)}")  # shown with -s
    assert set(spread) == {"A", "B"}, spread
    assert min(spread.values()) >= 60, spread  # each at least 30%

    assert await first.stop() == 0
    after = await fresh_requests(router, "web", 200)
    assert after == {"B": 200}, after
    assert router.proc.find(r"event=pool_member_down name=web .*members=1") is not None
    assert router.proc.find("Traceback") is None


async def test_a_keep_alive_connection_stays_on_its_member(stack: Stack) -> None:
    router = await stack.start_router()
    key = stack.new_key("alice")
    router.authorize(public_key_of(key))
    await pool_listener(stack, router, key, await label_app(stack.nursery, "A"))
    await pool_listener(stack, router, key, await label_app(stack.nursery, "B"))
    seen: list[str] = []
    for _ in range(3):  # three browsers, each one kept-alive connection of 20 requests
        async with router.client() as client:
            answers = [
                (await client.send(router.request(client, "GET", "web", "/"))).text
                for _ in range(20)
            ]
        assert len(set(answers)) == 1, answers
        seen.append(answers[0])
    assert set(seen) == {"A", "B"}  # the connections themselves were spread


async def test_a_member_that_goes_fails_only_its_own_requests(stack: Stack) -> None:
    router = await stack.start_router()
    key = stack.new_key("alice")
    router.authorize(public_key_of(key))
    release = trio.Event()
    listeners = {
        "A": await pool_listener(stack, router, key, await label_app(stack.nursery, "A", release)),
        "B": await pool_listener(stack, router, key, await label_app(stack.nursery, "B", release)),
    }
    bodies: dict[str, bytes] = {}
    failed: list[str] = []

    async def hold(started: trio.Event) -> None:
        async with router.client() as client:
            response = await client.send(router.request(client, "GET", "web", "/hold"), stream=True)
            chunks = response.aiter_raw()
            label = (await chunks.__anext__()).decode()
            bodies[label] = b""
            started.set()
            try:
                async for chunk in chunks:
                    bodies[label] += chunk
            except httpx.HTTPError:
                failed.append(label)

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            for _ in range(2):  # the second goes to the member with nothing outstanding
                started = trio.Event()
                nursery.start_soon(hold, started)
                await started.wait()
            assert set(bodies) == {"A", "B"}
            assert await listeners["A"].stop() == 0
            assert await fresh_requests(router, "web", 20) == {"B": 20}  # meanwhile
            release.set()
    assert failed == ["A"] and bodies["B"] == b"done"


# -- stock OpenSSH ------------------------------------------------------------------------


def openssh_member_argv(stack: Stack, router: Router, key: Path, name: str, port: int) -> list[str]:
    # No -N: the env rides on the session (OpenSSH opens none with -N).
    return stack.ssh_argv(
        router, key, "-o", "SetEnv=HOSTMUX_POOL=1", "-R", f"{name}:80:127.0.0.1:{port}",
        "tunnel@127.0.0.1",
    )  # fmt: skip


async def test_openssh_members_and_a_stranger(stack: Stack) -> None:
    router = await stack.start_router()
    alice, bob = stack.new_key("alice"), stack.new_key("bob")
    router.authorize(public_key_of(alice))
    router.authorize(public_key_of(bob))
    port_a = await label_app(stack.nursery, "A")
    port_b = await label_app(stack.nursery, "B")
    await stack.spawn("ssh-a", openssh_member_argv(stack, router, alice, "web", port_a))
    # OpenSSH sends its forward first and the session's env after it (measured: the
    # router has granted the forward when the env comes), so the name becomes a pool then.
    env = await router.proc.wait_for(r"event=pool_env .*forwards_before=(\d+)")
    assert env[1] == "1"
    await router.proc.wait_for(r"event=pool_up name=web ")
    await stack.spawn("ssh-b", openssh_member_argv(stack, router, alice, "web", port_b))
    await router.proc.wait_for(r"event=pool_member_up name=web .*members=2")
    spread = await fresh_requests(router, "web", 60)
    assert set(spread) == {"A", "B"} and min(spread.values()) >= 18, spread

    # The members, as the tunnels built-in lists them (this connection joins as a third).
    listed = await trio.run_process(
        [*openssh_member_argv(stack, router, alice, "web", port_a), "tunnels", "--json"],
        capture_stdout=True, capture_stderr=True, check=False,
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    pool = json.loads(listed.stdout)["tunnels"][0]["pool"]
    assert len(pool["members"]) == 3 and pool["member"] in {m["member"] for m in pool["members"]}

    # Another key cannot join (nor take) the name.
    stranger = await trio.run_process(
        [*openssh_member_argv(stack, router, bob, "web", port_a), "tunnels"],
        capture_stdout=True, capture_stderr=True, check=False,
    )  # fmt: skip
    assert stranger.returncode == 255 and b"remote port forwarding failed" in stranger.stderr
    assert router.proc.find(r"event=forward_refused .*reason=.*in use by another key") is not None
    assert set(await fresh_requests(router, "web", 20)) == {"A", "B"}


async def test_without_pool_a_new_tunnel_replaces_the_old_one(stack: Stack) -> None:
    router = await stack.start_router()
    key = stack.new_key("alice")
    router.authorize(public_key_of(key))
    port_a = await label_app(stack.nursery, "A")
    port_b = await label_app(stack.nursery, "B")
    await stack.openssh_tunnel(router, key, "solo", port_a)
    assert await fresh_requests(router, "solo", 5) == {"A": 5}
    start = len(router.proc.lines)
    await stack.openssh_tunnel(router, key, "solo", port_b)
    assert router.proc.find(r"event=tunnel_up name=solo .*replaced=127\.0\.0\.1", start)
    assert await fresh_requests(router, "solo", 20) == {"B": 20}
    assert router.proc.find(r"event=pool", 0) is None


# -- affinity -----------------------------------------------------------------------------


async def test_cookie_affinity_keeps_a_browser_on_its_member(stack: Stack) -> None:
    router = await stack.start_router("--pool-affinity", "cookie")
    key = stack.new_key("alice")
    router.authorize(public_key_of(key))
    await pool_listener(stack, router, key, await label_app(stack.nursery, "A"))
    await pool_listener(stack, router, key, await label_app(stack.nursery, "B"))

    async with router.client() as client:
        first = await client.send(
            router.request(client, "GET", "web", "/", headers={"connection": "close"})
        )
    cookie = first.headers["set-cookie"]
    value = cookie.split(";")[0]
    assert value.startswith("hostmux_pool=") and len(value) > len("hostmux_pool=") + 20
    attributes = {part.strip().lower() for part in cookie.split(";")[1:]}
    assert attributes == {"path=/", "httponly", "samesite=lax", "secure"}  # no Domain

    sticky = await fresh_requests(router, "web", 30, {"cookie": value})
    assert sticky == {first.text: 30}, sticky
    forged = await fresh_requests(router, "web", 30, {"cookie": "hostmux_pool=" + "A" * 24})
    assert set(forged) == {"A", "B"}, forged  # an unknown token picks as without one


# -- a hostile member ---------------------------------------------------------------------


async def test_a_member_that_never_answers_does_not_hang_the_others(stack: Stack) -> None:
    router = await stack.start_router("--response-timeout-s", "3", "--connect-timeout-s", "2")
    key = stack.new_key("alice")
    router.authorize(public_key_of(key))
    await pool_listener(stack, router, key, await label_app(stack.nursery, "A"))
    start = len(router.proc.lines)
    # Same key, joins the pool; accepts every channel and never reads or answers.
    await start_peer(stack, router, [key], "never-read", "web")
    await router.proc.wait_for(r"event=pool_member_up name=web .*members=2", start=start)

    results: Counter[str] = Counter()

    async def one() -> None:
        results.update(await fresh_requests(router, "web", 5))

    with trio.fail_after(30):  # each stuck request ends at the response timeout (3 s)
        async with trio.open_nursery() as nursery:
            for _ in range(6):
                nursery.start_soon(one)
    print(f"30 requests, 6 at a time, with a never-reading member: {dict(results)}")
    assert results["A"] >= 15 and set(results) <= {"A", "504"}, results
    assert router.proc.find("Traceback") is None

    # A member that never confirms a channel open is backed off after its share of
    # the connect timeout, and the request goes to the next member: no error at all.
    start = len(router.proc.lines)
    await start_peer(stack, router, [key], "never-confirm", "web")
    await router.proc.wait_for(r"event=pool_member_up name=web .*members=3", start=start)
    with trio.fail_after(30):
        after = await fresh_requests(router, "web", 12)
    print(f"12 requests with a never-confirming member too: {dict(after)}")
    assert set(after) <= {"A", "504"} and after["A"] >= 6, after
    backoff = r"event=pool_member_backoff name=web .*reason=.*did not open a channel in time"
    assert router.proc.find(backoff, start) is not None


async def test_the_listener_refuses_pool_with_tcp(stack: Stack) -> None:
    proc = await stack.spawn(
        "listener", [*stack.listener_argv(await stack.start_router(), stack.new_key("k"), 1),
                     "--tcp", "0", "--pool"],
    )  # fmt: skip
    assert await proc.wait_exit() == 2
    assert proc.find("tcp and pool do not go together") is not None


# -- a cluster: HA listeners, one registry lease per router ---------------------------------


async def test_ha_pool_members_are_one_member_on_each_router(
    stack: Stack, redis_server: RedisServer
) -> None:
    a = await clustered(stack, redis_server, "a")
    b = await clustered(stack, redis_server, "b")
    key = stack.new_key("pod")
    for router in (a, b):
        router.authorize(public_key_of(key))
    port_a = await label_app(stack.nursery, "A")
    port_b = await label_app(stack.nursery, "B")
    extra = ("--name", "web", "--pool", "--no-check-url")
    first = await stack.spawn("listener-a", ha_listener_argv(key, port_a, a, b, extra=extra))
    second = await stack.spawn("listener-b", ha_listener_argv(key, port_b, a, b, extra=extra))
    for listener in (first, second):
        await listener.wait_for(r"event=connections_full up=2 wanted=2")
    for router in (a, b):
        await router.proc.wait_for(r"event=pool_member_up name=web .*members=2")
    # Each listener process is one member, with the same id on both routers.
    ids = [
        {
            m[1] for line in router.proc.lines
            if (m := re.search(r"event=pool_(?:up|member_up) name=web .*member=(\w+)", line))
        }
        for router in (a, b)
    ]  # fmt: skip
    assert ids[0] == ids[1] and len(ids[0]) == 2, ids
    # One lease per router in the registry, whatever the members.
    assert set(holders(redis_server, "web")) == {"a", "b"}
    for router in (a, b):
        spread = await fresh_requests(router, "web", 40)
        assert set(spread) == {"A", "B"} and min(spread.values()) >= 12, spread

    # One listener goes: both routers keep the name, served by the other member.
    assert await first.stop() == 0
    for router in (a, b):
        assert await fresh_requests(router, "web", 40) == {"B": 40}
    assert set(holders(redis_server, "web")) == {"a", "b"}


async def test_a_router_without_members_forwards_to_one_that_has_them(
    stack: Stack, redis_server: RedisServer, tmp_path: Path
) -> None:
    key = stack.new_key("pod")
    ca = ClusterCA.create(tmp_path / "cluster-ca")
    a = await start_member(stack, redis_server, ca, "a", keys=(key,))
    b = await start_member(stack, redis_server, ca, "b", keys=(key,))
    await pool_listener(stack, a.router, key, await label_app(stack.nursery, "A"))
    await pool_listener(stack, a.router, key, await label_app(stack.nursery, "B"))
    assert set(holders(redis_server, "web")) == {"a"}
    spread = await fresh_requests(b.router, "web", 40)  # over the link, then a's pick
    assert set(spread) == {"A", "B"} and min(spread.values()) >= 12, spread
    assert link_line(a, "web") is not None


# -- a WebSocket, and the members in the admin API ---------------------------------------


async def send_and_receive(websocket: trio_websocket.WebSocketConnection, text: str) -> object:
    await websocket.send_message(text)
    return await websocket.get_message()


async def test_a_websocket_stays_on_its_member_and_the_admin_api_lists_members(
    stack: Stack,
) -> None:
    router, admin = await start_admin_router(stack)
    key = stack.new_key("alice")
    router.authorize(public_key_of(key))
    listeners: dict[str, LoggedProcess] = {}
    for _ in range(2):
        app = await stack.start_app()
        listener = await pool_listener(stack, router, key, app.port)
        member = (await listener.wait_for(r"event=tunnel_up name=web .*pool_member=(\w+)"))[1]
        listeners[member] = listener
    listed = await admin.tunnels()
    assert {t["pool_member"] for t in listed if t["name"] == "web"} == set(listeners)
    table = await admin.cli("tunnels")
    head, *rows = table.stdout.splitlines()
    assert head.split()[-1] == "MEMBER" and {r.split()[-1] for r in rows} == set(listeners)

    stream, websocket = await websocket_and_stream(stack.nursery, router, "web")
    await websocket.send_message("hello")
    assert await websocket.get_message() == "hello"
    # Its channel is the one request outstanding: on the member that opened it.
    counts = {t["pool_member"]: t["outstanding"] for t in await admin.tunnels()}
    assert sorted(counts.values()) == [0, 1], counts
    holder = next(member for member, count in counts.items() if count == 1)
    other = next(member for member in listeners if member != holder)

    assert await listeners[other].stop() == 0  # the other member goes: the WebSocket stays
    for i in range(10):
        await websocket.send_message(f"still {i}")
        assert await websocket.get_message() == f"still {i}"
    assert [t["pool_member"] for t in await admin.tunnels()] == [holder]

    assert await listeners[holder].stop() == 0  # its own member goes: it ends
    # (the app's side ended cleanly: a half-close, so the end shows when the browser sends)
    with trio.fail_after(30), pytest.raises(trio_websocket.ConnectionClosed):
        await send_and_receive(websocket, "anyone?")
    await stream.aclose()  # (trio-websocket leaves it open when the other side ended)
