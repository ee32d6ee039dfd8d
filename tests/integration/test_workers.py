"""``workers = N``: one supervisor, N router processes on the same ports (issue 17, point 3).

Real parts: the supervisor and its workers as processes (``python -m router
--workers 2``), Debian's redis-server on a free loopback port, stock OpenSSH
``ssh -R`` clients, TLS from the router's development CA. The workers inherit
the supervisor's stderr, so every line (each ending ``worker=N`` or
``worker=supervisor``) is read from the supervisor's output. Waits are log
lines and process exits under deadlines; nothing sleeps.
"""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trio

from .cluster_world import holders
from .conftest import START_TIMEOUT_S, LoggedProcess, Router, Stack, public_key_of
from .redis_server import RedisServer

BASE_ID = "edge"
# Reason: the kernel hands a connection to whichever worker accepts first; this many
# fresh connections reach both workers of two many times over (each takes ~1 in 2).
MAX_CONNECTIONS_TO_SEE_BOTH = 200
READY = (
    r"event=router_ready .*ssh=127\.0\.0\.1:(?P<ssh>\d+) https=127\.0\.0\.1:(?P<https>\d+) "
    r"http=127\.0\.0\.1:(?P<http>\d+) host_key=(?P<key>\S+) ca=(?P<ca>\S+) pid=(?P<pid>\d+) "
    r".*router_id={id} worker={n}$"
)


@dataclass
class Workers:
    """A supervisor and its workers, seen as one router (their shared ports)."""

    router: Router
    pids: dict[int, int]  # worker n -> pid, as its latest router_ready said

    @property
    def supervisor(self) -> LoggedProcess:
        return self.router.proc


async def worker_ready(proc: LoggedProcess, n: int, *, start: int = 0) -> re.Match[str]:
    return await proc.wait_for(READY.format(id=re.escape(f"{BASE_ID}.{n}"), n=n), start=start)


async def start_workers(stack: Stack, redis: RedisServer, *extra: str, count: int = 2) -> Workers:
    state_dir = stack.path("router-state")
    state_dir.mkdir()
    authorized = state_dir / "authorized_keys"
    authorized.touch()
    proc = await stack.spawn(
        "supervisor",
        [
            sys.executable, "-m", "router", "--state-dir", str(state_dir),
            "--authorized-keys-file", str(authorized), "--ssh-listen", "127.0.0.1:0",
            "--https-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0",
            "--workers", str(count), "--registry", redis.url, "--router-id", BASE_ID, *extra,
        ],
    )  # fmt: skip
    bound = await proc.wait_for(
        r"event=supervisor_ready workers=(\d+) .*ssh=127\.0\.0\.1:(\d+) https=127\.0\.0\.1:(\d+) "
        r"http=127\.0\.0\.1:(\d+) worker=supervisor$"
    )
    assert int(bound[1]) == count
    pids: dict[int, int] = {}
    for n in range(1, count + 1):
        ready = await worker_ready(proc, n)
        # Every worker serves the ports the supervisor bound once (port 0 chosen once).
        assert (ready["ssh"], ready["https"], ready["http"]) == bound.groups()[1:]
        pids[n] = int(ready["pid"])
    assert len(set(pids.values())) == count
    router = Router(
        proc=proc, state_dir=state_dir, authorized_keys=authorized,
        ssh_port=int(bound[2]), https_port=int(bound[3]), http_port=int(bound[4]),
        host_key_fingerprint=ready["key"], ca_cert=Path(ready["ca"]),
    )  # fmt: skip
    return Workers(router, pids)


async def requests_until_both_workers_answer(workers: Workers, name: str) -> list[int]:
    """Fresh connections (one request each) until each worker has logged one for ``name``;
    the statuses, in order. Fails after ``MAX_CONNECTIONS_TO_SEE_BOTH``."""
    proc, start, statuses = workers.supervisor, len(workers.supervisor.lines), []
    answered_by: set[str] = set()
    pattern = re.compile(rf"event=request .*host={name}\.localhost .* worker=(\d+)$")
    for _ in range(MAX_CONNECTIONS_TO_SEE_BOTH):
        statuses.append((await workers.router.get(name, "/")).status_code)
        answered_by = {m[1] for line in proc.lines[start:] if (m := pattern.search(line))}
        if answered_by == {"1", "2"}:
            return statuses
    raise AssertionError(f"only workers {answered_by} answered {len(statuses)} connections")


