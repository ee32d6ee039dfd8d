"""The relay's express path: kept-alive requests answered from callbacks, and every hand-back.

A real router process, a real ``ssh -R`` tunnel, raw bytes on a real socket,
and a stand-in app whose answer each test sets. The first request of a
connection opens the upstream (the task's path); the following small ones go
the express path (``hostmux/relay/express.py``); a large answer, a body, a
pipelined request, a silent app and a ``Connection: close`` are handed back to
the task at the point reached. Each test checks what the browser and the app
saw, and that every request has its one access-log line.
"""

from __future__ import annotations

import re
import socket
import struct

import trio

from .conftest import Stack
from .raw_http import RawResponse, RecordingApp, assert_no_traceback, read_response, read_to_eof

SMALL = b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n"
LARGE_BODY = bytes(range(256)) * 400  # 100 KiB: more than the express path writes at once
LARGE = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%b" % (len(LARGE_BODY), LARGE_BODY)


def _get(path: str, extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: fast.localhost\r\n{extra}\r\n".encode()


async def _ask(stream: trio.abc.Stream, request: bytes, rest: bytes = b"") -> RawResponse:
    await stream.send_all(request)
    response, after = await read_response(stream)
    assert after == rest
    return response


def _request_lines(lines: list[str]) -> list[str]:
    return [line for line in lines if "event=request " in line]


async def test_kept_alive_requests_small_large_body_pipelined_and_close(stack: Stack) -> None:
    router = await stack.start_router()
    app = await RecordingApp(response=SMALL).start(stack.nursery)
    key = stack.new_key("fast")
    router.authorize(key.with_suffix(".pub"))
    await stack.openssh_tunnel(router, key, "fast", app.port)
    logged = len(_request_lines(router.proc.lines))

    stream = await trio.open_tcp_stream("127.0.0.1", router.http_port)
    async with stream:
        for n in range(6):  # the first opens the channel; the others go the express path
            response = await _ask(stream, _get(f"/small/{n}"))
            assert (response.status, response.body) == (200, b"ok\n")
            assert response.header(b"connection") is None

        app.response = LARGE  # more than one write's worth: handed back mid-answer
        response = await _ask(stream, _get("/large"))
        assert (response.status, response.body) == (200, LARGE_BODY)

        app.response = SMALL
        response = await _ask(stream, _get("/small/after-large"))
        assert (response.status, response.body) == (200, b"ok\n")

        # A body: handed back before it goes up, with what was checked and routed.
        post = b"POST /upload HTTP/1.1\r\nHost: fast.localhost\r\ncontent-length: 5\r\n\r\nhello"
        response = await _ask(stream, post)
        assert (response.status, response.body) == (200, b"ok\n")

        # Two requests in one write: the second waits for the first's answer.
        await stream.send_all(_get("/pipelined/1") + _get("/pipelined/2"))
        data = b""
        with trio.fail_after(30):
            while data.count(b"ok\n") < 2:
                chunk = await stream.receive_some(65536)
                assert chunk, data
                data += chunk
        assert data.count(b"HTTP/1.1 200 OK\r\n") == 2

        # The last one says close: the answer says so too, then the router closes.
        await stream.send_all(_get("/last", "Connection: close\r\n"))
        last = await read_to_eof(stream)
    assert last.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\r\nConnection: close\r\n" in last
    assert last.endswith(b"ok\n")

    # The app got every request once, in order, rewritten by the router's rules.
    await app.wait_until(lambda: b"GET /last " in bytes(app.connections[-1]))
    assert len(app.connections) == 1, [bytes(c)[:300] for c in app.connections]
    sent = bytes(app.connections[0])
    targets = re.findall(rb"(?:GET|POST) (/\S*) HTTP/1\.1\r\n", sent)
    assert targets == [
        *(b"/small/%d" % n for n in range(6)), b"/large", b"/small/after-large", b"/upload",
        b"/pipelined/1", b"/pipelined/2", b"/last",
    ]  # fmt: skip
    assert sent.count(b"\r\nx-forwarded-for: 127.0.0.1\r\n") == 12
    assert sent.count(b"\r\nx-request-id: ") == 12
    assert b"\r\n\r\nhello" in sent

    # One access-log line per request, each with its status (the last one's comes last).
    await router.proc.wait_for(r"event=request .* target=/last ")
    lines = _request_lines(router.proc.lines)[logged:]
    assert len(lines) == 12
    assert all(" status=200 " in line for line in lines), lines
    assert_no_traceback(router.proc)


async def test_an_unanswered_express_request_gets_504_in_time(stack: Stack) -> None:
    router = await stack.start_router("--response-timeout-s", "1")
    app = await RecordingApp(response=SMALL).start(stack.nursery)
    key = stack.new_key("fast")
    router.authorize(key.with_suffix(".pub"))
    await stack.openssh_tunnel(router, key, "fast", app.port)

    stream = await trio.open_tcp_stream("127.0.0.1", router.http_port)
    async with stream:
        for n in range(3):
            response = await _ask(stream, _get(f"/small/{n}"))
            assert response.status == 200
        app.answer = False  # the app reads the next request and says nothing
        started = trio.current_time()
        await stream.send_all(_get("/silent"))
        answer = await read_to_eof(stream)
        waited = trio.current_time() - started
    assert answer.startswith(b"HTTP/1.1 504 "), answer[:200]
    assert 0.9 <= waited < 10, waited
    await app.wait_until(lambda: b"GET /silent " in bytes(app.connections[0]))
    await router.proc.wait_for(r"event=request .* target=/silent status=504 ")
    assert_no_traceback(router.proc)


async def test_a_refused_request_after_express_ones_gets_its_page(stack: Stack) -> None:
    router = await stack.start_router()
    app = await RecordingApp(response=SMALL).start(stack.nursery)
    key = stack.new_key("fast")
    router.authorize(key.with_suffix(".pub"))
    await stack.openssh_tunnel(router, key, "fast", app.port)

    stream = await trio.open_tcp_stream("127.0.0.1", router.http_port)
    async with stream:
        for n in range(3):
            assert (await _ask(stream, _get(f"/small/{n}"))).status == 200
        # Another host on a bound connection, then a head the parser refuses.
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: other.localhost\r\n\r\n")
        refused = await read_to_eof(stream)
    assert refused.startswith(b"HTTP/1.1 421 ")

    stream = await trio.open_tcp_stream("127.0.0.1", router.http_port)
    async with stream:
        for n in range(3):
            assert (await _ask(stream, _get(f"/again/{n}"))).status == 200
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: fast.localhost\r\nBad Header: x\r\n\r\n")
        refused = await read_to_eof(stream)
    assert refused.startswith(b"HTTP/1.1 400 ")
    sent = b"".join(bytes(c) for c in app.connections)
    assert b"other.localhost" not in sent and b"Bad Header" not in sent
    assert_no_traceback(router.proc)


async def test_a_browser_gone_while_an_express_request_waits_is_handled_quietly(
    stack: Stack,
) -> None:
    router = await stack.start_router("--response-timeout-s", "1")
    app = await RecordingApp(response=SMALL).start(stack.nursery)
    key = stack.new_key("fast")
    router.authorize(key.with_suffix(".pub"))
    await stack.openssh_tunnel(router, key, "fast", app.port)

    for ending in ("reset", "close"):
        app.answer = True
        stream = await trio.open_tcp_stream("127.0.0.1", router.http_port)
        for n in range(3):
            assert (await _ask(stream, _get(f"/{ending}/{n}"))).status == 200
        app.answer = False
        await stream.send_all(_get(f"/{ending}/gone"))
        asked = f"GET /{ending}/gone ".encode()
        await app.wait_until(lambda: any(asked in bytes(c) for c in app.connections))  # noqa: B023
        if ending == "reset":  # linger 0: the router sees a reset, not an EOF
            stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await stream.aclose()
        # The request ends as the task's would: a 504 when the answer is due.
        await router.proc.wait_for(rf"event=request .* target=/{ending}/gone status=504 ")

    app.answer = True  # and the router serves on
    stream = await trio.open_tcp_stream("127.0.0.1", router.http_port)
    async with stream:
        assert (await _ask(stream, _get("/after"))).status == 200
    assert_no_traceback(router.proc)
