"""The WebSocket splice's shutdown goodbye and the frame-edge follower behind it.

Frames are built by the ``websockets`` library and cut into arbitrary chunks
(hypothesis); the splice runs on the memory pipes of ``test_relay``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools

from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.frames import Close, CloseCode, Frame, Opcode

from hostmux.http1 import FrameEdges, close_frame
from hostmux.relay import HttpRelay, splice

from .asyncio_bounded import run
from .test_relay import (
    CLIENT,
    LIMITS,
    AppConnection,
    FakeGateway,
    MemoryStream,
    hello_app,
    memory_pipe,
    read_until,
    read_until_eof,
)


class Counter:
    bytes_in = 0
    bytes_out = 0


def frame(payload: bytes, *, masked: bool = False, opcode: Opcode = Opcode.BINARY) -> bytes:
    return Frame(opcode, payload).serialize(mask=masked)


def parse_frames(data: bytes, *, masked: bool) -> list[Frame]:
    """Frames in ``data``, parsed by websockets' own parser (it checks masking)."""
    frames, buffer = [], bytearray(data)

    def read_exact(n: int):  # type: ignore[no-untyped-def]
        # websockets' parser is a generator of "read n bytes" requests.
        if len(buffer) < n:
            raise AssertionError(f"truncated frame: wanted {n}, have {len(buffer)}")
        chunk = bytes(buffer[:n])
        del buffer[:n]
        return chunk
        yield  # pragma: no cover - makes this a generator

    while buffer:
        parser = Frame.parse(read_exact, mask=masked)
        try:
            while True:
                next(parser)
        except StopIteration as done:
            frames.append(done.value)
    return frames


SIZES = [0, 1, 125, 126, 127, 65535, 65536, 70000]


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.sampled_from(SIZES), min_size=1, max_size=5),
    masked=st.booleans(),
    cuts=st.lists(st.integers(min_value=1, max_value=70_000), max_size=30),
)
def test_edges_are_found_at_every_frame_end_however_the_bytes_are_cut(
    sizes: list[int], masked: bool, cuts: list[int]
) -> None:
    frames = [frame(bytes(size), masked=masked) for size in sizes]
    stream = b"".join(frames)
    ends = set(itertools.accumulate(len(f) for f in frames))
    edges, pos = FrameEdges(), 0
    chunks = itertools.cycle(cuts or [len(stream)])
    seen = set()
    while pos < len(stream):
        chunk = stream[pos : pos + next(chunks)]
        taken = edges.feed(chunk, stop_at_edge=True)
        assert taken >= 1
        pos += taken
        assert edges.at_edge == (pos in ends), (pos, edges)
        if edges.at_edge:
            seen.add(pos)
    assert seen == ends
    assert not edges.saw_close


def test_feeding_without_stopping_takes_everything_and_notices_a_close() -> None:
    edges = FrameEdges()
    data = frame(b"hello") + close_frame(masked=False) + frame(b"x")[:1]
    assert edges.feed(data) == len(data)
    assert edges.saw_close
    assert not edges.at_edge  # one header byte of the next frame is pending


def test_close_frames_say_1001_masked_only_towards_the_app() -> None:
    (to_browser,) = parse_frames(close_frame(masked=False), masked=False)
    (to_app,) = parse_frames(close_frame(masked=True), masked=True)
    for sent in (to_browser, to_app):
        assert sent.opcode is Opcode.CLOSE
        assert Close.parse(sent.data).code == CloseCode.GOING_AWAY


@dataclasses.dataclass
class Spliced:
    """A running splice: the browser's and the app's far ends, and its shutdown signal."""

    browser: MemoryStream
    app: MemoryStream
    going_away: asyncio.Event
    task: asyncio.Task[None]


def start_splice() -> Spliced:
    browser, relay_client = memory_pipe("browser", "relay-client")
    relay_app, app = memory_pipe("relay-app", "app")
    going_away = asyncio.Event()
    task = asyncio.create_task(
        splice(relay_client, relay_app, idle_timeout_s=60, counter=Counter(),
               going_away=going_away)
    )  # fmt: skip
    return Spliced(browser, app, going_away, task)