async def test_two_workers_serve_the_same_ports(stack: Stack, redis_server: RedisServer) -> None:
    app = await stack.start_app()
    alice = stack.new_key("alice")
    workers = await start_workers(stack, redis_server)
    workers.router.authorize(public_key_of(alice))

    # The SSH port takes a tunnel; one worker holds it, under its own router id.
    await stack.openssh_tunnel(workers.router, alice, "demo", app.port)
    (holder,) = holders(redis_server, "demo")
    assert holder in {f"{BASE_ID}.1", f"{BASE_ID}.2"}
    # The HTTPS port is served by both workers (a name neither holds: 404 from each).
    statuses = await requests_until_both_workers_answer(workers, "nobody")
    assert set(statuses) == {404}
    # SIGUSR1 (a router's live counts) reaches every worker; the supervisor stays up.
    proc, mark = workers.supervisor, len(workers.supervisor.lines)
    proc.process.send_signal(signal.SIGUSR1)
    for n in workers.pids:
        await proc.wait_for(rf"event=stats .* worker={n}$", start=mark)
    assert proc.process.returncode is None


async def test_workers_without_a_registry_stop_at_start_with_one_line(stack: Stack) -> None:
    proc = await stack.spawn("router", [sys.executable, "-m", "router", "--workers", "2"])
    assert await proc.wait_exit() == 2
    assert proc.lines == [
        "hostmux-router: error: workers: 2 workers need a registry (registry = redis://...); "
        "without one a router is one process"
    ]


async def test_a_worker_refusing_its_configuration_stops_the_supervisor_with_exit_2(
    stack: Stack, tmp_path: Path
) -> None:
    """A fault only a worker finds (here a missing portal CA file): restarting would
    fail the same way, so the supervisor stops the others and exits 2, as a router would."""
    missing = tmp_path / "no-such-ca.pub"
    proc = await stack.spawn(
        "supervisor",
        [
            sys.executable, "-m", "router", "--state-dir", str(stack.path("state")),
            "--ssh-listen", "127.0.0.1:0", "--https-listen", "127.0.0.1:0",
            "--http-listen", "127.0.0.1:0", "--workers", "2",
            "--registry", "redis://127.0.0.1:1/0", "--portal-ca-keys-file", str(missing),
        ],
    )  # fmt: skip
    assert await proc.wait_exit() == 2
    assert proc.find(rf"^hostmux-router: error: {re.escape(str(missing))}: cannot read") is not None
    assert re.fullmatch(
        r"hostmux-router: error: worker [12] refused the configuration \(exit 2; its line says "
        r"why\)",
        proc.lines[-1],
    )
    assert proc.find(r"event=worker_started worker_index=1 .*pid=\d+") is not None
    assert proc.find(r"event=worker_exited") is None  # never restarted


async def test_a_killed_worker_is_restarted_and_the_ports_keep_answering(
    stack: Stack, redis_server: RedisServer
) -> None:
    app = await stack.start_app()
    alice = stack.new_key("alice")
    workers = await start_workers(stack, redis_server)
    workers.router.authorize(public_key_of(alice))
    proc, killed = workers.supervisor, workers.pids[1]

    mark = len(proc.lines)
    os.kill(killed, signal.SIGKILL)
    await proc.wait_for(
        rf'event=worker_exited worker_index=1 pid={killed} status="signal SIGKILL" '
        r".*restart_in_s=1\.0 worker=supervisor$",
        start=mark,
    )
    # While worker 1 is down (its restart waits 1 s), worker 2 serves the ports alone.
    down = len(proc.lines)
    assert (await workers.router.get("nobody", "/")).status_code == 404
    restarted = await worker_ready(proc, 1, start=mark)
    assert proc.find(r"event=router_ready .* worker=1$", start=down) is not None  # after
    assert int(restarted["pid"]) not in (killed, workers.pids[2])
    with pytest.raises(ProcessLookupError):
        os.kill(killed, 0)  # reaped by the supervisor, not left a zombie
    # Both serve again: the SSH port takes a tunnel, the HTTPS port answers from each.
    await stack.openssh_tunnel(workers.router, alice, "again", app.port)
    workers.pids[1] = int(restarted["pid"])
    assert set(await requests_until_both_workers_answer(workers, "nobody")) == {404}


