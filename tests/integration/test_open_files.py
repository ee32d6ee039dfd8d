"""Running out of file descriptors: every front door survives it, tunnels included.

The router runs as a real process, on uvloop as shipped, with an open-files
limit of 64 (soft and hard, so its start-up cannot raise it). A crowd of
silent connections uses every descriptor up; the router must stay up, keep
its SSH tunnel, and serve again once the crowd goes. The one-port listener's
accept loop is the router's own (it used to die of EMFILE, tunnels and all);
the HTTPS front door is uvloop's server (libuv drops the connections it
cannot take).
"""

from __future__ import annotations

import resource

import httpx
import trio
import uvloop

from .conftest import START_TIMEOUT_S, Router, Stack, public_key_of

# Low enough that a few dozen connections exhaust it, high enough for the router
# to start (it holds ~25 descriptors when idle).
OPEN_FILES_LIMIT = 64
# More than the limit: the router must run out, whatever it holds already.
SILENT_CONNECTIONS = 100
# The silent connections must outlast the test, not be dropped for their silence.
SNIFF_TIMEOUT_S = "120"

assert uvloop  # the router runs on uvloop when it is installed: what these tests cover


def _low_open_files_limit() -> None:
    """Runs in the router's child process before exec."""
    resource.setrlimit(resource.RLIMIT_NOFILE, (OPEN_FILES_LIMIT, OPEN_FILES_LIMIT))


async def _open_silent(port: int) -> list[trio.SocketStream]:
    """Connections that say nothing (the kernel queues those the router cannot accept)."""
    return [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(SILENT_CONNECTIONS)]


async def _close_all(streams: list[trio.SocketStream]) -> None:
    for stream in streams:
        await stream.aclose()


async def _get(router: Router, port: int, name: str) -> httpx.Response:
    async with httpx.AsyncClient(verify=router.ssl_context(), timeout=START_TIMEOUT_S) as client:
        return await client.get(
            f"https://127.0.0.1:{port}/headers",
            headers={"host": f"{name}.localhost"},
            extensions={"sni_hostname": f"{name}.localhost"},
        )


async def test_one_port_listener_survives_running_out_of_descriptors(stack: Stack) -> None:
    router = await stack.start_router(
        "--one-port-listen", "127.0.0.1:0", "--tls-handshake-timeout-s", SNIFF_TIMEOUT_S,
        preexec_fn=_low_open_files_limit,
    )  # fmt: skip
    assert router.proc.find(rf"event=router_ready .*open_files={OPEN_FILES_LIMIT}\b")
    one_port = int(
        (await router.proc.wait_for(r"event=router_ready .*one_port=127\.0\.0\.1:(\d+)"))[1]
    )
    app = await stack.start_app()
    key = stack.new_key("crowded")
    router.authorize(public_key_of(key))
    router.ssh_port, ssh_port = one_port, router.ssh_port  # the tunnel comes in on the one port
    try:
        await stack.openssh_tunnel(router, key, "crowded", app.port)
    finally:
        router.ssh_port = ssh_port

    start = len(router.proc.lines)
    silent = await _open_silent(one_port)
    failed = await router.proc.wait_for(
        r"level=error event=one_port_accept_failed errno=EMFILE .*retry_ms=100", start=start
    )
    assert failed
    assert router.proc.process.returncode is None
    await _close_all(silent)

    # Still serving, through the tunnel that came in on the same port before the crowd.
    response = await _get(router, one_port, "crowded")
    assert response.status_code == 200
    assert response.json()["x-forwarded-proto"] == ["https"]
    await router.proc.wait_for(r"event=one_port_accept_resumed failures=\d+", start=start)
    # Logged once per burst, not once per retry.
    failures = [line for line in router.proc.lines if "one_port_accept_failed" in line]
    assert len(failures) == 1
    assert router.proc.process.returncode is None


async def test_https_front_door_survives_running_out_of_descriptors(stack: Stack) -> None:
    router = await stack.start_router(
        "--tls-handshake-timeout-s", SNIFF_TIMEOUT_S, preexec_fn=_low_open_files_limit
    )
    app = await stack.start_app()
    key = stack.new_key("crowded")
    router.authorize(public_key_of(key))
    await stack.openssh_tunnel(router, key, "crowded", app.port)

    silent = await _open_silent(router.https_port)
    # Out of descriptors, libuv accepts and closes what it cannot keep: a silent
    # connection ends long before the TLS handshake timeout would end it.
    with trio.fail_after(START_TIMEOUT_S):
        dropped = await _first_closed(silent)
    assert dropped == b""
    assert router.proc.process.returncode is None
    await _close_all(silent)

    response = await _get(router, router.https_port, "crowded")
    assert response.status_code == 200
    assert router.proc.process.returncode is None


async def _first_closed(streams: list[trio.SocketStream]) -> bytes:
    """What the first of ``streams`` to be closed by the router read last (b"" at EOF)."""
    got: list[bytes] = []
    async with trio.open_nursery() as nursery:

        async def watch(stream: trio.SocketStream) -> None:
            try:
                data = await stream.receive_some(1)
            except trio.BrokenResourceError:  # closed with a reset: closed all the same
                data = b""
            got.append(data)
            nursery.cancel_scope.cancel()

        for stream in streams:
            nursery.start_soon(watch, stream)
    return got[0]
