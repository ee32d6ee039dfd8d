"""SSH over WebSocket through the router's HTTPS front door (for HTTPS-only egress)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sys

import httpx
import pytest
import trio
import trio_websocket

from examples.sample_app.app import expected_bytes

from .conftest import START_TIMEOUT_S, Router, Stack, World, public_key_of, websocket_to

MIB = 1024 * 1024


def _wss_args(world: World) -> list[str]:
    router = world.router
    return [
        "--transport",
        "wss",
        "--wss-url",
        f"wss://localhost:{router.https_port}/_hostmux/ssh",
        "--router-ca-file",
        str(router.ca_cert),
    ]


async def test_listener_over_websocket_carries_http_downloads_and_websockets(world: World) -> None:
    stack, router = world.stack, world.router
    listener = await stack.listener(
        router, world.key, world.app.port, "--name", "viawss", *_wss_args(world)
    )
    await listener.wait_for(r"event=tunnel_up name=viawss .*transport=wss")
    await router.proc.wait_for(r"event=wss_open ")

    assert (await router.get("viawss", "/")).status_code == 200
    n = 100 * MIB
    digest = hashlib.sha256()
    async with router.client() as client:
        response = await client.send(
            router.request(client, "GET", "viawss", f"/bytes?n={n}&seed=w"), stream=True
        )
        try:
            async for chunk in response.aiter_raw():
                digest.update(chunk)
        finally:
            await response.aclose()
    expected = hashlib.sha256()
    for chunk in expected_bytes(n, "w"):
        expected.update(chunk)
    assert digest.hexdigest() == expected.hexdigest()

    async with trio.open_nursery() as nursery:
        ws = await websocket_to(nursery, router, "viawss")
        with trio.fail_after(START_TIMEOUT_S):
            await ws.send_message("through two websockets")
            assert await ws.get_message() == "through two websockets"
        await ws.aclose()


async def test_auto_transport_falls_back_to_websocket_when_ssh_is_closed(world: World) -> None:
    stack, router = world.stack, world.router
    with trio.socket.socket() as sock:  # an SSH address where nothing listens
        await sock.bind(("127.0.0.1", 0))
        dead = sock.getsockname()[1]
    args = _wss_args(world)
    args[1] = "auto"
    listener = await stack.spawn(
        "listener-auto",
        [
            *stack.listener_argv(
                router, world.key, world.app.port, ssh_address=f"127.0.0.1:{dead}"
            ),
            "--name",
            "autowss",
            # known_hosts pins by SSH address and port; a fingerprint pins the key anywhere.
            "--host-key-fingerprint",
            router.host_key_fingerprint,
            *args,
        ],
    )
    await listener.wait_for(r"event=transport_switch to=wss")
    await listener.wait_for(r"event=tunnel_up name=autowss .*transport=wss")
    assert (await router.get("autowss", "/")).status_code == 200


@pytest.mark.parametrize("transport", ["wss", "auto"])
async def test_websocket_transport_with_a_router_host_name(world: World, transport: str) -> None:
    """--router names a host (as in the README), not an IP: asyncssh must not parse it as one."""
    stack, router = world.stack, world.router
    with trio.socket.socket() as sock:  # auto: nothing listens for plain SSH, so it switches
        await sock.bind(("127.0.0.1", 0))
        dead = sock.getsockname()[1]
    ssh_port = router.ssh_port if transport == "wss" else dead
    args = _wss_args(world)
    args[1] = transport
    argv = stack.listener_argv(router, world.key, world.app.port)
    argv[argv.index("--router") + 1] = f"localhost:{ssh_port}"
    listener = await stack.spawn(
        f"listener-{transport}-by-name",
        [*argv, "--name", f"byname-{transport}",
         "--host-key-fingerprint", router.host_key_fingerprint, *args],
    )  # fmt: skip
    await listener.wait_for(rf"event=tunnel_up name=byname-{transport} .*transport=wss")
    assert (await router.get(f"byname-{transport}", "/")).status_code == 200


async def test_silent_or_garbage_websocket_clients_are_dropped(stack: Stack) -> None:
    router = await stack.start_router("--ssh-login-timeout-s", "2")
    for payload in (None, b"this is not SSH\r\n", b"\x00" * 64):
        tcp = await trio.open_tcp_stream("127.0.0.1", router.https_port)
        stream = trio.SSLStream(tcp, router.ssl_context(), server_hostname=router.domain)
        try:
            async with trio.open_nursery() as nursery:
                ws = await trio_websocket.wrap_client_stream(
                    nursery, stream, f"{router.domain}:{router.https_port}", "/_hostmux/ssh"
                )
                if payload is not None:
                    await ws.send_message(payload)
                with trio.fail_after(START_TIMEOUT_S):  # dropped by the router's deadline
                    with contextlib.suppress(trio_websocket.ConnectionClosed):
                        while True:
                            await ws.get_message()
                nursery.cancel_scope.cancel()
        finally:
            await stream.aclose()
    # None of that disturbed the router.
    assert (await router.get("nobody", "/")).status_code == 404


async def test_a_client_that_never_answers_the_close_frame_is_cut_off(stack: Stack) -> None:
    # The SSH login timeout closes the session; the endpoint's close frame is never
    # answered (this client reads but sends nothing), so the endpoint ends the
    # connection after its close timeout instead of holding it.
    from hostmux.tunnel.websocket import CLOSE_TIMEOUT_S

    router = await stack.start_router("--ssh-login-timeout-s", "1")
    tcp = await trio.open_tcp_stream("127.0.0.1", router.https_port)
    stream = trio.SSLStream(tcp, router.ssl_context(), server_hostname=router.domain)
    try:
        await stream.send_all(
            f"GET /_hostmux/ssh HTTP/1.1\r\nHost: {router.domain}:{router.https_port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n".encode()
        )
        received = b""
        with trio.fail_after(1 + CLOSE_TIMEOUT_S + START_TIMEOUT_S):
            while chunk := await stream.receive_some(65536):
                received += chunk
        assert received.startswith(b"HTTP/1.1 101 ")
        assert b"\x88" in received.split(b"\r\n\r\n", 1)[1]  # a close frame came first
    finally:
        await stream.aclose()


async def test_a_text_message_ends_the_session_with_1003_at_once(stack: Stack) -> None:
    # A login timeout far beyond the wait below: the close is the endpoint's answer.
    router = await stack.start_router("--ssh-login-timeout-s", "60")
    tcp = await trio.open_tcp_stream("127.0.0.1", router.https_port)
    stream = trio.SSLStream(tcp, router.ssl_context(), server_hostname=router.domain)
    try:
        async with trio.open_nursery() as nursery:
            ws = await trio_websocket.wrap_client_stream(
                nursery, stream, f"{router.domain}:{router.https_port}", "/_hostmux/ssh"
            )
            await ws.send_message("SSH-2.0-in-a-text-message\r\n")
            code = None
            with trio.fail_after(START_TIMEOUT_S):
                try:
                    while True:
                        await ws.get_message()  # the router's SSH version line comes first
                except trio_websocket.ConnectionClosed as closed:
                    code = closed.reason.code if closed.reason else None
            assert code == 1003
            nursery.cancel_scope.cancel()
    finally:
        await stream.aclose()


async def test_plain_openssh_through_the_proxycommand_helper(world: World) -> None:
    stack, router = world.stack, world.router
    proxy = (
        f"{sys.executable} -m listener connect --ca-file {router.ca_cert} "
        f"wss://localhost:{router.https_port}/_hostmux/ssh"
    )
    await stack.spawn(
        "ssh-over-wss",
        stack.ssh_argv(
            router,
            world.key,
            "-o",
            f"ProxyCommand={proxy}",
            "-N",
            "-R",
            f"sshwss:80:127.0.0.1:{world.app.port}",
            "tunnel@127.0.0.1",
        ),
    )
    await router.proc.wait_for(r"event=tunnel_up name=sshwss ")
    await router.proc.wait_for(r"event=wss_open ")
    assert (await router.get("sshwss", "/")).status_code == 200


async def test_websocket_transport_through_an_http_proxy_with_auth(world: World) -> None:
    """HTTPS-only egress: the listener reaches the router via CONNECT on a real tinyproxy."""
    stack, router = world.stack, world.router
    proxy_port = await _start_tinyproxy(stack)
    env = _through_proxy(proxy_port)
    listener = await stack.spawn(
        "listener-proxy",
        [
            *stack.listener_argv(router, world.key, world.app.port),
            "--name",
            "proxied",
            *_wss_args(world),
        ],
        env=env,
    )
    await listener.wait_for(r"event=tunnel_up name=proxied .*transport=wss")
    tinyproxy = next(p for p in stack.processes if p.name == "tinyproxy")
    await tinyproxy.wait_for(rf"CONNECT localhost:{router.https_port}")
    assert (await router.get("proxied", "/")).status_code == 200

    wrong = _through_proxy(proxy_port, password="wrong")
    refused = await stack.spawn(
        "listener-badauth",
        [
            *stack.listener_argv(router, world.key, world.app.port),
            "--name",
            "noproxy",
            *_wss_args(world),
        ],
        env=wrong,
    )
    await refused.wait_for(r"event=tunnel_failed .*(407|proxy)")


async def test_plain_ssh_transport_through_an_http_proxy(world: World) -> None:
    """HTTPS_PROXY also carries the plain SSH transport, by CONNECT (with basic auth)."""
    stack, router = world.stack, world.router
    proxy_port = await _start_tinyproxy(stack)
    env = _through_proxy(proxy_port)
    listener = await stack.spawn(
        "listener-ssh-proxy",
        [*stack.listener_argv(router, world.key, world.app.port), "--name", "sshproxied"],
        env=env,
    )
    await listener.wait_for(r"event=tunnel_up name=sshproxied .*transport=ssh")
    tinyproxy = next(p for p in stack.processes if p.name == "tinyproxy")
    await tinyproxy.wait_for(rf"CONNECT 127\.0\.0\.1:{router.ssh_port}")
    assert (await router.get("sshproxied", "/")).status_code == 200


async def _start_tinyproxy(stack: Stack) -> int:
    if shutil.which("tinyproxy") is None:
        pytest.fail("tinyproxy not installed: run the README's test command")
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = stack.path("tinyproxy.conf")
    config.write_text(
        f"Port {port}\nListen 127.0.0.1\nTimeout 60\nAllow 127.0.0.1\n"
        "BasicAuth hostmux s3cret\nLogLevel Connect\n"
        f'PidFile "{stack.tmp}/tinyproxy-{port}.pid"\n'
    )
    proxy = await stack.spawn("tinyproxy", ["tinyproxy", "-d", "-c", str(config)])
    await proxy.wait_for(r"(Accepting|listening|Initializing)")
    return int(port)


def _through_proxy(port: int, *, password: str = "s3cret") -> dict[str, str]:
    """This environment with HTTPS_PROXY set to the tinyproxy on ``port`` (basic auth)."""
    return {**os.environ, "HTTPS_PROXY": f"http://hostmux:{password}@127.0.0.1:{port}",
            "NO_PROXY": ""}  # fmt: skip


NGINX_CONF = """
worker_processes 1;
error_log {work}/error.log warn;
pid {work}/nginx.pid;
events {{ worker_connections 256; }}
http {{
  access_log off;
  client_body_temp_path {work}/body;
  proxy_temp_path {work}/proxy;
  map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
  server {{
    listen 127.0.0.1:{port} ssl;
    server_name localhost *.localhost;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    location / {{
      proxy_pass http://127.0.0.1:{router_http};
      proxy_http_version 1.1;
      proxy_set_header Host $http_host;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_buffering off;
      proxy_request_buffering off;
      proxy_read_timeout 1h;
    }}
  }}
}}
"""


async def start_nginx(stack: Stack, router: Router) -> int:
    """nginx with the README's snippet in front of ``router``'s plain HTTP port."""
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not await trio.Path(nginx).exists():
        pytest.fail("nginx not installed: run the README's test command")
    work = stack.path("nginx")
    for sub in ("body", "proxy"):
        (work / sub).mkdir(parents=True)
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    tls = router.state_dir / "tls"
    (work / "nginx.conf").write_text(
        NGINX_CONF.format(
            work=work,
            port=port,
            router_http=router.http_port,
            cert=tls / "localhost.pem",
            key=tls / "localhost-key.pem",
        )
    )
    await stack.spawn(
        "nginx", [nginx, "-p", str(work), "-c", str(work / "nginx.conf"), "-g", "daemon off;"]
    )
    return int(port)


async def test_router_behind_nginx_serves_tunnels_and_wss(world: World) -> None:
    """The README's nginx snippet, for real: nginx terminates TLS, the router does the rest."""
    stack, router = world.stack, world.router
    port = await start_nginx(stack, router)
    wss_url = f"wss://localhost:{port}/_hostmux/ssh"
    listener = await stack.spawn(
        "listener-nginx",
        [
            *stack.listener_argv(router, world.key, world.app.port),
            "--name",
            "behindnginx",
            "--transport",
            "wss",
            "--wss-url",
            wss_url,
            "--router-ca-file",
            str(router.ca_cert),
            "--no-check-url",
        ],
    )
    with trio.fail_after(START_TIMEOUT_S):  # nginx may take a moment to listen
        await listener.wait_for(r"event=tunnel_up name=behindnginx .*transport=wss")
    async with httpx.AsyncClient(verify=router.ssl_context(), timeout=30) as client:
        response = await client.get(
            f"https://127.0.0.1:{port}/headers",
            headers={"host": "localhost"},
            extensions={"sni_hostname": "localhost"},
        )
    assert response.status_code == 200  # the router's own page, through nginx