async def _goodbye_scenario(half: bytes, rest: bytes) -> tuple[bytes, bytes, bytes]:
    """Splice with a frame half-sent each way; shut down; finish the frames."""
    spliced = start_splice()
    browser, app, going_away = spliced.browser, spliced.app, spliced.going_away
    await app.send_all(half)
    first = await browser.receive()  # the half frame went through before shutdown
    going_away.set()
    # Sent without yielding: the goodbye task, woken first (asyncio runs
    # callbacks in order), stops the copies before they see these bytes.
    await app.send_all(rest + frame(b"after the edge"))
    await browser.send_all(frame(b"from browser", masked=True))
    to_browser = first + await read_until_eof(browser)
    to_app = await read_until_eof(app)
    await spliced.task
    return first, to_browser, to_app


def test_shutdown_finishes_the_frame_in_flight_then_says_going_away_both_ways() -> None:
    whole = frame(b"x" * 300)
    first, to_browser, to_app = run(_goodbye_scenario(whole[:100], whole[100:]))
    assert first == whole[:100]
    frames = parse_frames(to_browser, masked=False)
    assert [f.opcode for f in frames] == [Opcode.BINARY, Opcode.CLOSE]
    assert frames[0].data == b"x" * 300  # finished, and nothing after the edge
    assert Close.parse(frames[1].data).code == CloseCode.GOING_AWAY
    (frame_to_app,) = parse_frames(to_app, masked=True)  # it was between frames: at once
    assert frame_to_app.opcode is Opcode.CLOSE
    assert Close.parse(frame_to_app.data).code == CloseCode.GOING_AWAY


def test_a_splice_that_ends_by_itself_needs_no_goodbye() -> None:
    async def scenario() -> bytes:
        spliced = start_splice()
        await spliced.app.send_all(frame(b"bye"))
        await spliced.app.send_eof()
        await spliced.browser.send_eof()
        received = await read_until_eof(spliced.browser)
        await spliced.task  # ends although going_away is never set
        return received

    assert run(scenario()) == frame(b"bye")


# --- a whole connection on shutdown -----------------------------------------------------------

GET = b"GET / HTTP/1.1\r\nHost: myapp.localhost\r\n\r\n"


def test_go_away_closes_an_idle_keepalive_connection_at_once() -> None:
    async def scenario() -> bytes:
        browser, relay_end = memory_pipe("browser", "relay")
        relay = HttpRelay(relay_end, CLIENT, FakeGateway(hello_app), LIMITS, lambda _: None)
        running = asyncio.create_task(relay.run())
        await browser.send_all(GET)
        answered = await read_until(browser, b"", b"hello world")
        relay.go_away()  # idle now: waiting for a second request
        rest = await read_until_eof(browser)
        await running
        return answered + rest

    received = run(scenario())
    assert received.endswith(b"hello world")
    assert b"connection: close" not in received.lower()  # it was not in flight


def test_go_away_lets_the_request_in_flight_finish_with_connection_close() -> None:
    asked = asyncio.Event()
    answer = asyncio.Event()

    async def slow_app(app: AppConnection) -> None:
        await app.read_request()
        await app.read_body()
        asked.set()
        await answer.wait()
        await app.respond(200, b"finished")
        await app.wait_closed()

    async def scenario() -> bytes:
        browser, relay_end = memory_pipe("browser", "relay")
        gateway = FakeGateway(slow_app)
        relay = HttpRelay(relay_end, CLIENT, gateway, LIMITS, lambda _: None)
        running = asyncio.create_task(relay.run())
        await browser.send_all(GET + GET)  # a second request is pipelined behind it
        await asyncio.wait_for(asked.wait(), 5)
        relay.go_away()
        answer.set()
        received = await read_until_eof(browser)
        await running
        await gateway.apps_finished()
        return received

    received = run(scenario())
    assert received.count(b"HTTP/1.1 200") == 1  # the pipelined one is not served
    assert b"\r\nconnection: close\r\n" in received.lower()
    assert received.endswith(b"finished")
