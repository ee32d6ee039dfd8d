"""A rolling restart of three routers under load loses no request that reached a
router that stayed up (issue 17, point 5).

Real parts: Debian's redis-server, three router processes with the router link
(one host key, as the docs ask), hostmux-listener holding the name through all
three (``--ha-connections 3``), the sample app. Plain-HTTP requests (a new
connection each) go round the three front doors while each router in turn gets
SIGTERM, exits 0, and starts again on the same ports; the next one waits until
the listener is back on it. Requests to a router while it stops and starts are
counted apart: each either got the right answer or failed at the TCP level
(refused, reset, or closed before any answer). Counts are printed (``-s``).
"""

from __future__ import annotations

import itertools
import signal
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import trio

from examples.sample_app.app import expected_bytes

from .cluster_world import Cluster, holders
from .conftest import Router, Stack
from .redis_server import RedisServer

NAME = "rolling"
ROUTER_IDS = ("a", "b", "c")
# Reason: short leases, as in the chaos test (a stopping router releases its own at once).
LEASE_TTL_S = 3
# Reason: the load's pace (a load generator's rate, not synchronisation).
REQUEST_GAP_S = 0.01
HTTP_WORKERS = 3
# Reason: bounds on the load whatever happens (it stops once the last router is back).
MAX_REQUESTS_PER_WORKER = 5_000
# Reason: the whole test within about a minute on a loaded 2-core machine.
TEST_DEADLINE_S = 75
# What a router that is stopping or starting may do instead of answering: fail at the
# TCP level. A clean close before any answer (FIN) is counted apart from a reset.
TCP_FAILURES = ("refused", "reset", "closed")


@dataclass
class Outcome:
    router: str  # the front door it went to
    started: float
    ended: float
    result: str  # "ok", one of TCP_FAILURES, or what went wrong


@dataclass
class Rolling:
    """The load's outcomes and, per router, when it was stopping (SIGTERM until ready)."""

    outcomes: list[Outcome] = field(default_factory=list)
    restarting: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    phases: list[tuple[str, float, float]] = field(default_factory=list)  # (what, start, end)
    restarts: list[tuple[str, float, float]] = field(default_factory=list)  # SIGTERM..rejoined
    stop: trio.Event = field(default_factory=trio.Event)

    def was_restarting(self, outcome: Outcome) -> bool:
        return any(
            outcome.started <= end and outcome.ended >= start
            for start, end in self.restarting.get(outcome.router, [])
        )


def classify(exc: httpx.HTTPError) -> str:
    """What a failed request met: refused, reset, closed (before any answer), or else."""
    causes: list[BaseException] = []
    pending: list[BaseException] = [exc]
    while pending:  # the chain of causes, and each attempt of trio's happy eyeballs
        cause = pending.pop()
        causes.append(cause)
        pending += [c for c in (cause.__cause__, cause.__context__) if c is not None]
        if isinstance(cause, BaseExceptionGroup):
            pending += cause.exceptions
    if any(isinstance(c, ConnectionRefusedError) for c in causes):
        return "refused"
    if any(isinstance(c, ConnectionResetError | BrokenPipeError) for c in causes):
        return "reset"
    if isinstance(exc, httpx.RemoteProtocolError) and "without sending a response" in str(exc):
        return "closed"
    return repr(exc)


async def http_load(rolling: Rolling, ports: dict[str, int], worker: int) -> None:
    order = itertools.cycle(ROUTER_IDS)
    async with httpx.AsyncClient(
        timeout=10.0, limits=httpx.Limits(max_keepalive_connections=0)
    ) as client:
        for i in range(MAX_REQUESTS_PER_WORKER):
            if rolling.stop.is_set():
                return
            router_id = next(order)
            seed = f"w{worker}-{i}"
            host = f"{NAME}.localhost:{ports[router_id]}"
            started = trio.current_time()
            try:
                response = await client.get(
                    f"http://127.0.0.1:{ports[router_id]}/bytes?n=1024&seed={seed}",
                    headers={"host": host},
                )
                right = b"".join(expected_bytes(1024, seed))
                ok = response.status_code == 200 and response.content == right
                result = "ok" if ok else f"{response.status_code} {response.text[:80]!r}"
            except httpx.HTTPError as exc:
                result = classify(exc)
            rolling.outcomes.append(Outcome(router_id, started, trio.current_time(), result))
            await trio.sleep(REQUEST_GAP_S)


