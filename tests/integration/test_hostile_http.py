"""Hostile HTTP at the real router's front door: raw bytes in, the exact outcome out.

The rule under test (``router/_relay.py``): requests are parsed by llhttp and
re-serialised from the parsed events, never forwarded raw; every framing doubt
is refused (400; 431 oversized head, 414 oversized target, 501 a transfer
coding other than chunked as RFC 9112 6.1 asks) and then the connection
closes. Each table row is one request sent on its own connection to a real
router with a real OpenSSH tunnel to a recording app; the row passes if the
router answers exactly once with the expected status, closes, and the app
received nothing of it.
"""

from __future__ import annotations

import contextlib
import socket
import sys
from dataclasses import dataclass

import pytest
import trio

from .conftest import Router, Stack, public_key_of
from .raw_http import (
    RecordingApp,
    assert_no_traceback,
    exchange,
    open_front_door,
    parse_responses,
    read_to_eof,
    rss_kib,
)

NAME = "victim"
HOST = f"{NAME}.localhost".encode()
KIB = 1024
MIB = 1024 * KIB
FLOOD_BYTES = 10 * MIB


@dataclass(frozen=True)
class Case:
    id: str
    request: bytes  # ``{host}`` is replaced by the tunnel's host
    status: int


def _post(*header_lines: bytes, body: bytes = b"", version: bytes = b"HTTP/1.1") -> bytes:
    head = b"POST /x " + version + b"\r\nHost: {host}\r\n"
    return head + b"".join(line + b"\r\n" for line in header_lines) + b"\r\n" + body


def _get_with(*header_lines: bytes) -> bytes:
    return (
        b"GET /x HTTP/1.1\r\nHost: {host}\r\n"
        + b"".join(h + b"\r\n" for h in header_lines)
        + (b"\r\n")
    )


