"""A router restart costs a tunnel about the restart, not a grown back-off (issue 18).

The listener runs with its default back-off (``backoff_max_s`` 30), as users
run it. Its tunnel lasts (``LASTED_S``), the router is stopped with SIGTERM
and started again on the same ports and state directory; the URL must answer
within ``ANSWER_WITHIN_S`` of the new router's ready line.
"""

from __future__ import annotations

import httpx
import trio

from listener._reconnect import LASTED_S

from .conftest import Router, Stack, World

# The goal of issue 18: the first correct answer within 2 s of the router listening again.
ANSWER_WITHIN_S = 2.0
# Each probe of the URL gets this long: the router answers at once, tunnel or not.
PROBE_TIMEOUT_S = 1.0
# Between probes: frequent enough to time the answer to ~this, light on 2 cores.
PROBE_GAP_S = 0.02
# Failed attempts before the router first listens: the back-off has grown (to a
# 0-4 s draw) by the time the tunnel comes up, as it does for a pod started first.
FAILURES_FIRST = 3


async def answers_200(router: Router, client: httpx.AsyncClient, name: str) -> bool:
    try:
        response = await client.send(router.request(client, "GET", name, "/"))
    except httpx.HTTPError:
        return False
    return response.status_code == 200


async def first_200_within(router: Router, name: str, limit_s: float) -> float | None:
    """Seconds until ``name`` first answers 200 through ``router``; None past ``limit_s``."""
    started = trio.current_time()
    async with httpx.AsyncClient(verify=router.ssl_context(), timeout=PROBE_TIMEOUT_S) as client:
        with trio.move_on_after(limit_s):
            while True:
                if await answers_200(router, client, name):
                    return trio.current_time() - started
                await trio.sleep(PROBE_GAP_S)  # a polling interval under a deadline
    return None


def default_backoff_argv(stack: Stack, router: Router, world: World) -> list[str]:
    """The listener's command line without the suite's short ``--backoff-max-s``."""
    argv = stack.listener_argv(router, world.key, world.app.port)
    at = argv.index("--backoff-max-s")
    del argv[at : at + 2]
    return [*argv, "--name", "quick"]


async def test_the_url_answers_within_2s_of_a_restarted_router_listening(world: World) -> None:
    stack, router = world.stack, world.router
    ports = (router.ssh_port, router.https_port, router.http_port)
    # The pod starts before its router listens (the usual order in a cluster): the
    # listener's first attempts fail and its back-off grows before the tunnel is up.
    assert await router.proc.stop() == 0
    listener = await stack.spawn("listener", default_backoff_argv(stack, router, world))
    for _ in range(FAILURES_FIRST):
        mark = len(listener.lines)
        await listener.wait_for(r"event=reconnect_wait ", start=mark)
    router = await stack.start_router(state_dir=router.state_dir, ports=ports)
    await listener.wait_for(r"event=tunnel_up name=quick ")
    up_at = trio.current_time()
    assert await first_200_within(router, "quick", 10.0) is not None
    # Only a tunnel that lasted resets the back-off: keep it serving that long.
    async with httpx.AsyncClient(verify=router.ssl_context(), timeout=PROBE_TIMEOUT_S) as client:
        while trio.current_time() < up_at + LASTED_S + 0.5:
            assert await answers_200(router, client, "quick")
            await trio.sleep(0.2)  # a polling interval: the tunnel must keep answering

    mark = len(listener.lines)
    assert await router.proc.stop() == 0
    await listener.wait_for(r"event=tunnel_down name=quick ", start=mark)
    restarted = await stack.start_router(state_dir=router.state_dir, ports=ports)
    waited = await first_200_within(restarted, "quick", ANSWER_WITHIN_S)
    assert waited is not None, (
        f"no 200 within {ANSWER_WITHIN_S} s of the router's ready line; listener said:\n"
        + "\n".join(listener.lines[mark:])
    )
