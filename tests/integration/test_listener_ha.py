"""hostmux-listener holds its name through several routers at once (issue 17, point 4).

Real parts: Debian's redis-server as the route registry, router processes
(``test_cluster_claims``'s fixtures), hostmux-listener as a process, stock
OpenSSH for the built-in ``tunnels --json``. Everything waits on log lines
with a deadline.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import trio

from .cluster_world import holders
from .conftest import Router, Stack, public_key_of
from .redis_server import RedisServer
from .test_cluster_claims import clustered

# Reason: a bounded load loop: enough requests to span router a's SIGTERM and exit.
MAX_REQUESTS = 400
# Reason: how many same-router redials to watch: a replacing loop would log a
# tunnel_up per round on the router, the fixed listener none.
REDIALS_WATCHED = 3


def ha_listener_argv(
    key: Path, app_port: int, *routers: Router, extra: tuple[str, ...] = ()
) -> list[str]:
    """hostmux-listener for ``routers``, pinning each one's host key (a real cluster
    shares one host key; these test routers each made their own)."""
    argv = [sys.executable, "-m", "listener", "--identity-file", str(key)]
    argv += ["--target", f"127.0.0.1:{app_port}", "--backoff-max-s", "2"]
    for router in routers:
        argv += ["--router", f"127.0.0.1:{router.ssh_port}"]
        argv += ["--host-key-fingerprint", router.host_key_fingerprint]
    return [*argv, *extra]


async def router_id_of(stack: Stack, router: Router, key: Path) -> object:
    """What the router's ``tunnels --json`` says at the top for a connection with no forward."""
    listed = await stack.spawn(
        "ssh-tunnels-json", stack.ssh_argv(router, key, "tunnel@127.0.0.1", "tunnels --json")
    )
    assert await listed.wait_exit() == 0
    return json.loads((await listed.wait_for(r"^\{.*\}$"))[0])["router"]


async def test_a_listener_holds_its_name_on_two_routers_and_survives_a_sigterm(
    stack: Stack, redis_server: RedisServer
) -> None:
    app = await stack.start_app()
    key, probe = stack.new_key("pod"), stack.new_key("probe")
    a = await clustered(stack, redis_server, "a", key, probe)
    b = await clustered(stack, redis_server, "b", key, probe)
    assert await router_id_of(stack, a, probe) == "a"
    assert await router_id_of(stack, b, probe) == "b"

    # Two routers given: two connections by default, one to each.
    listener = await stack.spawn(
        "listener", ha_listener_argv(key, app.port, a, b, extra=("--name", "ha"))
    )
    await listener.wait_for(r"event=connections_full up=2 wanted=2")
    # Each connection's line says which router it reached, as tunnels --json told it.
    await listener.wait_for(
        r"event=tunnel_up name=ha .*conn=\d router=127\.0\.0\.1:\d+ router_id=a "
    )
    await listener.wait_for(
        r"event=tunnel_up name=ha .*conn=\d router=127\.0\.0\.1:\d+ router_id=b "
    )
    assert set(holders(redis_server, "ha")) == {"a", "b"}
    # The URL is printed once, not per connection.
    assert sum(1 for line in listener.lines if line.startswith("https://ha.localhost")) == 1
    assert (await a.get("ha", "/")).status_code == 200
    assert (await b.get("ha", "/")).status_code == 200

    # SIGTERM on router a: b serves the name from its own tunnel throughout.
    statuses: list[int] = []
    a_gone = trio.Event()

    async def load_on_b() -> None:
        async with b.client() as client:
            while len(statuses) < MAX_REQUESTS and not a_gone.is_set():
                response = await client.send(b.request(client, "GET", "ha", "/"))
                statuses.append(response.status_code)

    mark = len(listener.lines)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(load_on_b)
        a.proc.process.terminate()
        assert await a.proc.wait_exit() == 0
        await listener.wait_for(r"event=connection_down name=ha .*router_id=a ", start=mark)
        a_gone.set()
    assert statuses and set(statuses) == {200}, statuses
    assert set(holders(redis_server, "ha")) == {"b"}
    await listener.wait_for(r"event=connections_short up=1 wanted=2", start=mark)
    assert listener.find(r"event=tunnel_down", start=mark) is None  # b still holds it
    assert (await b.get("ha", "/")).status_code == 200

    # Router a comes back (same ports, same host key): the listener rejoins it.
    mark = len(listener.lines)
    again = await clustered_at(stack, redis_server, a)
    await listener.wait_for(r"event=tunnel_up name=ha .*router_id=a ", start=mark)
    await listener.wait_for(r"event=connections_full up=2 wanted=2", start=mark)
    assert set(holders(redis_server, "ha")) == {"a", "b"}
    assert (await again.get("ha", "/")).status_code == 200
    assert listener.find(r"event=tunnel_down", start=mark) is None
    assert await listener.stop() == 0