CHUNKED = b"Transfer-Encoding: chunked"
TRANSFER_ENCODING = [
    Case("cl-and-te", _post(b"Content-Length: 5", CHUNKED, body=b"0\r\n\r\nGET /smuggled"), 400),
    Case("te-and-cl", _post(CHUNKED, b"Content-Length: 5", body=b"0\r\n\r\nGET /smuggled"), 400),
    Case("te-chunked-identity", _post(b"Transfer-Encoding: chunked, identity"), 501),
    Case("te-identity", _post(b"Transfer-Encoding: identity", body=b"abc"), 501),
    Case("te-x-chunked", _post(b"Transfer-Encoding: x-chunked", body=b"0\r\n\r\n"), 501),
    Case("te-twice", _post(CHUNKED, CHUNKED, body=b"0\r\n\r\n"), 501),
    Case("te-space-before-colon", _post(b"Transfer-Encoding : chunked", body=b"0\r\n\r\n"), 400),
    Case("te-vertical-tab", _post(b"Transfer-Encoding: \x0bchunked", body=b"0\r\n\r\n"), 400),
    Case("te-in-http-1.0", _post(CHUNKED, body=b"0\r\n\r\n", version=b"HTTP/1.0"), 400),
]
CONTENT_LENGTH = [
    Case(
        "cl-twice-different", _post(b"Content-Length: 3", b"Content-Length: 4", body=b"abcd"), 400
    ),
    Case("cl-list", _post(b"Content-Length: 3, 4", body=b"abcd"), 400),
    Case("cl-plus", _post(b"Content-Length: +5", body=b"abcde"), 400),
    Case("cl-negative", _post(b"Content-Length: -1", body=b"a"), 400),
    Case("cl-hex", _post(b"Content-Length: 0x10", body=b"a" * 16), 400),
    Case("cl-inner-space", _post(b"Content-Length: 1 0", body=b"a" * 10), 400),
    Case("cl-huge", _post(b"Content-Length: 99999999999999999999", body=b"a"), 400),
    Case("cl-over-int64", _post(b"Content-Length: 9223372036854775808", body=b"a"), 400),
]
CHUNKS = [
    Case("chunk-size-zz", _post(CHUNKED, body=b"zz\r\nabc\r\n0\r\n\r\n"), 400),
    Case("chunk-size-negative", _post(CHUNKED, body=b"-1\r\nabc\r\n0\r\n\r\n"), 400),
    Case("chunk-size-0x", _post(CHUNKED, body=b"0x5\r\nabcde\r\n0\r\n\r\n"), 400),
    Case("chunk-size-overlong", _post(CHUNKED, body=b"1" * 40 + b"\r\nabc\r\n0\r\n\r\n"), 400),
    Case("chunk-extension-lf", _post(CHUNKED, body=b'3;a="\n"\r\nabc\r\n0\r\n\r\n'), 400),
    Case("chunk-no-crlf-after-data", _post(CHUNKED, body=b"3\r\nabcX\r\n0\r\n\r\n"), 400),
]
HEADER_SYNTAX = [
    Case("bare-cr", b"GET /x HTTP/1.1\rHost: {host}\r\n\r\n", 400),
    Case("bare-cr-in-value", _get_with(b"X-A: 1\rX-B: 2"), 400),
    Case("nul-in-value", _get_with(b"X-A: a\x00b"), 400),
    Case("control-in-value", _get_with(b"X-A: a\x01b"), 400),
    Case("delete-in-value", _get_with(b"X-A: a\x7fb"), 400),
    Case("escape-in-host", b"GET /x HTTP/1.1\r\nHost: {host}\x1b[2J\r\n\r\n", 400),
    Case("nul-in-name", _get_with(b"X\x00A: 1"), 400),
    Case("space-in-name", _get_with(b"X A: 1"), 400),
    Case("empty-name", _get_with(b": 1"), 400),
    Case("no-colon", _get_with(b"X-A"), 400),
]
REQUEST_LINE = [
    Case("extra-spaces", b"GET  /x  HTTP/1.1\r\nHost: {host}\r\n\r\n", 400),
    Case("missing-version", b"GET /x\r\nHost: {host}\r\n\r\n", 400),
    Case("http-2.0", b"GET /x HTTP/2.0\r\nHost: {host}\r\n\r\n", 505),
    Case("http-1.1x", b"GET /x HTTP/1.1x\r\nHost: {host}\r\n\r\n", 400),
    Case("http-0.9", b"GET /x\r\n\r\n", 400),
    Case("tab-separators", b"GET\t/x\tHTTP/1.1\r\nHost: {host}\r\n\r\n", 400),
    Case(
        "absolute-form-other-host",
        b"GET http://other.localhost/x HTTP/1.1\r\nHost: {host}\r\n\r\n",
        400,
    ),
    Case("absolute-form-userinfo", b"GET http://a@{host}/x HTTP/1.1\r\nHost: {host}\r\n\r\n", 400),
    Case("authority-form", b"GET {host}:80 HTTP/1.1\r\nHost: {host}\r\n\r\n", 400),
    Case("missing-host", b"GET /x HTTP/1.1\r\nX-A: 1\r\n\r\n", 400),
    Case("two-hosts", b"GET /x HTTP/1.1\r\nHost: {host}\r\nHost: {host}\r\n\r\n", 400),
    Case("two-different-hosts", b"GET /x HTTP/1.1\r\nHost: {host}\r\nHost: other\r\n\r\n", 400),
    Case("connect", b"CONNECT {host}:443 HTTP/1.1\r\nHost: {host}:443\r\n\r\n", 405),
    Case("options-asterisk", b"OPTIONS * HTTP/1.1\r\nHost: {host}\r\n\r\n", 400),
    Case("target-over-8k", b"GET /" + b"a" * (9 * KIB) + b" HTTP/1.1\r\nHost: {host}\r\n\r\n", 414),
    Case("head-over-32k", _get_with(*[b"X-Pad: " + b"p" * 1000] * 40), 431),
]


@dataclass(frozen=True)
class Accepted:
    id: str
    request: bytes
    app_sees: bytes  # in the app's bytes: what the router re-serialised


# Lenient but unambiguous input the parser accepts (RFC 9110/9112 allow each): the
# app receives the router's clean re-serialisation, never the client's bytes.
ACCEPTED = [
    Accepted("te-trailing-space",
             _post(b"Transfer-Encoding: chunked ", body=b"3\r\nabc\r\n0\r\n\r\n"),
             b"\r\ntransfer-encoding: chunked\r\n"),
    Accepted("te-capitalised", _post(b"Transfer-Encoding: Chunked", body=b"0\r\n\r\n"),
             b"\r\ntransfer-encoding: chunked\r\n"),
    Accepted("absolute-form-same-host", b"GET http://{host}/x?q HTTP/1.1\r\nHost: {host}\r\n\r\n",
             b"GET /x?q HTTP/1.1\r\nhost: victim.localhost\r\n"),
    Accepted("http-1.0", b"GET /x HTTP/1.0\r\nHost: {host}\r\n\r\n", b"GET /x HTTP/1.1\r\n"),
]  # fmt: skip