async def test_a_rolling_restart_of_three_routers_loses_no_request_to_a_router_up(
    stack: Stack, redis_server: RedisServer, tmp_path: Path
) -> None:
    with trio.fail_after(TEST_DEADLINE_S):
        await _rolling_restart(stack, redis_server, tmp_path)


async def _rolling_restart(stack: Stack, redis_server: RedisServer, tmp_path: Path) -> None:
    app = await stack.start_app()
    key = stack.new_key("owner")
    cluster = Cluster(stack, redis_server.url, tmp_path, LEASE_TTL_S)
    routers: dict[str, Router] = {rid: await cluster.start(rid, key) for rid in ROUTER_IDS}
    argv = cluster.listener_argv(routers, key, app.port)
    listener = await stack.spawn("listener", [*argv, "--name", NAME, "--ha-connections", "3"])
    await listener.wait_for(r"event=connections_full up=3 wanted=3")
    assert set(holders(redis_server, NAME)) == set(ROUTER_IDS)

    rolling = Rolling()
    ports = {rid: router.http_port for rid, router in routers.items()}
    async with trio.open_nursery() as nursery:
        for worker in range(HTTP_WORKERS):
            nursery.start_soon(http_load, rolling, ports, worker)
        for rid in ROUTER_IDS:
            old = routers[rid]
            mark = len(listener.lines)
            termed = trio.current_time()
            old.proc.process.send_signal(signal.SIGTERM)
            assert await old.proc.wait_exit() == 0
            routers[rid] = await cluster.start(
                rid, key, ports=(old.ssh_port, old.https_port, old.http_port)
            )
            ready = trio.current_time()
            rolling.restarting[rid] = [(termed, ready)]
            rolling.phases.append((f"{rid} stopping and starting", termed, ready))
            await listener.wait_for(rf"event=tunnel_up name={NAME} .*router_id={rid} ", start=mark)
            await listener.wait_for(r"event=connections_full up=3 wanted=3", start=mark)
            back = trio.current_time()
            rolling.phases.append((f"{rid} up, listener not yet back", ready, back))
            rolling.restarts.append((rid, termed, back))
        rolling.stop.set()

    assert set(holders(redis_server, NAME)) == set(ROUTER_IDS)
    for router in routers.values():
        assert (await router.get(NAME, "/bytes?n=10")).status_code == 200
    assert listener.find(rf"event=tunnel_down name={NAME}") is None  # held throughout
    _report_and_check(rolling)


def _report_and_check(rolling: Rolling) -> None:
    counts: Counter[tuple[str, str]] = Counter()
    wrong: list[Outcome] = []
    for outcome in rolling.outcomes:
        to = "restarting" if rolling.was_restarting(outcome) else "up"
        counts[(to, outcome.result if outcome.result in ("ok", *TCP_FAILURES) else "WRONG")] += 1
        if outcome.result != "ok" and (to == "up" or outcome.result not in TCP_FAILURES):
            wrong.append(outcome)
    print("\nrolling restart counts:", dict(sorted(counts.items())))
    for outcome in wrong[:10]:
        during = [w for w, start, end in rolling.phases if start <= outcome.ended <= end]
        print("  wrong:", outcome, "during:", during)
    assert not wrong, wrong[:10]
    assert counts[("up", "ok")] >= 100, counts
    # The name was answered throughout: while each router stopped, started and was
    # rejoined (a second or more), requests to the routers up went on, and (above)
    # every one of them was answered right.
    for rid, start, end in rolling.restarts:
        answered = [
            o for o in rolling.outcomes
            if o.router != rid and start <= o.started and o.ended <= end
        ]  # fmt: skip
        assert answered, f"no request to another router while {rid} restarted"