async def test_sigterm_stops_every_worker_and_releases_their_leases(
    stack: Stack, redis_server: RedisServer
) -> None:
    app = await stack.start_app()
    alice = stack.new_key("alice")
    workers = await start_workers(stack, redis_server)
    workers.router.authorize(public_key_of(alice))
    await stack.openssh_tunnel(workers.router, alice, "demo", app.port)
    (holder,) = holders(redis_server, "demo")

    proc = workers.supervisor
    proc.process.terminate()
    assert await proc.wait_exit() == 0
    # Each worker did a router's graceful shutdown: the holder released its lease at once.
    assert proc.find(rf"event=registry_released router={re.escape(holder)} names=1 ") is not None
    assert holders(redis_server, "demo") == {}
    for n, pid in workers.pids.items():
        assert proc.find(rf'event=worker_stopped worker_index={n} pid={pid} status="exit 0"')
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert proc.lines[-1].endswith("event=supervisor_stopped workers=2 worker=supervisor")


async def test_workers_end_when_their_supervisor_is_killed(
    stack: Stack, redis_server: RedisServer
) -> None:
    workers = await start_workers(stack, redis_server)
    proc = workers.supervisor
    proc.process.kill()  # no signal is passed on: each worker sees its supervisor gone
    for n in workers.pids:
        await proc.wait_for(rf"event=router_stopped worker={n}$")
    with trio.fail_after(START_TIMEOUT_S):
        for pid in workers.pids.values():
            await _exited(pid)


async def _exited(pid: int) -> None:
    """Returns once process ``pid`` (not our child) has exited: its pidfd turns readable."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        await trio.lowlevel.wait_readable(pidfd)
    finally:
        os.close(pidfd)


@pytest.mark.skipif(
    importlib.util.find_spec("router.cluster") is None,
    reason="router.cluster not importable: forwarding between routers is not merged yet",
)
async def test_requests_through_both_workers_reach_the_tunnel(
    stack: Stack, redis_server: RedisServer
) -> None:
    """The acceptance: a tunnel held by one worker is served through both (the other
    forwards over the workers' own cluster link); both workers' logs show requests."""
    app = await stack.start_app()
    alice = stack.new_key("alice")
    workers = await start_workers(stack, redis_server)
    workers.router.authorize(public_key_of(alice))
    await stack.openssh_tunnel(workers.router, alice, "demo", app.port)
    assert (workers.router.state_dir / "cluster" / "ca.crt").is_file()
    statuses = await requests_until_both_workers_answer(workers, "demo")
    assert set(statuses) == {200}
    async with workers.router.client() as client:
        request = workers.router.request(client, "GET", "demo", "/")
        response = await client.send(request)
        assert isinstance(response, httpx.Response) and response.status_code == 200


async def test_tcp_ports_are_served_by_every_worker(
    stack: Stack, redis_server: RedisServer
) -> None:
    """TCP tunnels with workers: every worker binds the range (SO_REUSEPORT); the kernel
    hands each connection to one of them, and a worker without the tunnel relays it over
    the workers' link to the one that holds it. Both workers' logs show connections."""
    from .test_tcp_tunnels import echo_once, echo_server, free_port_block, tcp_tunnel

    first = free_port_block(2)
    alice = stack.new_key("alice")
    workers = await start_workers(
        stack, redis_server, "--tcp-port-range", f"{first}-{first + 1}",
        "--tcp-listen-host", "127.0.0.1",
    )  # fmt: skip
    workers.router.authorize(public_key_of(alice))
    target = await echo_server(stack.nursery)
    ssh = await tcp_tunnel(stack, workers.router, alice, target)
    port = int((await ssh.wait_for(r"Forwarding tcp://localhost:(\d+)"))[1])
    proc, start = workers.supervisor, len(workers.supervisor.lines)
    pattern = re.compile(rf"event=tcp_connection port={port} .*outcome=closed .* worker=(\d+)$")
    seen: set[str] = set()
    for _ in range(MAX_CONNECTIONS_TO_SEE_BOTH):
        payload = os.urandom(4096)
        assert await echo_once("127.0.0.1", port, payload) == payload
        seen = {m[1] for line in proc.lines[start:] if (m := pattern.search(line))}
        if seen == {"1", "2"}:
            break
    for n in {"1", "2"} - seen:  # a line may trail its connection's end by a moment
        await proc.wait_for(pattern.pattern.replace(r"(\d+)", n), start=start)