# Input h11 accepted (and re-serialised) that llhttp, strict, refuses: RFC 9110/9112
# allow a recipient either to accept or to refuse each of these.
LLHTTP_REFUSES = [
    # llhttp does not read "chunked<TAB>" as chunked (h11 stripped the tab).
    Case("te-trailing-tab", _post(b"Transfer-Encoding: chunked\t", body=b"0\r\n\r\n"), 501),
    # llhttp refuses any repeated Content-Length, equal or not (as nginx does).
    Case("cl-twice-same", _post(b"Content-Length: 3", b"Content-Length: 3", body=b"abc"), 400),
    # Bare LF line ends: RFC 9112 2.2 lets a recipient accept them; llhttp does not.
    Case("bare-lf", b"GET /x HTTP/1.1\nHost: {host}\nX-A: 1\n\n", 400),
    # obs-fold: RFC 9112 5.2 says reject with 400 or unfold; llhttp rejects.
    Case("obs-fold-space", _get_with(b"X-A: 1", b" folded: yes"), 400),
    Case("obs-fold-tab", _get_with(b"X-A: 1", b"\tfolded"), 400),
    # A control character in a chunk extension's name (h11 dropped the extension).
    Case("chunk-extension-ctl", _post(CHUNKED, body=b"3;\x01=1\r\nabc\r\n0\r\n\r\n"), 400),
    # llhttp knows the registered methods only: "get" (or any custom method) is 400.
    Case("lowercase-method", b"get /x HTTP/1.1\r\nHost: {host}\r\n\r\n", 400),
]

TABLES = {
    "transfer-encoding": TRANSFER_ENCODING,
    "content-length": CONTENT_LENGTH,
    "chunks": CHUNKS,
    "header-syntax": HEADER_SYNTAX,
    "request-line": REQUEST_LINE,
    "llhttp-refuses": LLHTTP_REFUSES,
}


async def _start(stack: Stack, *router_args: str) -> tuple[Router, RecordingApp]:
    router = await stack.start_router(*router_args)
    key = stack.new_key("hostile")
    router.authorize(public_key_of(key))
    app = await RecordingApp().start(stack.nursery)
    await stack.openssh_tunnel(router, key, NAME, app.port)
    return router, app


async def _app_received_nothing_but(router: Router, app: RecordingApp, marker: str) -> list[bytes]:
    """After a good request on a new connection: what else the app received (should be [])."""
    good = (
        b"GET /"
        + marker.encode()
        + b" HTTP/1.1\r\nHost: "
        + HOST
        + b"\r\nConnection: close\r\n\r\n"
    )
    [response] = parse_responses(await exchange(router, good))
    assert (response.status, response.body) == (200, b"ok\n")
    # The good request went down its own channel after any earlier one, so
    # anything the hostile request delivered has arrived by now.
    others = [bytes(c) for c in app.connections if not c.startswith(good.split(b"\r\n")[0])]
    app.connections.clear()
    return others


@pytest.mark.parametrize("table", list(TABLES))
async def test_framing_doubts_are_refused_and_never_reach_the_app(stack: Stack, table: str) -> None:
    router, app = await _start(stack)
    failures = []
    for index, case in enumerate(TABLES[table]):
        raw = await exchange(router, case.request.replace(b"{host}", HOST), tls=index % 5 == 0)
        responses = parse_responses(raw)
        statuses = [r.status for r in responses]
        leaked = await _app_received_nothing_but(router, app, f"after-{case.id}")
        if statuses != [case.status] or leaked:
            failures.append(f"{case.id}: statuses {statuses}, app got {leaked!r}")
        elif responses[0].header(b"connection") != b"close":
            failures.append(f"{case.id}: no Connection: close")
    assert not failures, "\n".join(failures)
    assert_no_traceback(router.proc)


async def test_lenient_input_reaches_the_app_only_re_serialised(stack: Stack) -> None:
    router, app = await _start(stack)
    failures = []
    for case in ACCEPTED:
        raw = await exchange(router, case.request.replace(b"{host}", HOST), eof=True)
        statuses = [r.status for r in parse_responses(raw)]
        await app.wait_until(lambda: len(app.connections) == 1 and app.closed == 1)
        [received] = [bytes(c) for c in app.connections]
        app.connections.clear()
        app.closed = 0
        if statuses != [200] or case.app_sees not in received:
            failures.append(f"{case.id}: statuses {statuses}, app got {received!r}")
    assert not failures, "\n".join(failures)
    assert_no_traceback(router.proc)


@pytest.mark.parametrize(
    ("prefix", "status"),
    [
        (b"GET /", 414),  # the request line never ends
        (b"GET / HTTP/1.1\r\nHost: victim.localhost\r\nX-Flood: ", 431),  # nor does the head
    ],
    ids=["request-line", "header-block"],
)
async def test_a_10_mib_flood_is_cut_off_near_the_limit(
    stack: Stack, prefix: bytes, status: int
) -> None:
    router, app = await _start(stack)
    assert await _app_received_nothing_but(router, app, "warm-up") == []
    pid = router.proc.process.pid
    rss_before = rss_kib(pid)
    stream = await open_front_door(router)
    assert isinstance(stream, trio.SocketStream)
    # A small send buffer, so "sent" is close to what the router has taken in.
    stream.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * KIB)
    sent = 0
    piece = b"f" * (64 * KIB)

    async def flood() -> None:
        nonlocal sent
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await stream.send_all(prefix)
            while sent < FLOOD_BYTES:
                await stream.send_all(piece)
                sent += len(piece)

    async with stream, trio.open_nursery() as nursery:
        nursery.start_soon(flood)
        answer = await read_to_eof(stream)
        sent_when_closed = sent
    rss_growth_kib = rss_kib(pid) - rss_before
    print(f"flood {status}: closed after {sent_when_closed} bytes; RSS +{rss_growth_kib} KiB")
    assert sent_when_closed < FLOOD_BYTES // 4
    [response] = parse_responses(answer)
    assert response.status == status
    assert rss_growth_kib < 4 * KIB
    assert await _app_received_nothing_but(router, app, "after-flood") == []
    assert_no_traceback(router.proc)