async def clustered_at(stack: Stack, server: RedisServer, old: Router) -> Router:
    """Router ``a`` again, on its old ports with its old state dir (host key, authorized keys)."""
    return await stack.start_router(
        "--registry", server.url, "--router-id", "a",
        state_dir=old.state_dir, ports=(old.ssh_port, old.https_port, old.http_port),
    )  # fmt: skip


async def test_two_connections_that_reach_one_router_redial_instead_of_replacing(
    stack: Stack, redis_server: RedisServer
) -> None:
    """A balancer (here: one name, one address) sends both connections to one
    router; a same-owner tunnel there would replace the other, so the second
    hangs up before claiming and redials with back-off: the router sees one
    tunnel. The name is dialled at its DNS address, its host key checked for
    the name (known_hosts has ``[localhost]:PORT`` only)."""
    app = await stack.start_app()
    key = stack.new_key("pod")
    router = await clustered(stack, redis_server, "solo", key)
    known_hosts = stack.path("known_hosts")
    public = (router.state_dir / "ssh_host_key.pub").read_text().split()
    known_hosts.write_text(f"[localhost]:{router.ssh_port} {public[0]} {public[1]}\n")
    mark = len(router.proc.lines)
    argv = [
        sys.executable, "-m", "listener", "--router", f"localhost:{router.ssh_port}",
        "--known-hosts", str(known_hosts), "--identity-file", str(key),
        "--target", f"127.0.0.1:{app.port}", "--backoff-max-s", "2",
        "--name", "once", "--ha-connections", "2",
    ]  # fmt: skip
    listener = await stack.spawn("listener", argv)
    await listener.wait_for(
        rf"event=tunnel_up name=once .*router=localhost:{router.ssh_port}@127\.0\.0\.1 "
        r"router_id=solo "
    )
    await listener.wait_for(r"event=connections_short up=1 wanted=2")
    seen = 0
    for _ in range(REDIALS_WATCHED):
        found = await listener.wait_for(
            r"event=same_router .*router_id=solo .*action=redial", start=seen
        )
        seen = listener.lines.index(found.string, seen) + 1
    ups = [line for line in router.proc.lines[mark:] if "event=tunnel_up name=once " in line]
    assert len(ups) == 1, ups
    assert set(holders(redis_server, "once")) == {"solo"}
    assert (await router.get("once", "/")).status_code == 200
    assert listener.find(r"event=tunnel_down") is None
    assert await listener.stop() == 0


async def test_one_router_gives_one_connection_as_before(
    stack: Stack, redis_server: RedisServer
) -> None:
    """``ha_connections`` left to itself with one router address: today's single connection."""
    app = await stack.start_app()
    key = stack.new_key("pod")
    router = await clustered(stack, redis_server, "r1", key)
    router.authorize(public_key_of(key))
    listener = await stack.listener(router, key, app.port, "--name", "single")
    await router.proc.wait_for(r"event=tunnel_up name=single ")
    await listener.wait_for(r"event=tunnel_up name=single ")
    assert listener.find(r"event=ha_connections|conn=") is None
    assert (await router.get("single", "/")).status_code == 200
    assert await listener.stop() == 0
