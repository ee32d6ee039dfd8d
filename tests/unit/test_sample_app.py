"""The sample app, run exactly as the demo runs it: ``python -m examples.sample_app``.

Each test starts its own app process on loopback port 0 and learns the port
from the ready line, so there are no sleeps and no fixed ports. Every wait has
a deadline (``trio.fail_after``), so a hang fails the test instead of the run.
"""

from __future__ import annotations

import hashlib
import random
import re
import subprocess
import sys
from collections.abc import AsyncIterator

import httpx
import pytest
import trio
from trio_websocket import open_websocket_url

from examples.sample_app.app import BYTES_CHUNK_SIZE, expected_bytes

# Starting Python and importing hypercorn is ~0.5 s; 20 s only trips on a real hang.
STARTUP_DEADLINE_S = 20
# Graceful shutdown is at most the app's 2 s grace period plus interpreter exit.
SHUTDOWN_DEADLINE_S = 10
# Each request in these tests finishes in well under a second on loopback.
REQUEST_DEADLINE_S = 10
# An ended response reaches a loopback client within milliseconds; waiting
# this long without seeing the end shows that /events stays open.
OPEN_STREAM_CHECK_S = 0.3
READY_LINE = re.compile(rb"sample-app listening on (http://127\.0\.0\.1:(\d+))\n")


@pytest.fixture
async def base_url() -> AsyncIterator[str]:
    """Start the sample app, yield its ``http://127.0.0.1:PORT``, and stop it.

    Teardown sends SIGTERM to this process only and requires exit status 0 and
    nothing on stdout after the ready line.
    """
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "examples.sample_app", "--port", "0"], stdout=subprocess.PIPE
    )
    assert proc.stdout is not None
    try:
        output = b""
        with trio.fail_after(STARTUP_DEADLINE_S):
            while not output.endswith(b"\n"):
                chunk = await proc.stdout.receive_some()
                assert chunk, f"sample app exited before it was ready; stdout: {output!r}"
                output += chunk
        ready = READY_LINE.fullmatch(output)
        assert ready is not None, f"unexpected ready line: {output!r}"
        yield ready.group(1).decode()

        proc.terminate()
        with trio.fail_after(SHUTDOWN_DEADLINE_S):
            assert await proc.wait() == 0
            assert await proc.stdout.receive_some() == b"", "the app must stay quiet on stdout"
    finally:
        if proc.returncode is None:  # a failed test or assertion left it running
            proc.kill()
            with trio.move_on_after(SHUTDOWN_DEADLINE_S):
                await proc.wait()
        await proc.stdout.aclose()


def _ws_url(base_url: str, path: str) -> str:
    return base_url.replace("http://", "ws://", 1) + path


def test_expected_bytes_chunks_add_up_to_n() -> None:
    sizes = [len(chunk) for chunk in expected_bytes(2 * BYTES_CHUNK_SIZE + 5, "s")]
    assert sizes == [BYTES_CHUNK_SIZE, BYTES_CHUNK_SIZE, 5]
    assert list(expected_bytes(0, "s")) == []


def test_expected_bytes_depends_on_seed_only() -> None:
    assert list(expected_bytes(10, "a")) == list(expected_bytes(10, "a"))
    assert list(expected_bytes(10, "a")) != list(expected_bytes(10, "b"))


