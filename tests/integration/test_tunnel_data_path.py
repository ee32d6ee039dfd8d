"""The tunnel data path end to end: HTTPS → router → SSH → app, and back.

Real OpenSSH ``ssh -R`` and hostmux-listener clients, a real router process,
the sample app, real TLS from the router's development CA; loopback only.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import AsyncIterator

import trio

import keys
from examples.sample_app.app import expected_bytes

from .conftest import Router, Stack, World, public_key_of, websocket_to

MIB = 1024 * 1024


async def _sha256_download(router: Router, name: str, n: int, seed: str) -> tuple[int, str, int]:
    digest = hashlib.sha256()
    async with router.client() as client:
        request = router.request(client, "GET", name, f"/bytes?n={n}&seed={seed}")
        response = await client.send(request, stream=True)
        try:
            async for chunk in response.aiter_raw():
                digest.update(chunk)
        finally:
            await response.aclose()
        return response.status_code, digest.hexdigest(), response.num_bytes_downloaded


def _expected_sha256(n: int, seed: str) -> str:
    digest = hashlib.sha256()
    for chunk in expected_bytes(n, seed):
        digest.update(chunk)
    return digest.hexdigest()


async def _read_until(stream: trio.abc.ReceiveStream, marker: bytes) -> bytes:
    data = b""
    with trio.fail_after(30):
        while marker not in data:
            chunk = await stream.receive_some(65536)
            assert chunk, f"connection closed early after {data!r}"
            data += chunk
    return data


async def _read_to_eof(stream: trio.abc.ReceiveStream) -> bytes:
    data = b""
    with trio.fail_after(30):
        while chunk := await stream.receive_some(65536):
            data += chunk
    return data


async def test_openssh_tunnel_serves_page_download_and_upload(world: World) -> None:
    router = world.router
    await world.stack.openssh_tunnel(router, world.key, "myapp", world.app.port)

    page = await router.get("myapp", "/")
    assert page.status_code == 200
    assert "hostmux sample app" in page.text

    n = 100 * MIB
    status, digest, size = await _sha256_download(router, "myapp", n, "big")
    assert (status, size) == (200, n)
    assert digest == _expected_sha256(n, "big")

    upload = os.urandom(4 * MIB) * 8  # 32 MiB, streamed up in 1 MiB chunks

    async def body() -> AsyncIterator[bytes]:
        for start in range(0, len(upload), MIB):
            yield upload[start : start + MIB]

    async with router.client() as client:
        response = await client.send(
            router.request(client, "POST", "myapp", "/upload", content=body())
        )
    assert response.status_code == 200
    assert response.json() == {"bytes": len(upload), "sha256": hashlib.sha256(upload).hexdigest()}
    await router.proc.wait_for(
        r"event=request .*name=myapp .*method=POST target=/upload status=200"
    )


async def test_hostmux_listener_tunnel_with_random_name(world: World) -> None:
    router = world.router
    listener = await world.stack.listener(router, world.key, world.app.port)
    url = await listener.wait_for(rf"^https://([a-z0-9]+)\.localhost:{router.https_port}$")
    name = url[1]
    assert len(name) == 12

    page = await router.get(name, "/")
    assert page.status_code == 200
    assert "hostmux sample app" in page.text
    n = 10 * MIB + 7
    status, digest, size = await _sha256_download(router, name, n, "listener")
    assert (status, size) == (200, n)
    assert digest == _expected_sha256(n, "listener")

    assert await listener.stop() == 0
    await listener.wait_for(r"event=listener_stopped")


async def test_two_tunnels_reach_their_own_apps(stack: Stack) -> None:
    router = await stack.start_router()
    key = stack.new_key("multi")
    router.authorize(public_key_of(key))
    app_a, app_b = await stack.start_app(), await stack.start_app()
    await stack.openssh_tunnel(router, key, "alpha", app_a.port)
    await stack.openssh_tunnel(router, key, "beta", app_b.port)

    for name, app in (("alpha", app_a), ("beta", app_b), ("alpha", app_a)):
        response = await router.get(name, "/headers")
        assert response.status_code == 200
        assert response.json()["_server"][1] == app.port
        assert response.json()["host"] == [f"{name}.localhost:{router.https_port}"]


async def test_keepalive_connection_switching_host_gets_421(world: World) -> None:
    router = world.router
    await world.stack.openssh_tunnel(router, world.key, "first", world.app.port)
    await world.stack.openssh_tunnel(router, world.key, "second", world.app.port)

    request = "GET /status/204 HTTP/1.1\r\nHost: {}.localhost\r\n\r\n"
    async with await router.open_tls("first") as stream:
        await stream.send_all(request.format("first").encode())
        first = await _read_until(stream, b"\r\n\r\n")
        assert first.startswith(b"HTTP/1.1 204 ")
        await stream.send_all(request.format("second").encode())
        second = await _read_to_eof(stream)
    assert second.startswith(b"HTTP/1.1 421 ")
    assert b"connection: close" in second.lower()


async def test_websocket_echo_including_one_mebibyte(world: World) -> None:
    router = world.router
    await world.stack.openssh_tunnel(router, world.key, "wsapp", world.app.port)
    async with trio.open_nursery() as nursery:
        ws = await websocket_to(nursery, router, "wsapp")
        with trio.fail_after(30):
            await ws.send_message("hello")
            assert await ws.get_message() == "hello"
            big = os.urandom(MIB)
            await ws.send_message(big)
            assert await ws.get_message() == big
        await ws.aclose()
    await router.proc.wait_for(r"event=request .*name=wsapp .*target=/ws status=101")


async def test_server_sent_events_arrive_while_the_stream_stays_open(world: World) -> None:
    router = world.router
    await world.stack.openssh_tunnel(router, world.key, "sse", world.app.port)
    request = b"GET /events?count=2 HTTP/1.1\r\nHost: sse.localhost\r\n\r\n"
    async with await router.open_tls("sse") as stream:
        await stream.send_all(request)
        # The app keeps the stream open after two events: a buffering router never delivers them.
        data = await _read_until(stream, b"data: event 2\n\n")
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"content-type: text/event-stream" in head.lower()
    assert b"transfer-encoding: chunked" in head.lower()
    events = [line for line in body.split(b"\n") if line.startswith(b"data:")]
    assert events == [b"data: event 1", b"data: event 2"]


async def test_unknown_name_gone_tunnel_and_dead_app_get_clear_pages(world: World) -> None:
    stack, router = world.stack, world.router
    missing = await router.get("nobody", "/")
    assert missing.status_code == 404
    assert missing.headers["cache-control"] == "no-store"
    assert "set-cookie" not in missing.headers
    assert "nobody" in missing.text

    ssh = await stack.openssh_tunnel(router, world.key, "flaky", world.app.port)
    assert (await router.get("flaky", "/")).status_code == 200
    mark = len(router.proc.lines)
    await ssh.stop()
    await router.proc.wait_for(r"event=tunnel_down name=flaky ", start=mark)
    gone = await router.get("flaky", "/")
    assert gone.status_code == 502
    assert "offline" in gone.text

    with trio.socket.socket() as sock:  # a port with nothing listening
        await sock.bind(("127.0.0.1", 0))
        dead_port = sock.getsockname()[1]
    await stack.openssh_tunnel(router, world.key, "deadapp", dead_port)
    dead = await router.get("deadapp", "/", headers={"accept": "text/html"})
    assert dead.status_code == 502
    assert "could not reach its app" in dead.text
    assert dead.headers["content-type"].startswith("text/html")


async def test_forwarding_headers_are_set_by_the_router_only(world: World) -> None:
    router = world.router
    await world.stack.openssh_tunnel(router, world.key, "hdrs", world.app.port)
    spoofed = {
        "x-forwarded-for": "6.6.6.6",
        "X_Forwarded_For": "7.7.7.7",
        "forwarded": "for=6.6.6.6",
        "x-real-ip": "6.6.6.6",
        "x-request-id": "mine",
        "connection": "keep-alive, x-secret",
        "x-secret": "hop",
    }
    seen = (await router.get("hdrs", "/headers", headers=spoofed)).json()
    host = f"hdrs.localhost:{router.https_port}"
    assert seen["x-forwarded-for"] == ["127.0.0.1"]
    assert seen["x-forwarded-proto"] == ["https"]
    assert seen["x-forwarded-host"] == [host]
    assert seen["forwarded"] == [f'for=127.0.0.1;proto=https;host="{host}"']
    assert len(seen["x-request-id"]) == 1
    assert seen["x-request-id"] != ["mine"]
    for dropped in ("x_forwarded_for", "x-real-ip", "x-secret"):
        assert dropped not in seen
    assert "6.6.6.6" not in json.dumps(seen)
    assert "7.7.7.7" not in json.dumps(seen)


async def test_plain_http_front_door_and_the_routers_own_host(world: World) -> None:
    router = world.router
    await world.stack.openssh_tunnel(router, world.key, "plain", world.app.port)
    async with router.client() as client:
        response = await client.send(router.request(client, "GET", "plain", "/headers", tls=False))
    assert response.status_code == 200
    assert response.json()["x-forwarded-proto"] == ["http"]

    async with router.client() as client:
        request = client.build_request(
            "GET", f"https://127.0.0.1:{router.https_port}/",
            headers={"host": "localhost"}, extensions={"sni_hostname": "localhost"},
        )  # fmt: skip
        home = await client.send(request)
    assert home.status_code == 200
    assert f"ssh -p {router.ssh_port} -R myapp:80:localhost:3000" in home.text


async def test_certificate_files_from_config_serve_a_real_domain(stack: Stack) -> None:
    """Production shape: a wildcard certificate for *.DOMAIN given as files."""
    ca_dir = stack.path("ca")
    files, _ = keys.ensure_dev_tls(ca_dir, "tunnels.test")  # CA + *.tunnels.test leaf
    router = await stack.start_router(
        "--domain", "tunnels.test",
        "--tls-cert-file", str(files.cert), "--tls-key-file", str(files.key),
    )  # fmt: skip
    router.ca_cert = files.ca_cert
    router.domain = "tunnels.test"
    key = stack.new_key("prod")
    router.authorize(public_key_of(key))
    app = await stack.start_app()
    await stack.openssh_tunnel(router, key, "lab", app.port)
    response = await router.get("lab", "/headers")
    assert response.status_code == 200
    assert response.json()["host"] == [f"lab.tunnels.test:{router.https_port}"]
    assert not (router.state_dir / "tls").exists()  # no dev CA when files are configured
