"""Activity, idle and usage events end to end (issue 21, points 2 and 4).

Real processes: the router (one, or two sharing a redis-server), OpenSSH
tunnels, the sample app and the example portal, which checks every event's
signature (a delivered event was signed right). Waits are on log lines and
events, with deadlines; the only sleeps pace the test's own traffic.
"""

from __future__ import annotations

import json
import re

import trio

from router.registry.activity_share import ActivityShare

from ..unit.asyncio_bounded import run
from .conftest import Router, Stack, public_key_of, websocket_to
from .redis_server import RedisServer
from .test_admin import start_admin_router
from .test_operations import METRICS, get, promtool_check, sample
from .test_portal_mode import EVENTS_SECRET, Portal, start_portal

# The acceptance line: with idle_after_s = 5, an idle event within 10 s.
IDLE_AFTER_S = 5
IDLE_WITHIN_S = 10.0


def event_args(portal: Portal) -> list[str]:
    return ["--events-url", portal.url + "/router-events", "--events-secret", EVENTS_SECRET]


async def activity_of(portal: Portal, instance_id: str) -> dict[str, dict[str, object]]:
    async with portal.admin() as client:
        response = await client.get("/admin/activity")
    assert response.status_code == 200, response.text
    found: dict[str, dict[str, object]] = response.json().get(instance_id, {})
    return found


async def instance_with_tunnel(
    stack: Stack, portal: Portal, router: Router, app_port: int
) -> tuple[str, float]:
    """A portal instance served by an OpenSSH tunnel of that name: (id, when it came up)."""
    instance = (await portal.create_instance("alice"))["id"]
    key = stack.new_key("alice")
    router.authorize(public_key_of(key))
    await stack.openssh_tunnel(router, key, instance, app_port)
    return instance, trio.current_time()


def delivered(kind: str, name: str) -> str:
    return rf"event=portal_event_delivered kind={kind} name={name}\b"


async def test_an_unused_instance_is_reported_idle_within_10_s_and_active_after_a_request(
    stack: Stack,
) -> None:
    portal = await start_portal(stack)
    router, admin = await start_admin_router(
        stack, *event_args(portal), "--idle-after-s", str(IDLE_AFTER_S),
        "--metrics-listen", "127.0.0.1:0", "--metrics-per-tunnel",
    )  # fmt: skip
    metrics_port = int((await router.proc.wait_for(METRICS))[1])
    app = await stack.start_app()
    name, up = await instance_with_tunnel(stack, portal, router, app.port)

    await router.proc.wait_for(delivered("idle", name))
    assert trio.current_time() - up <= IDLE_WITHIN_S
    seen = await activity_of(portal, name)
    assert seen["activity"]["state"] == "idle", seen  # the portal checked its signature
    # The admin API and the per-tunnel metrics say the same.
    (tunnel,) = await admin.tunnels()
    assert tunnel["name"] == name and tunnel["idle"] is True
    table = (await admin.cli("tunnels")).stdout.splitlines()
    column = table[0].split().index("IDLE")
    assert table[1].split()[column] == "yes", table
    assert abs(tunnel["last_active"] - tunnel["since"]) < 2  # no activity since it came up
    text = (await get(metrics_port, "/metrics")).text
    assert sample(text, "hostmux_tunnel_idle", name=name) == 1
    assert "hostmux_tunnel_usage_requests_total" in text
    await promtool_check(text)
    # Said once, however long it stays idle: the next event is the active one.
    mark = len(router.proc.lines)
    response = await router.get(name, "/headers")
    assert response.status_code == 200
    await router.proc.wait_for(delivered("active", name), start=mark)
    assert router.proc.find(r"event=name_idle ", mark) is None
    assert (await activity_of(portal, name))["activity"]["state"] == "active"

    (tunnel,) = await admin.tunnels()
    assert tunnel["idle"] is False and tunnel["last_active"] > tunnel["since"]
    text = (await get(metrics_port, "/metrics")).text
    assert sample(text, "hostmux_tunnel_idle", name=name) == 0
    assert sample(text, "hostmux_tunnel_usage_requests_total", name=name) == 1
    async with portal.admin() as client:
        stats = (await client.get("/admin/stats")).json()
    assert stats["idle"] == 1 and stats["active"] == 1