async def test_index_page_shows_host_user_and_websocket_script(base_url: str) -> None:
    with trio.fail_after(REQUEST_DEADLINE_S):
        async with httpx.AsyncClient(base_url=base_url) as client:
            response = await client.get("/", headers={"x-hostmux-user": "<alice>"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    page = response.text
    assert "hostmux sample app" in page
    assert f"<code>{base_url.removeprefix('http://')}</code>" in page  # the Host header
    assert "&lt;alice&gt;" in page
    assert "<alice>" not in page
    assert 'id="echo"' in page
    assert '"/ws"' in page


async def test_headers_keeps_duplicates_and_reports_client(base_url: str) -> None:
    with trio.fail_after(REQUEST_DEADLINE_S):
        async with httpx.AsyncClient(base_url=base_url) as client:
            response = await client.get("/headers", headers=[("X-Dup", "a"), ("X-Dup", "b")])
    assert response.status_code == 200
    report = response.json()
    assert report["x-dup"] == ["a", "b"]
    assert report["host"] == [base_url.removeprefix("http://")]
    host, port = report["_client"]
    assert host == "127.0.0.1"
    assert isinstance(port, int)


async def test_bytes_streams_the_expected_data(base_url: str) -> None:
    n = 3_000_000  # three chunks, the last one partial
    expected = hashlib.sha256()
    for chunk in expected_bytes(n, "x"):
        expected.update(chunk)

    received = hashlib.sha256()
    count = 0
    with trio.fail_after(REQUEST_DEADLINE_S):
        async with (
            httpx.AsyncClient(base_url=base_url) as client,
            client.stream("GET", "/bytes", params={"n": n, "seed": "x"}) as response,
        ):
            assert response.status_code == 200
            assert response.headers["content-length"] == str(n)
            async for chunk in response.aiter_raw():
                received.update(chunk)
                count += len(chunk)
    assert count == n
    assert received.hexdigest() == expected.hexdigest()


async def test_upload_reports_size_and_sha256(base_url: str) -> None:
    body = random.Random("upload").randbytes(5_000_000)

    async def body_in_pieces() -> AsyncIterator[bytes]:
        # An async iterator makes httpx send it chunked, like a streaming client.
        for start in range(0, len(body), 64 * 1024):
            yield body[start : start + 64 * 1024]

    with trio.fail_after(REQUEST_DEADLINE_S):
        async with httpx.AsyncClient(base_url=base_url) as client:
            response = await client.post("/upload", content=body_in_pieces())
    assert response.status_code == 200
    assert response.json() == {"bytes": len(body), "sha256": hashlib.sha256(body).hexdigest()}


async def test_events_arrive_while_the_stream_stays_open(base_url: str) -> None:
    with trio.fail_after(REQUEST_DEADLINE_S):
        async with (
            httpx.AsyncClient(base_url=base_url) as client,
            client.stream("GET", "/events", params={"count": 3}) as response,
        ):
            assert response.headers["content-type"] == "text/event-stream"
            assert response.headers["cache-control"] == "no-store"
            events: list[str] = []
            with trio.CancelScope() as reading:
                async for line in response.aiter_lines():
                    if line:
                        events.append(line)
                    if len(events) == 3:
                        # All events are in, so the app streamed them. Now give
                        # the stream a moment to (wrongly) end. This is the one
                        # timed wait here: it checks for an absence, it does
                        # not synchronise. The deadline's cancellation unwinds
                        # httpx's nested async generators, so none is left open.
                        reading.deadline = trio.current_time() + OPEN_STREAM_CHECK_S
    assert events == ["data: event 1", "data: event 2", "data: event 3"]
    # A finished response would have ended the loop before the deadline.
    assert reading.cancelled_caught, "the event stream ended; it should stay open"


async def test_events_close_ends_the_stream(base_url: str) -> None:
    with trio.fail_after(REQUEST_DEADLINE_S):
        async with httpx.AsyncClient(base_url=base_url) as client:
            response = await client.get("/events", params={"count": 2, "close": 1})
    assert response.text == "data: event 1\n\ndata: event 2\n\n"


async def test_paced_events_wait_for_each_next(base_url: str) -> None:
    """``/events?paced=ID``: one event at once, each next one when POST /events/next asks."""
    params: dict[str, str | int] = {"count": 3, "close": 1, "paced": "p1"}
    with trio.fail_after(REQUEST_DEADLINE_S):
        async with (
            httpx.AsyncClient(base_url=base_url) as client,
            httpx.AsyncClient(base_url=base_url) as control,
            client.stream("GET", "/events", params=params) as response,
        ):
            assert response.headers["content-type"] == "text/event-stream"
            # The ID is taken while its stream is open.
            taken = await control.get("/events", params=params)
            assert taken.status_code == 400
            assert "already open" in taken.text
            unknown = await control.post("/events/next", params={"paced": "p2"})
            assert unknown.status_code == 404
            events: list[str] = []
            allowed: list[int] = []
            async for line in response.aiter_lines():
                if not line:
                    continue
                events.append(line)
                if len(events) < 3:  # the app waits for us before the next one
                    step = await control.post("/events/next", params={"paced": "p1"})
                    allowed.append(step.json()["allowed"])
    assert events == ["data: event 1", "data: event 2", "data: event 3"]
    assert allowed == [1, 2]


async def test_websocket_echoes_text_and_large_bytes(base_url: str) -> None:
    message = random.Random("ws").randbytes(1024 * 1024)
    with trio.fail_after(REQUEST_DEADLINE_S):
        # trio-websocket's own limit is 1 MiB; raise it so the echo fits.
        async with open_websocket_url(
            _ws_url(base_url, "/ws"), max_message_size=4 * 1024 * 1024
        ) as ws:
            await ws.send_message("hello")
            assert await ws.get_message() == "hello"
            await ws.send_message(message)
            assert await ws.get_message() == message


@pytest.mark.parametrize(("path", "status"), [("/status/418", 418), ("/status/101", 400)])
async def test_status_endpoint(base_url: str, path: str, status: int) -> None:
    with trio.fail_after(REQUEST_DEADLINE_S):
        async with httpx.AsyncClient(base_url=base_url) as client:
            response = await client.get(path)
    assert response.status_code == status


async def test_unknown_path_is_404(base_url: str) -> None:
    with trio.fail_after(REQUEST_DEADLINE_S):
        async with httpx.AsyncClient(base_url=base_url) as client:
            response = await client.get("/no/such/page")
    assert response.status_code == 404
    assert response.text == "not found\n"