async def test_nothing_after_an_erroneous_request_is_answered(stack: Stack) -> None:
    router, app = await _start(stack)
    good = b"GET /ok HTTP/1.1\r\nHost: " + HOST + b"\r\n\r\n"
    bad = (
        b"POST /bad HTTP/1.1\r\nHost: "
        + HOST
        + b"\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"
    )
    for tls in (False, True):
        raw = await exchange(router, bad + good + good, tls=tls)
        assert [r.status for r in parse_responses(raw)] == [400]
        assert await _app_received_nothing_but(router, app, "after-bad") == []

        raw = await exchange(router, good + bad + good, tls=tls)
        assert [r.status for r in parse_responses(raw)] == [200, 400]
        app.connections.clear()  # the first request reached it, as it should
    assert_no_traceback(router.proc)


# The auth helper runs the same relay in front of the app: the same doubts,
# refused before its login redirect (it would answer 302 to anything else).
HELPER_CASES = [
    *TRANSFER_ENCODING[:2], TRANSFER_ENCODING[5], TRANSFER_ENCODING[-1],
    CONTENT_LENGTH[1], CONTENT_LENGTH[3], CONTENT_LENGTH[-1],
    CHUNKS[0], CHUNKS[-1],
    HEADER_SYNTAX[1], HEADER_SYNTAX[3],
    REQUEST_LINE[2], REQUEST_LINE[-2], REQUEST_LINE[-1],
]  # fmt: skip


async def test_the_auth_helper_refuses_the_same_framing_before_any_login(stack: Stack) -> None:
    app = await RecordingApp().start(stack.nursery)
    helper = await stack.spawn(
        "authhelper",
        [
            sys.executable, "-m", "authhelper", "--listen", "127.0.0.1:0",
            "--app", f"127.0.0.1:{app.port}", "--instance-id", NAME,
            # Nothing listens there: requests without a session never reach the portal.
            "--portal-url", "http://127.0.0.1:9",
            "--public-url", f"https://{NAME}.localhost",
            "--cookie-keys-file", str(stack.path("cookie-keys")),
        ],
    )  # fmt: skip
    port = int((await helper.wait_for(r"event=authhelper_ready listen=127\.0\.0\.1:(\d+)"))[1])
    failures = []
    for case in HELPER_CASES:
        responses = parse_responses(await exchange(port, case.request.replace(b"{host}", HOST)))
        if [r.status for r in responses] != [case.status]:
            failures.append(f"{case.id}: {[r.status for r in responses]}")
    assert not failures, "\n".join(failures)
    login = b"GET /x HTTP/1.1\r\nHost: " + HOST + b"\r\nConnection: close\r\n\r\n"
    [redirect] = parse_responses(await exchange(port, login))
    assert redirect.status == 302
    assert (redirect.header(b"location") or b"").startswith(b"http://127.0.0.1:9/")
    assert app.connections == []
    assert_no_traceback(helper)


async def test_a_body_breaking_mid_stream_is_400_and_the_app_gets_only_clean_chunks(
    stack: Stack,
) -> None:
    router, app = await _start(stack)
    app.answer = False  # an app that waits for the whole body before it answers
    stream = await open_front_door(router)
    async with stream:
        await stream.send_all(_post(CHUNKED, body=b"3\r\nabc\r\n").replace(b"{host}", HOST))
        await app.wait_until(
            lambda: any(c.endswith(b"\r\n\r\n3\r\nabc\r\n") for c in app.connections)
        )
        await stream.send_all(b"zz\r\nGET /smuggled HTTP/1.1\r\nHost: " + HOST + b"\r\n\r\n")
        answer = await read_to_eof(stream)
    assert [r.status for r in parse_responses(answer)] == [400]
    await app.wait_until(lambda: app.closed == 1)  # the app is not left waiting for the rest
    [received] = app.connections
    assert received.endswith(b"\r\n\r\n3\r\nabc\r\n")
    assert b"smuggled" not in received
    assert_no_traceback(router.proc)
