"""Hostile Host headers, forged and hop-by-hop headers, and upgrades at the real router.

Raw bytes over real sockets to a real router with a real OpenSSH tunnel; the
sample app's ``/headers`` shows exactly what reached the app. The 421 on a
Host switch is in test_tunnel_data_path.py and not repeated here.
"""

from __future__ import annotations

import json
import os

import trio

from .conftest import Router, Stack, public_key_of
from .raw_http import (
    EXCHANGE_DEADLINE_S,
    RecordingApp,
    assert_no_traceback,
    exchange,
    open_front_door,
    parse_responses,
    read_response,
    read_to_eof,
)

NAME = "victim"
HOST = f"{NAME}.localhost"


async def _tunnel_to_sample_app(stack: Stack, *router_args: str) -> Router:
    router = await stack.start_router(*router_args)
    key = stack.new_key("hostile")
    router.authorize(public_key_of(key))
    app = await stack.start_app()
    await stack.openssh_tunnel(router, key, NAME, app.port)
    return router


def _get(target: bytes, host: bytes, *headers: bytes) -> bytes:
    lines = [b"GET " + target + b" HTTP/1.1", b"Host: " + host, *headers, b"Connection: close"]
    return b"\r\n".join(lines) + b"\r\n\r\n"


# (Host header, status, where the answer comes from: "app", "router" or "home").
HOSTS = [
    (b"VICTIM.LOCALHOST", 200, "app"),
    (b"victim.localhost.", 200, "app"),
    (b"victim.localhost:8080", 200, "app"),  # the port is not part of the name
    (b"victim.localhost:1", 200, "app"),
    (b" victim.localhost ", 200, "app"),  # OWS around a value is not part of it
    (b"[::1]", 400, "router"),
    (b"[::1]:80", 400, "router"),
    (b"127.0.0.1", 421, "router"),  # not under the domain: not ours
    (b"v\xefctim.localhost", 400, "router"),  # non-ASCII bytes
    (b"xn--vctim-zqa.localhost", 404, "router"),  # punycode is a name like any other
    (b"victim%2elocalhost", 400, "router"),
    (b"a@victim.localhost", 400, "router"),
    (b"victim.localhost..", 400, "router"),
    (b"victim.localhost:99999x", 400, "router"),
    (b"", 400, "router"),
    (b"deeper.victim.localhost", 421, "router"),  # one wildcard level only
    (b"victim.localhost.evil.example", 421, "router"),
    (b"localhost", 200, "home"),  # the router's own name
    (b"LOCALHOST.", 200, "home"),
]


async def test_host_normalisation_routes_exactly(stack: Stack) -> None:
    router = await _tunnel_to_sample_app(stack)
    failures = []
    for host, status, source in HOSTS:
        [response] = parse_responses(await exchange(router, _get(b"/headers", host)))
        from_router = response.header(b"x-hostmux-error") is not None
        came_from = "app" if b'"_server"' in response.body else "home"
        came_from = "router" if from_router else came_from
        if (response.status, came_from) != (status, source):
            failures.append(f"{host!r}: {response.status} from {came_from}, {response.body!r}")
        if came_from == "home":  # its hint names the SSH port this router listens on
            assert f"ssh -p {router.ssh_port} -R ".encode() in response.body, response.body
    assert not failures, "\n".join(failures)
    assert_no_traceback(router.proc)


FORGED = [
    b"X-Forwarded-For: 6.6.6.1",
    b"x-forwarded-for: 6.6.6.2",
    b"X_Forwarded_For: 6.6.6.3",
    b"X-FORWARDED-FOR: 6.6.6.4",
    b"X-Real-IP: 6.6.6.5",
    b"X_Real_IP: 6.6.6.6",
    b"Forwarded: for=6.6.6.7",
    b"X-Forwarded-Host: forged.example",
    b"X_Forwarded_Host: forged.example",
    b"X-Forwarded-Proto: forged-proto",
    b"X-Forwarded-Port: 6666",
    b"X-Forwarded-Server: forged.example",
    b"X-Forwarded-Prefix: /forged",
    b"X-Request-Id: forged-id",
    b"X-Client-IP: 6.6.6.8",
    b"True-Client-IP: 6.6.6.9",
    b"Client-IP: 6.6.6.10",
    b"X-Hostmux-User: forged-user",
    b"X_Hostmux_User: forged-user",
]
HOP_BY_HOP = [
    b"Connection: close, X-Named-Hop, x-other-hop",
    b"X-Named-Hop: forged-hop",
    b"X-Other-Hop: forged-hop",
    b"Keep-Alive: timeout=5",
    b"TE: trailers",
    b"Trailer: X-Forged",
    b"Proxy-Connection: keep-alive",
    b"Proxy-Authorization: Basic Zm9yZ2VkOmZvcmdlZA==",
    b"Upgrade: h2c",
    b"HTTP2-Settings: AAMAAABkAAQAAP__",
]


