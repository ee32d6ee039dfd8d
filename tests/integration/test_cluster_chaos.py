"""Chaos: three routers, one Redis, a listener holding the name through two of
them, bounded load — and faults: kill -9 of one router, SIGTERM and restart of
another, Redis stopped for a few seconds (issue 17, point 6).

Real parts: Debian's redis-server, three router processes with the router
link (a cluster CA from ``keys``), hostmux-listener (HA connections), the
sample app. The load: plain-HTTP requests spread over the three front doors
(a new connection each), a WebSocket echo stream and repeated large downloads
through the router that no fault touches. Every failure must be explained by
a fault it overlapped (its window, or a request sent to a router that was
down); every byte that arrived is checked. Counts are printed (``-s``).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import secrets
import signal
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import redis
import trio
import trio_websocket

from examples.sample_app.app import expected_bytes

from .cluster_world import Cluster
from .conftest import Router, Stack, websocket_and_stream
from .redis_server import RedisServer

NAME = "chaos"
# Reason: short leases make kill -9 recover within the test's 90 s budget (default 15 s).
LEASE_TTL_S = 3
# Reason: what a fault may still disturb after it ended: a lease round, a reconnect back-off
# (the listener's --backoff-max-s 2), and a loaded 2-core machine.
SETTLE_S = LEASE_TTL_S + 4.0
# Reason: the load's pace (a load generator's rate, not synchronisation).
REQUEST_GAP_S, MESSAGE_GAP_S = 0.01, 0.05
HTTP_WORKERS = 3
# Reason: bounds on the load, whatever happens.
MAX_REQUESTS, MAX_MESSAGES, MAX_DOWNLOADS = 20_000, 2_000, 50
DOWNLOAD_BYTES = 8 << 20
STREAM_ENDS = (
    OSError,
    trio.BrokenResourceError,
    trio.TooSlowError,
    trio_websocket.ConnectionClosed,
    trio_websocket.HandshakeError,
)
# Reason: the whole test, start to end, within the 90 s in CI.
TEST_DEADLINE_S = 90


@dataclass
class Outcome:
    kind: str  # "http", "ws", "download"
    started: float
    ended: float
    ok: bool
    router: str  # the front door it went to
    detail: str = ""


@dataclass
class Chaos:
    """When each fault happened, and what the load saw."""

    outcomes: list[Outcome] = field(default_factory=list)
    windows: list[tuple[str, float, float]] = field(default_factory=list)  # (fault, start, end)
    # Routers a load balancer's health check has taken out: the load skips them.
    out: set[str] = field(default_factory=set)
    down: dict[str, list[tuple[float, float]]] = field(default_factory=dict)  # router -> spans
    stop: trio.Event = field(default_factory=trio.Event)

    def record(self, outcome: Outcome) -> None:
        self.outcomes.append(outcome)

    def explain(self, outcome: Outcome) -> str | None:
        """The fault that explains a failure, or None."""
        for start, end in self.down.get(outcome.router, []):
            if outcome.started <= end and outcome.ended >= start:
                return f"router {outcome.router} down"
        for fault, start, end in self.windows:
            if outcome.started <= end and outcome.ended >= start:
                return fault
        return None


def live_holders(server_port: int) -> set[str]:
    client = redis.Redis(host="127.0.0.1", port=server_port, decode_responses=True)
    try:
        now_s, now_us = client.time()
        now_ms = now_s * 1000 + now_us // 1000
        found: dict[str, str] = client.hgetall(f"hostmux:holders:{NAME}")  # type: ignore[assignment]
        return {r for r, v in found.items() if int(v.split()[0]) > now_ms}
    finally:
        client.close()


async def http_load(chaos: Chaos, routers: dict[str, Router], worker: int) -> None:
    order = itertools.cycle(sorted(routers))
    async with httpx.AsyncClient(
        timeout=10.0, limits=httpx.Limits(max_keepalive_connections=0)
    ) as client:
        for i in range(MAX_REQUESTS):
            if chaos.stop.is_set():
                return
            router_id = next(order)
            if router_id in chaos.out:
                continue
            router = routers[router_id]
            seed = f"w{worker}-{i}"
            started = trio.current_time()
            try:
                request = router.request(
                    client, "GET", NAME, f"/bytes?n=1024&seed={seed}", tls=False
                )
                response = await client.send(request)
                ok = response.status_code == 200 and response.content == b"".join(
                    expected_bytes(1024, seed)
                )
                detail = f"{response.status_code} {response.headers.get('x-hostmux-error', '')}"
            except httpx.HTTPError as exc:
                ok, detail = False, repr(exc)
            chaos.record(Outcome("http", started, trio.current_time(), ok, router_id, detail))
            await trio.sleep(REQUEST_GAP_S)


async def websocket_load(chaos: Chaos, router: Router, router_id: str) -> None:
    """Echo a stream of messages; a broken WebSocket is a failure, then a new one."""
    sent = 0
    while sent < MAX_MESSAGES and not chaos.stop.is_set():
        started = trio.current_time()
        async with trio.open_nursery() as nursery:
            try:
                stream, ws = await websocket_and_stream(nursery, router, NAME)
                try:
                    while sent < MAX_MESSAGES and not chaos.stop.is_set():
                        message = secrets.token_bytes(1024)
                        started = trio.current_time()
                        with trio.fail_after(10):
                            await ws.send_message(message)
                            echoed = await ws.get_message()
                        sent += 1
                        ok = echoed == message
                        chaos.record(Outcome("ws", started, trio.current_time(), ok, router_id))
                        await trio.sleep(MESSAGE_GAP_S)
                finally:
                    with contextlib.suppress(*STREAM_ENDS):
                        await ws.aclose()
                        await stream.aclose()
            except STREAM_ENDS as exc:
                sent += 1
                failed = Outcome("ws", started, trio.current_time(), False, router_id, repr(exc))
                chaos.record(failed)
            nursery.cancel_scope.cancel()  # trio-websocket's reader task, if still there
        await trio.sleep(MESSAGE_GAP_S)


async def download_load(chaos: Chaos, router: Router, router_id: str) -> None:
    async with router.client() as client:
        for i in range(MAX_DOWNLOADS):
            if chaos.stop.is_set():
                return
            seed = f"big-{i}"
            started = trio.current_time()
            digest, size, ok, detail = hashlib.sha256(), 0, False, ""
            try:
                request = router.request(
                    client, "GET", NAME, f"/bytes?n={DOWNLOAD_BYTES}&seed={seed}"
                )
                response = await client.send(request, stream=True)
                try:
                    async for chunk in response.aiter_raw():
                        digest.update(chunk)
                        size += len(chunk)
                finally:
                    await response.aclose()
                expected = hashlib.sha256(b"".join(expected_bytes(DOWNLOAD_BYTES, seed)))
                ok = response.status_code == 200 and digest.digest() == expected.digest()
                detail = f"{response.status_code} {size} bytes"
            except (httpx.HTTPError, httpx.StreamError) as exc:
                detail = f"{exc!r} after {size} bytes"
            chaos.record(Outcome("download", started, trio.current_time(), ok, router_id, detail))


async def test_chaos_kill_restart_and_redis_outage(
    stack: Stack, redis_server: RedisServer, tmp_path: Path
) -> None:
    with trio.fail_after(TEST_DEADLINE_S):
        await _chaos(stack, redis_server, tmp_path)


async def _chaos(stack: Stack, redis_server: RedisServer, tmp_path: Path) -> None:
    app = await stack.start_app()
    key = stack.new_key("owner")
    cluster = Cluster(stack, redis_server.url, tmp_path, LEASE_TTL_S)
    routers = {rid: await cluster.start(rid, key) for rid in ("a", "b", "c")}
    argv = cluster.listener_argv(routers, key, app.port)
    listener = await stack.spawn("listener", [*argv, "--name", NAME])
    # The listener's own word that both connections hold the name (a router logs
    # tunnel_up a moment before the client has its forward).
    await listener.wait_for(r"event=connections_full up=2 wanted=2")
    for router in routers.values():
        assert (await router.get(NAME, "/bytes?n=10")).status_code == 200

    held = live_holders(redis_server.port)
    # The router no fault touches carries the WebSocket and the downloads; prefer one
    # that does not hold the name, so they cross the router link.
    steady = next(iter(sorted(set(routers) - held))) if len(held) < 3 else "c"
    victim_kill, victim_term = sorted(set(routers) - {steady})
    chaos = Chaos()
    async with trio.open_nursery() as nursery:
        for worker in range(HTTP_WORKERS):
            nursery.start_soon(http_load, chaos, routers, worker)
        nursery.start_soon(websocket_load, chaos, routers[steady], steady)
        nursery.start_soon(download_load, chaos, routers[steady], steady)

        await trio.sleep(3)  # load before the first fault (pacing, not synchronisation)
        chaos.out.add(victim_kill)
        killed = trio.current_time()
        routers[victim_kill].proc.process.send_signal(signal.SIGKILL)
        chaos.down[victim_kill] = [(killed, float("inf"))]
        chaos.windows.append((f"kill -9 {victim_kill}", killed, killed + LEASE_TTL_S + SETTLE_S))

        await trio.sleep(LEASE_TTL_S + 3)
        old = routers[victim_term]
        chaos.out.add(victim_term)
        termed = trio.current_time()
        old.proc.process.send_signal(signal.SIGTERM)
        assert await old.proc.wait_exit() == 0
        back = await cluster.start(
            victim_term, key, ports=(old.ssh_port, old.https_port, old.http_port)
        )
        routers[victim_term] = back
        restarted = trio.current_time()
        chaos.out.discard(victim_term)
        chaos.down[victim_term] = [(termed, restarted)]
        chaos.windows.append((f"SIGTERM + restart {victim_term}", termed, restarted + SETTLE_S))

        await trio.sleep(3)
        stopped = trio.current_time()
        redis_server.stop()
        await trio.sleep(3)  # Redis away for a few seconds
        again = RedisServer(tmp_path, port=redis_server.port)
        returned = trio.current_time()
        chaos.windows.append(("Redis stopped", stopped, returned + SETTLE_S))
        await trio.sleep(SETTLE_S + 2)
        chaos.stop.set()
    try:
        # Afterwards (the faults settled): the name is held and served through every live router.
        assert live_holders(again.port), "held again after the faults"
        for rid, router in routers.items():
            if rid != victim_kill:
                assert (await router.get(NAME, "/bytes?n=10")).status_code == 200, rid
    finally:
        again.stop()
    _report_and_check(chaos)


def _report_and_check(chaos: Chaos) -> None:
    counts: Counter[tuple[str, str]] = Counter()
    unexplained: list[Outcome] = []
    for outcome in chaos.outcomes:
        if outcome.ok:
            counts[(outcome.kind, "ok")] += 1
            continue
        cause = chaos.explain(outcome)
        counts[(outcome.kind, cause or "UNEXPLAINED")] += 1
        if cause is None:
            unexplained.append(outcome)
    print("\nchaos counts:", dict(sorted(counts.items())))
    for kind in ("http", "ws", "download"):
        sent = sum(n for (k, _), n in counts.items() if k == kind)
        answered = counts[(kind, "ok")]
        print(f"  {kind}: sent {sent}, answered {answered}, failed {sent - answered}")
    assert not unexplained, unexplained[:10]
    assert counts[("http", "ok")] >= 200, counts
    assert counts[("ws", "ok")] >= 50, counts
    assert counts[("download", "ok")] >= 1, counts