async def test_a_trusted_proxy_names_the_browser_and_nobody_else_can(stack: Stack) -> None:
    """--trusted-proxies: nginx's X-Forwarded-For is believed, a browser's own is not."""
    router = await stack.start_router("--trusted-proxies", "127.0.0.1")
    app = await stack.start_app()
    key = stack.new_key("proxied")
    router.authorize(public_key_of(key))
    await stack.openssh_tunnel(router, key, "proxied", app.port)
    port = await start_nginx(stack, router)
    spoof = {"x-forwarded-for": "6.6.6.6", "x-forwarded-proto": "gopher"}
    # The browser is 127.0.0.5: a loopback address that is not the trusted proxy.
    # nginx serves the dev CA's *.localhost wildcard, which OpenSSL does not
    # match one label deep: the chain is still checked, the name is not.
    tls = router.ssl_context()
    tls.check_hostname = False
    transport = httpx.AsyncHTTPTransport(local_address="127.0.0.5", verify=tls)
    async with httpx.AsyncClient(transport=transport, timeout=30) as client:
        with trio.fail_after(START_TIMEOUT_S):  # nginx may take a moment to listen
            while True:
                try:
                    via_nginx = await client.get(
                        f"https://127.0.0.1:{port}/headers",
                        headers={"host": "proxied.localhost", **spoof},
                        extensions={"sni_hostname": "proxied.localhost"},
                    )
                    break
                except httpx.ConnectError:
                    await trio.lowlevel.checkpoint()
        direct = await client.send(router.request(client, "GET", "proxied", "/headers",
                                                  headers=spoof, tls=False))  # fmt: skip
    assert via_nginx.status_code == 200
    seen = via_nginx.json()
    assert seen["x-forwarded-for"] == ["127.0.0.5"]  # not 6.6.6.6, not nginx's 127.0.0.1
    assert seen["x-forwarded-proto"] == ["https"]
    assert "for=127.0.0.5;proto=https;" in seen["forwarded"][0]
    seen = direct.json()  # straight from 127.0.0.5: not a trusted proxy
    assert seen["x-forwarded-for"] == ["127.0.0.5"]
    assert seen["x-forwarded-proto"] == ["http"]