async def test_forged_forwarding_identity_and_hop_by_hop_headers_never_reach_the_app(
    stack: Stack,
) -> None:
    router = await _tunnel_to_sample_app(stack)
    for tls in (False, True):
        request = b"GET /headers HTTP/1.1\r\nHost: " + HOST.encode() + b"\r\n"
        request += b"".join(line + b"\r\n" for line in [*FORGED, *HOP_BY_HOP]) + b"\r\n"
        [response] = parse_responses(await exchange(router, request, tls=tls))
        seen = response.body.decode()
        assert response.status == 200
        assert "forged" not in seen.lower()
        assert "6.6.6." not in seen
        headers = json.loads(seen)
        for name in ("x-named-hop", "x-other-hop", "keep-alive", "te", "trailer", "upgrade",
                     "proxy-connection", "proxy-authorization", "http2-settings", "x-real-ip",
                     "x_forwarded_for", "x_hostmux_user", "x-hostmux-user"):  # fmt: skip
            assert name not in headers, name
        assert headers["x-forwarded-for"] == ["127.0.0.1"]
        assert headers["x-forwarded-proto"] == ["https" if tls else "http"]
        assert headers["x-forwarded-host"] == [HOST]
        # The request ended the connection: the app is told so, nothing else.
        assert headers.get("connection", ["close"]) == ["close"]
    assert_no_traceback(router.proc)


async def test_hop_by_hop_response_headers_never_reach_the_client(stack: Stack) -> None:
    router = await stack.start_router()
    key = stack.new_key("hostile")
    router.authorize(public_key_of(key))
    app = RecordingApp()
    app.response = (
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: keep-alive, X-Private\r\n"
        b"X-Private: secret\r\nKeep-Alive: timeout=99\r\nProxy-Authenticate: Basic\r\n"
        b"Trailer: X-T\r\nUpgrade: h2c\r\nTE: trailers\r\nX-Kept: yes\r\n\r\nok\n"
    )
    await app.start(stack.nursery)
    await stack.openssh_tunnel(router, key, NAME, app.port)
    raw = await exchange(router, _get(b"/", HOST.encode()))
    [response] = parse_responses(raw)
    assert (response.status, response.body, response.header(b"x-kept")) == (200, b"ok\n", b"yes")
    names = {name for name, _ in response.headers}
    assert names.isdisjoint(
        {b"x-private", b"keep-alive", b"proxy-authenticate", b"trailer", b"upgrade", b"te"}
    )
    assert response.header(b"connection") in (None, b"close")
    assert b"secret" not in raw
    assert_no_traceback(router.proc)


async def test_error_pages_reflect_nothing_unescaped(stack: Stack) -> None:
    router = await _tunnel_to_sample_app(stack)
    script = b"<script>alert(1)</script>"
    requests = [
        _get(b"/" + script, b"nobody.localhost"),
        _get(b"/" + script, script),
        _get(b"/" + script, script + b".localhost"),
        _get(b"/x", b'"><script>alert(1)</script>'),
        _get(b"http://" + script + b"/", HOST.encode()),
        _get(b"/%3Cscript%3E", b"nobody.localhost"),
    ]
    for request in requests:
        for accept in (b"Accept: text/html", b"Accept: */*"):
            with_accept = request.replace(b"\r\n\r\n", b"\r\n" + accept + b"\r\n\r\n")
            [response] = parse_responses(await exchange(router, with_accept))
            assert response.status in (400, 404), response
            assert b"<script" not in response.body.lower(), response.body
            assert response.header(b"set-cookie") is None
    assert_no_traceback(router.proc)


# --- upgrades ---------------------------------------------------------------------------------

WEBSOCKET_HEADERS = (
    b"Connection: Upgrade",
    b"Upgrade: websocket",
    b"Sec-WebSocket-Version: 13",
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
)


def _websocket_request(target: bytes) -> bytes:
    lines = [b"GET " + target + b" HTTP/1.1", b"Host: " + HOST.encode(), *WEBSOCKET_HEADERS]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def _client_frame(payload: bytes) -> bytes:
    """A masked text frame, as a browser sends it (payload under 126 bytes)."""
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x81, 0x80 | len(payload)]) + mask + masked