async def test_a_websocket_below_the_byte_floor_lets_a_name_go_idle_and_above_it_not(
    stack: Stack,
) -> None:
    portal = await start_portal(stack)
    floor = 20_000  # bytes a minute
    router = await stack.start_router(
        *event_args(portal), "--idle-after-s", "2", "--idle-min-bytes-per-minute", str(floor)
    )
    app = await stack.start_app()
    name, _ = await instance_with_tunnel(stack, portal, router, app.port)

    async with trio.open_nursery() as nursery:
        websocket = await websocket_to(nursery, router, name)
        mark = len(router.proc.lines)

        async def ping(size: int, every_s: float) -> None:
            while True:
                await websocket.send_message(b"p" * size)
                assert await websocket.get_message() == b"p" * size
                await trio.sleep(every_s)  # paces the test's traffic; nothing waits on it

        # A kernel's pings: ~20 bytes each way every 0.25 s, ~10 KB a minute, under the floor.
        pinging = trio.CancelScope()

        async def pings() -> None:
            with pinging:
                await ping(10, 0.25)

        nursery.start_soon(pings)
        await router.proc.wait_for(delivered("idle", name), start=mark)
        pinging.cancel()
        # A user: 4 KB each way every 0.25 s, ~2 MB a minute: active, and it stays so.
        mark = len(router.proc.lines)
        busy = trio.CancelScope()

        async def work() -> None:
            with busy:
                await ping(4096, 0.25)

        nursery.start_soon(work)
        await router.proc.wait_for(delivered("active", name), start=mark)
        kept = len(router.proc.lines)
        # Three idle periods (and more ticks) of traffic above the floor: no idle event.
        with trio.move_on_after(3 * 2):
            await router.proc.wait_for(r"event=name_idle ", start=kept)
            raise AssertionError("idle reported while the WebSocket carried traffic")
        busy.cancel()
        await websocket.aclose()
    seen = await activity_of(portal, name)
    assert seen["activity"]["state"] == "active", seen


async def test_usage_events_match_the_requests_and_bytes_relayed(stack: Stack) -> None:
    portal = await start_portal(stack)
    router = await stack.start_router(*event_args(portal), "--usage-interval-s", "2")
    app = await stack.start_app()
    name, _ = await instance_with_tunnel(stack, portal, router, app.port)

    mark = len(router.proc.lines)
    sizes = [0, 1, 1000, 65_536, 300_000]
    async with router.client() as client:
        for n in sizes:
            response = await client.send(router.request(client, "GET", name, f"/bytes?n={n}"))
            assert response.status_code == 200 and len(response.content) == n
        upload = b"u" * 123_456
        request = router.request(client, "POST", name, "/upload", content=upload)
        assert (await client.send(request)).status_code == 200
    async with trio.open_nursery() as nursery:
        websocket = await websocket_to(nursery, router, name)
        await websocket.send_message(b"w" * 50_000)
        assert await websocket.get_message() == b"w" * 50_000
        await websocket.aclose()
    requests = len(sizes) + 2
    # What the access log says was relayed for the name (each request's line).
    lines = await matches(router, rf"event=request .*name={name} ", requests, mark)
    logged_in = sum(int(_field(line, "bytes_in")) for line in lines)
    logged_out = sum(int(_field(line, "bytes_out")) for line in lines)
    assert logged_out >= sum(sizes) + 50_000 and logged_in >= len(upload) + 50_000

    # Usage events until they add up to every request (intervals are 2 s, aligned),
    # then each of them delivered.
    counted, events = 0, 0
    while counted < requests:
        found = await matches(router, rf"event=name_usage name={name} ", events + 1, mark)
        counted += int(_field(found[-1], "requests"))
        events += 1
    assert counted == requests
    await matches(router, delivered("usage", name), events, mark)
    usage = (await activity_of(portal, name))["usage"]
    assert usage["requests"] == requests
    assert usage["bytes_in"] == logged_in
    assert usage["bytes_out"] == logged_out
    assert float(usage["websocket_s"]) >= 0  # type: ignore[arg-type]
    assert float(usage["connection_s"]) > 0  # type: ignore[arg-type]
    routers = usage["routers"]
    assert isinstance(routers, dict) and len(routers) == 1


