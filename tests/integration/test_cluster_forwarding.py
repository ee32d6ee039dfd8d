"""Any router serves any name: requests forwarded over the router link (issue 17, step 3).

Real parts: Debian's redis-server, router processes ``a`` and ``b`` with
certificates from ``hostmux-keys cluster-ca``, stock OpenSSH ``ssh -R`` on
router a, the sample app, real TLS on both the front doors and the link.
Every request in these tests reaches router b's front door; the tunnel is on a.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import ssl
from pathlib import Path

import httpx
import trio

from examples.sample_app.app import expected_bytes

from .cluster_world import ClusterCA, Member, holders, start_member
from .conftest import Stack, websocket_to
from .redis_server import RedisServer

# Reason: small enough to keep the test quick, large enough that a hang shows.
CONNECT_TIMEOUT_S = 3.0
# Reason: a loaded 2-core machine answers a refused dial in well under this.
SLACK_S = 2.0
UPLOAD_BYTES = 1024 * 1024
DOWNLOAD_BYTES = 10 * 1024 * 1024


async def _cluster(
    stack: Stack, redis_server: RedisServer, tmp_path: Path, *extra: str
) -> tuple[Member, Member, Path, Path]:
    ca = ClusterCA.create(tmp_path / "cluster-ca")
    alice, mallory = stack.new_key("alice"), stack.new_key("mallory")
    a = await start_member(stack, redis_server, ca, "a", *extra, keys=(alice, mallory))
    b = await start_member(stack, redis_server, ca, "b", *extra, keys=(alice, mallory))
    return a, b, alice, mallory


async def _raw_get(member: Member, name: str, path: str) -> tuple[bytes, int]:
    """GET ``path`` through ``member``'s front door on a raw TLS stream: (answer, our port)."""
    router = member.router
    tcp = await trio.open_tcp_stream("127.0.0.1", router.https_port)
    local_port = tcp.socket.getsockname()[1]
    stream = trio.SSLStream(tcp, router.ssl_context(), server_hostname=f"{name}.localhost")
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {name}.localhost:{router.https_port}\r\n"
        "X-Hostmux-Name: evil\r\nX-Hostmux-Owner: mallory\r\nConnection: close\r\n\r\n"
    )
    await stream.send_all(request.encode())
    answer = b""
    with trio.fail_after(30):
        while chunk := await stream.receive_some(65536):
            answer += chunk
    await stream.aclose()
    return answer, local_port


async def test_a_tunnel_on_router_a_answers_through_router_b(
    stack: Stack, redis_server: RedisServer, tmp_path: Path
) -> None:
    app = await stack.start_app()
    a, b, alice, mallory = await _cluster(stack, redis_server, tmp_path)
    await stack.openssh_tunnel(a.router, alice, "demo", app.port)
    assert set(holders(redis_server, "demo")) == {"a"}

    # A plain GET through b: the app sees the real browser, not router b, and no
    # x-hostmux-* header a browser sent.
    mark = len(a.router.proc.lines)
    answer, port = await _raw_get(b, "demo", "/headers")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    seen = json.loads(body)
    assert seen["x-forwarded-for"] == ["127.0.0.1"]
    assert seen["x-forwarded-proto"] == ["https"]
    assert "x-hostmux-name" not in seen and "x-hostmux-owner" not in seen
    # Router a logged the browser's own address (ip and port), carried over the link.
    await a.router.proc.wait_for(
        rf"event=link_stream name=demo router=b client=127\.0\.0\.1:{port} ", start=mark
    )

    async with b.router.client() as client:
        # 1 MiB up, through b to a's tunnel.
        upload = os.urandom(UPLOAD_BYTES)
        response = await client.send(
            b.router.request(client, "POST", "demo", "/upload", content=upload)
        )
        assert response.status_code == 200
        assert response.json() == {
            "bytes": UPLOAD_BYTES, "sha256": hashlib.sha256(upload).hexdigest()
        }  # fmt: skip
        # 10 MiB down, streamed.
        digest = hashlib.sha256()
        request = b.router.request(client, "GET", "demo", f"/bytes?n={DOWNLOAD_BYTES}&seed=fwd")
        response = await client.send(request, stream=True)
        assert response.status_code == 200
        received = 0
        async for chunk in response.aiter_bytes():
            digest.update(chunk)
            received += len(chunk)
        await response.aclose()
        expected = hashlib.sha256(b"".join(expected_bytes(DOWNLOAD_BYTES, "fwd"))).hexdigest()
        assert (received, digest.hexdigest()) == (DOWNLOAD_BYTES, expected)

    # A WebSocket echoes through b.
    websocket = await websocket_to(stack.nursery, b.router, "demo")
    for message in ("hello over the link", "x" * 100_000):
        await websocket.send_message(message)
        assert await websocket.get_message() == message
    await websocket.aclose()

    # A second key cannot take the name through b.
    mark = len(b.router.proc.lines)
    thief = await stack.openssh_tunnel(b.router, mallory, "demo", app.port, wait=False)
    assert await thief.wait_exit() != 0
    await b.router.proc.wait_for(
        r"event=forward_refused .*reason=.*'demo' is in use by another key", start=mark
    )
    assert (await b.router.get("demo", "/")).status_code == 200  # still alice's, via a
    # An unknown name is still a 404 through b (the registry does not know it).
    assert (await b.router.get("nobody", "/")).status_code == 404