def _server_frame(payload: bytes) -> bytes:
    return bytes([0x81, len(payload)]) + payload


async def test_an_upgrade_the_app_refuses_keeps_http_parsing(stack: Stack) -> None:
    router = await _tunnel_to_sample_app(stack)
    pipelined = _websocket_request(b"/not-a-websocket") + _get(b"/headers", HOST.encode())
    [refused, normal] = parse_responses(await exchange(router, pipelined))
    assert refused.status == 404
    assert normal.status == 200
    assert b'"_server"' in normal.body
    await router.proc.wait_for(r"event=request .*target=/not-a-websocket status=404")
    assert_no_traceback(router.proc)


async def test_upgrades_other_than_websocket_are_not_passed_on(stack: Stack) -> None:
    router = await _tunnel_to_sample_app(stack)
    for upgrade in (b"h2c", b"foo", b"websocket, h2c", b"TLS/1.2"):
        request = _get(b"/headers", HOST.encode(), b"Connection: Upgrade", b"Upgrade: " + upgrade)
        [response] = parse_responses(await exchange(router, request))
        assert response.status == 200, upgrade
        seen = json.loads(response.body)
        assert "upgrade" not in seen, upgrade
        assert "upgrade" not in ",".join(seen.get("connection", [])).lower(), upgrade
    assert_no_traceback(router.proc)


async def test_half_close_after_101_still_delivers_the_echo(stack: Stack) -> None:
    router = await _tunnel_to_sample_app(stack)
    stream = await open_front_door(router)
    assert isinstance(stream, trio.SocketStream)
    async with stream:
        await stream.send_all(_websocket_request(b"/ws"))
        switched, rest = await read_response(stream)
        assert switched.status == 101
        assert switched.header(b"upgrade") == b"websocket"
        await stream.send_all(_client_frame(b"last words"))
        await stream.send_eof()  # our half-close crosses the SSH channel as EOF
        after = rest + await read_to_eof(stream)
    assert after.startswith(_server_frame(b"last words"))
    assert_no_traceback(router.proc)


async def test_websocket_idle_timeout_is_not_the_keepalive_timeout(stack: Stack) -> None:
    router = await _tunnel_to_sample_app(stack, "--keepalive-timeout-s", "1")
    websocket = await open_front_door(router)
    plain = await open_front_door(router)
    async with websocket, plain:
        await websocket.send_all(_websocket_request(b"/ws"))
        switched, _ = await read_response(websocket)
        assert switched.status == 101
        await plain.send_all(b"GET /headers HTTP/1.1\r\nHost: " + HOST.encode() + b"\r\n\r\n")
        answered, _ = await read_response(plain)
        assert answered.status == 200
        # Both idle from here. The router closing the keep-alive one is the event.
        idle_since = trio.current_time()
        assert await read_to_eof(plain) == b""
        idle_s = trio.current_time() - idle_since
        await websocket.send_all(_client_frame(b"still here"))
        with trio.fail_after(EXCHANGE_DEADLINE_S):
            echo = b""
            while len(echo) < len(_server_frame(b"still here")):
                chunk = await websocket.receive_some(65536)
                assert chunk, "the router closed the idle WebSocket"
                echo += chunk
    assert echo == _server_frame(b"still here")
    assert idle_s >= 0.9
    assert_no_traceback(router.proc)


# Reason: clients wait this long for the server to close after the closing
# handshake (Python websockets' close_timeout is 10 s); the router must be well inside it.
CLOSE_AFTER_HANDSHAKE_S = 5.0


async def test_the_router_closes_tls_after_the_closing_handshake(stack: Stack) -> None:
    """RFC 6455 7.1.1: after both close frames the server closes the connection.
    Over TLS the app's EOF cannot be passed on as a half-close, so the router
    must end the connection itself instead of waiting for the browser."""
    router = await _tunnel_to_sample_app(stack)
    stream = await router.open_tls(NAME)
    async with stream:
        await stream.send_all(_websocket_request(b"/ws"))
        switched, rest = await read_response(stream)
        assert switched.status == 101
        mask = os.urandom(4)
        code = (1000).to_bytes(2, "big")
        await stream.send_all(
            bytes([0x88, 0x80 | len(code)]) + mask + bytes(b ^ mask[i] for i, b in enumerate(code))
        )
        after = rest + await read_to_eof(stream, CLOSE_AFTER_HANDSHAKE_S)
    assert after[:1] == b"\x88", after  # the app's close frame, then the end
    assert_no_traceback(router.proc)