async def test_usage_counts_survive_a_sigterm_restart(stack: Stack) -> None:
    portal = await start_portal(stack)
    state_dir = stack.path("router-state")
    state_dir.mkdir()
    router = await stack.start_router(*event_args(portal), state_dir=state_dir)
    app = await stack.start_app()
    name, _ = await instance_with_tunnel(stack, portal, router, app.port)
    for _ in range(3):
        assert (await router.get(name, "/bytes?n=1000")).status_code == 200
    assert await router.proc.stop() == 0
    checkpoint = json.loads((state_dir / "usage.json").read_text())
    assert checkpoint["usage"][name]["requests"] == 3
    assert checkpoint["usage"][name]["bytes_out"] == 3000  # the bodies relayed

    again = await stack.start_router(*event_args(portal), state_dir=state_dir)
    await again.proc.wait_for(r"event=usage_checkpoint_loaded names=1 interval_ended=False")
    key = stack.new_key("alice-again")
    again.authorize(public_key_of(key))
    await stack.openssh_tunnel(again, key, name, app.port)
    for _ in range(2):
        assert (await again.get(name, "/bytes?n=1000")).status_code == 200
    assert await again.proc.stop() == 0
    checkpoint = json.loads((state_dir / "usage.json").read_text())
    assert checkpoint["usage"][name]["requests"] == 5
    assert checkpoint["usage"][name]["bytes_out"] == 5000


async def test_in_a_cluster_the_router_deciding_never_reports_idle_while_another_carries_traffic(
    stack: Stack, redis_server: RedisServer
) -> None:
    portal = await start_portal(stack)
    common = [*event_args(portal), "--registry", redis_server.url, "--idle-after-s", "2"]
    # b starts first and takes the activity lease; a holds the tunnel and all the traffic.
    b = await stack.start_router(*common, "--router-id", "b", "--router-name", "b")
    await b.proc.wait_for(r"event=activity_lease held=True")
    a = await stack.start_router(*common, "--router-id", "a", "--router-name", "a")
    app = await stack.start_app()
    name, _ = await instance_with_tunnel(stack, portal, a, app.port)

    # Traffic through a for longer than b's threshold (idle_after_s, the 10 s write
    # delay and a tick): b hears of it only through the registry.
    async with a.client() as client:
        until = trio.current_time() + 18
        while trio.current_time() < until:
            response = await client.send(a.request(client, "GET", name, "/headers"))
            assert response.status_code == 200
            await trio.sleep(0.5)  # paces the test's traffic; nothing waits on it
    assert b.proc.find(r"event=name_idle ") is None, "b reported idle during a's traffic"
    assert a.proc.find(r"event=name_idle ") is None

    # Then quiet: b, deciding, reports it idle; a request through a makes it active.
    await b.proc.wait_for(delivered("idle", name))
    seen = await activity_of(portal, name)
    assert seen["activity"]["state"] == "idle" and seen["activity"]["router"] == "b", seen
    mark = len(b.proc.lines)
    assert (await a.get(name, "/headers")).status_code == 200
    await b.proc.wait_for(delivered("active", name), start=mark)
    assert a.proc.find(r"event=name_(idle|active) ") is None  # a never decides
    assert (await activity_of(portal, name))["activity"]["state"] == "active"


def test_the_activity_share_merges_forgets_and_leases_in_redis(
    redis_server: RedisServer,
) -> None:
    """``ActivityShare``'s rules on a real redis-server: the larger time wins, a forget
    loses to newer activity, one lease holder at a time."""

    async def scenario() -> None:
        one = ActivityShare.from_url(redis_server.url, prefix="t:")
        two = ActivityShare.from_url(redis_server.url, prefix="t:")
        try:
            await one.merge({"app": 1000.5, "web": 50.0})
            await two.merge({"app": 900.0})  # older: kept as it was
            assert await one.read(["app", "web", "gone"]) == ([1000.5, 50.0, None], [False] * 3)
            await one.set_idle("app", 1000.5)
            assert (await two.everything()) == ({"app": 1000.5, "web": 50.0}, {"app": 1000.5})
            await two.merge({"app": 1001.0})
            assert not await one.forget("app", 1000.5)  # activity came since it was read
            assert await one.forget("app", 1001.0)
            assert await two.everything() == ({"web": 50.0}, {})
            assert await one.lock(5.0)
            assert not await two.lock(5.0)
            assert await one.lock(5.0)  # renewed by its holder
            await one.unlock()
            assert await two.lock(5.0)
        finally:
            await one.aclose()
            await two.aclose()

    run(scenario())


async def matches(router: Router, pattern: str, count: int, start: int) -> list[str]:
    """The first ``count`` lines from ``start`` matching ``pattern`` (each awaited with
    the log's deadline)."""
    regex, found = re.compile(pattern), list[str]()
    while len(found) < count:
        await router.proc.wait_for(pattern, start=start)
        for index in range(start, len(router.proc.lines)):
            if regex.search(router.proc.lines[index]):
                found.append(router.proc.lines[index])
                start = index + 1
                break
    return found


def _field(line: str, key: str) -> str:
    match = re.search(rf"\b{key}=(\S+)", line)
    assert match is not None, (key, line)
    return match[1]