async def test_server_sent_events_cross_the_link_one_by_one(
    stack: Stack, redis_server: RedisServer, tmp_path: Path
) -> None:
    """The app sends each next event only when told (``/events?paced=``), after the test
    read the one before through b: neither router nor the link holds an event back."""
    app = await stack.start_app()
    a, b, alice, _ = await _cluster(stack, redis_server, tmp_path)
    await stack.openssh_tunnel(a.router, alice, "sse", app.port)
    mark = len(a.router.proc.lines)
    stream = await b.router.open_tls("sse")
    await stream.send_all(
        f"GET /events?count=3&paced=fwd HTTP/1.1\r\nHost: sse.localhost:{b.router.https_port}"
        "\r\n\r\n".encode()
    )
    received = b""

    async def read_until(marker: bytes) -> None:
        nonlocal received
        with trio.fail_after(30):
            while marker not in received:
                chunk = await stream.receive_some(65536)
                assert chunk, f"the stream ended early after {received!r}"
                received += chunk

    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{app.port}") as app_control:
        for number in (1, 2, 3):
            await read_until(f"data: event {number}\n\n".encode())
            # Nothing after it yet: the app has not been allowed to send it.
            assert f"data: event {number + 1}".encode() not in received
            if number < 3:
                step = await app_control.post("/events/next", params={"paced": "fwd"})
                assert step.json() == {"allowed": number}
    await trio.aclose_forcefully(stream)
    head = received.partition(b"\r\n\r\n")[0].lower()
    assert head.startswith(b"http/1.1 200"), head
    assert b"content-type: text/event-stream" in head
    # It crossed the link: router a served it for router b.
    await a.router.proc.wait_for(r"event=link_stream name=sse router=b ", start=mark)


async def test_the_link_refuses_a_client_without_a_cluster_certificate(
    stack: Stack, redis_server: RedisServer, tmp_path: Path
) -> None:
    a, _, _, _ = await _cluster(stack, redis_server, tmp_path)
    ca = tmp_path / "cluster-ca" / "ca.crt"
    context = ssl.create_default_context(cafile=os.fspath(ca))
    context.check_hostname = False  # the server's certificate is fine; ours is missing
    tcp = await trio.open_tcp_stream("127.0.0.1", a.link_port)
    stream = trio.SSLStream(tcp, context, server_hostname="a")
    answer = b""
    with trio.fail_after(10):
        try:
            await stream.do_handshake()
            await stream.send_all(
                b"POST /_hostmux/stream HTTP/1.1\r\nHost: a\r\nX-Hostmux-Name: demo\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n"
            )
            while chunk := await stream.receive_some(4096):
                answer += chunk
        except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError):
            pass  # TLS 1.3: the server's refusal arrives as an alert on the first read
        finally:
            await trio.aclose_forcefully(stream)
    assert b"HTTP/1.1" not in answer


async def test_a_dead_or_stalled_holder_is_a_502_in_time_and_redis_down_keeps_the_route(
    stack: Stack, redis_server: RedisServer, tmp_path: Path
) -> None:
    app = await stack.start_app()
    a, b, alice, _ = await _cluster(
        stack, redis_server, tmp_path, "--connect-timeout-s", str(CONNECT_TIMEOUT_S)
    )
    await stack.openssh_tunnel(a.router, alice, "demo", app.port)
    assert (await b.router.get("demo", "/")).status_code == 200  # b's cache holds the route

    # Redis stops: the cached route keeps working (fail static).
    redis_server.stop()
    for _ in range(3):
        assert (await b.router.get("demo", "/headers")).status_code == 200

    # Router a stalls (SIGSTOP): its socket accepts, nothing answers -> 502 in time.
    os.kill(a.router.proc.process.pid, signal.SIGSTOP)
    try:
        started = trio.current_time()
        response = await b.router.get("demo", "/")
        elapsed = trio.current_time() - started
    finally:
        os.kill(a.router.proc.process.pid, signal.SIGCONT)
    assert response.status_code == 502
    assert response.headers["x-hostmux-error"] == "router-unreachable"
    assert elapsed < CONNECT_TIMEOUT_S + SLACK_S

    # Router a killed -9: its port refuses -> 502 at once, never a hang.
    a.router.proc.process.kill()
    await a.router.proc.wait_exit()
    started = trio.current_time()
    response = await b.router.get("demo", "/")
    assert response.status_code == 502
    assert response.headers["x-hostmux-error"] == "router-unreachable"
    assert trio.current_time() - started < CONNECT_TIMEOUT_S + SLACK_S
