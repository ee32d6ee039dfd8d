"""Faults: graceful shutdown, kill -9 on either side, peers that stop answering.

Every wait is a log line, a socket event or a process exit under a deadline;
the figures (how long a recovery took) are printed for the issue's notes.
"""

from __future__ import annotations

import hashlib
import signal
import time

import pytest
import trio
import trio_websocket

from .conftest import (
    START_TIMEOUT_S,
    LoggedProcess,
    Router,
    Stack,
    World,
    websocket_and_stream,
)
from .raw_http import read_to_eof

# Recovery bounds asserted below: generous for a loaded 2-core machine, far
# below "hangs" (the listener's back-off is capped at 2 s by the harness).
RECOVERY_DEADLINE_S = 20.0


async def _read_until(stream: trio.abc.Stream, marker: bytes, received: bytes = b"") -> bytes:
    with trio.fail_after(START_TIMEOUT_S):
        while marker not in received:
            data = await stream.receive_some()
            assert data, f"closed before {marker!r}; got {received[-300:]!r}"
            received += data
    return received


async def test_sigterm_drains_requests_closes_websockets_with_1001_and_exits_0(
    world: World,
) -> None:
    stack, router = world.stack, world.router
    await stack.openssh_tunnel(router, world.key, "drain", world.app.port)

    websocket_stream, websocket = await websocket_and_stream(stack.nursery, router, "drain")
    await websocket.send_message("before")
    assert await websocket.get_message() == "before"

    idle = await router.open_tls("drain")  # a keep-alive connection between requests
    await idle.send_all(b"GET / HTTP/1.1\r\nHost: drain.localhost\r\n\r\n")
    await _read_until(idle, b"</html>")

    body = b"x" * 100_000
    upload = await router.open_tls("drain")  # a request in flight: head sent, body not yet
    await upload.send_all(
        b"POST /upload HTTP/1.1\r\nHost: drain.localhost\r\nExpect: 100-continue\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    )
    await _read_until(upload, b"HTTP/1.1 100 ")  # the app has the request

    mark = len(router.proc.lines)
    router.proc.process.send_signal(signal.SIGTERM)
    await router.proc.wait_for(r"event=router_stopping", start=mark)

    assert await read_to_eof(idle) == b""  # closed at once, not after the grace
    with pytest.raises(trio_websocket.ConnectionClosed) as closed:
        with trio.fail_after(START_TIMEOUT_S):
            await websocket.get_message()
    assert closed.value.reason is not None
    assert closed.value.reason.code == 1001
    with pytest.raises(OSError, match="connect"):
        await trio.open_tcp_stream("127.0.0.1", router.https_port)  # no longer accepting

    await upload.send_all(body)
    response = await read_to_eof(upload)
    assert b"HTTP/1.1 200 " in response
    assert b"\r\nconnection: close\r\n" in response.lower()
    assert hashlib.sha256(body).hexdigest().encode() in response
    assert await router.proc.wait_exit() == 0
    assert router.proc.find(r"event=router_stopped") is not None
    assert router.proc.find(r"Traceback") is None
    for stream in (idle, upload, websocket_stream):
        await stream.aclose()


async def _restart(stack: Stack, router: Router) -> Router:
    return await stack.start_router(
        state_dir=router.state_dir, ports=(router.ssh_port, router.https_port, router.http_port)
    )


async def test_router_killed_mid_traffic_is_back_serving_within_seconds(world: World) -> None:
    stack, router = world.stack, world.router
    listener = await stack.listener(router, world.key, world.app.port, "--name", "phoenix")
    await listener.wait_for(r"event=tunnel_up name=phoenix ")
    websocket_stream, websocket = await websocket_and_stream(stack.nursery, router, "phoenix")
    events = await router.open_tls("phoenix")
    await events.send_all(b"GET /events HTTP/1.1\r\nHost: phoenix.localhost\r\n\r\n")
    await _read_until(events, b"data: event 3")

    mark = len(listener.lines)
    router.proc.process.kill()
    assert await router.proc.wait_exit() == -signal.SIGKILL
    with pytest.raises(trio_websocket.ConnectionClosed):
        with trio.fail_after(START_TIMEOUT_S):
            await websocket.get_message()
    with pytest.raises((trio.BrokenResourceError, trio.ClosedResourceError, AssertionError)):
        await _read_until(events, b"never sent")
    await listener.wait_for(r"event=(tunnel_down|tunnel_failed)", start=mark)

    started = time.monotonic()
    restarted = await _restart(stack, router)
    with trio.fail_after(RECOVERY_DEADLINE_S):
        await listener.wait_for(r"event=tunnel_up name=phoenix ", start=mark)
        response = await restarted.get("phoenix", "/bytes?n=4096")
    for stream in (events, websocket_stream):
        await stream.aclose()
    print(f"router kill -9 -> restart -> first 200 through the listener: "
          f"{time.monotonic() - started:.2f} s")  # fmt: skip
    assert response.status_code == 200
    assert len(response.content) == 4096


@pytest.mark.parametrize("client", ["openssh", "listener"])
async def test_tunnel_client_killed_gives_502_at_once(world: World, client: str) -> None:
    stack, router = world.stack, world.router
    proc: LoggedProcess
    if client == "openssh":
        proc = await stack.openssh_tunnel(router, world.key, "gone", world.app.port)
    else:
        proc = await stack.listener(router, world.key, world.app.port, "--name", "gone")
        await router.proc.wait_for(r"event=tunnel_up name=gone ")
    assert (await router.get("gone", "/")).status_code == 200

    mark = len(router.proc.lines)
    proc.process.kill()
    with trio.fail_after(RECOVERY_DEADLINE_S):
        await router.proc.wait_for(r"event=tunnel_down name=gone ", start=mark)
        response = await router.get("gone", "/")
    assert response.status_code == 502
    assert "offline" in response.text


async def test_a_stopped_tunnel_client_is_dropped_by_keepalives(stack: Stack) -> None:
    router = await stack.start_router("--ssh-keepalive-interval-s", "1")
    app = await stack.start_app()
    key = stack.new_key("frozen")
    router.authorize(key.with_name(key.name + ".pub"))
    ssh = await stack.openssh_tunnel(router, key, "frozen", app.port)

    mark = len(router.proc.lines)
    started = time.monotonic()
    ssh.process.send_signal(signal.SIGSTOP)
    try:
        # asyncssh gives up after keepalive_count_max (3) unanswered probes.
        with trio.fail_after(RECOVERY_DEADLINE_S):
            await router.proc.wait_for(r"event=tunnel_down name=frozen ", start=mark)
        detected_s = time.monotonic() - started
    finally:
        ssh.process.send_signal(signal.SIGCONT)
    print(f"stopped OpenSSH client dropped by the router after {detected_s:.1f} s")
    assert detected_s < 1 * (3 + 1) + 5  # interval x (count_max + 1), plus slack for load
    response = await router.get("frozen", "/")
    assert response.status_code == 502


async def test_a_stopped_router_is_left_by_the_listener_which_comes_back(world: World) -> None:
    stack, router = world.stack, world.router
    listener = await stack.listener(
        router, world.key, world.app.port, "--name", "patient", "--keepalive-interval-s", "1"
    )
    await listener.wait_for(r"event=tunnel_up name=patient ")
    mark = len(listener.lines)
    started = time.monotonic()
    router.proc.process.send_signal(signal.SIGSTOP)
    try:
        with trio.fail_after(RECOVERY_DEADLINE_S):
            await listener.wait_for(r"event=(tunnel_down|tunnel_failed)", start=mark)
        detected_s = time.monotonic() - started
    finally:
        router.proc.process.send_signal(signal.SIGCONT)
    print(f"stopped router left by the listener after {detected_s:.1f} s")
    with trio.fail_after(RECOVERY_DEADLINE_S):
        await listener.wait_for(r"event=tunnel_up name=patient ", start=mark)
    assert (await router.get("patient", "/")).status_code == 200


async def test_listener_sigterm_cancels_its_tunnel_and_exits_0(world: World) -> None:
    stack, router = world.stack, world.router
    listener = await stack.listener(router, world.key, world.app.port, "--name", "tidy")
    await listener.wait_for(r"event=tunnel_up name=tidy ")
    mark = len(router.proc.lines)
    assert await listener.stop() == 0
    assert listener.find(r"event=listener_stopped") is not None
    await router.proc.wait_for(r"event=tunnel_down name=tidy ", start=mark)
    response = await router.get("tidy", "/")
    assert response.status_code == 502
    assert listener.find(r"Traceback") is None
