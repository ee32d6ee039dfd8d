"""Structured log lines: logfmt quoting, and one write per event-loop turn.

The handler is driven with a recording stream. "The end of the loop turn" is
reached by awaiting a future resolved by a ``call_soon`` queued after the
lines were logged: asyncio runs ``call_soon`` callbacks in order, so the
handler's flush has run by then — an ordering, not a wait.
"""

from __future__ import annotations

import asyncio
import io
import logging
import re
from collections.abc import Iterator
from select import PIPE_BUF

import pytest

from hostmux.log import _LogfmtFormatter, _TurnBufferedHandler, describe, fields, set_log_context

from .asyncio_bounded import run

LINE = re.compile(
    r"ts=\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z level=info event=request rid=r1 status=200"
)


class RecordingStream(io.StringIO):
    """A text stream that remembers each ``write`` call."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)


@pytest.fixture
def logger() -> Iterator[tuple[logging.Logger, RecordingStream]]:
    stream = RecordingStream()
    handler = _TurnBufferedHandler(stream)
    handler.setFormatter(_LogfmtFormatter())
    log = logging.getLogger("hostmux.test-log")
    log.setLevel(logging.INFO)
    log.propagate = False
    log.addHandler(handler)
    try:
        yield log, stream
    finally:
        log.removeHandler(handler)
        log.propagate = True


def test_values_are_quoted_only_when_they_need_it() -> None:
    line = fields(
        "request", rid="r1", status=200, peer="[::1]:5000", target="/a b", note='say "hi"\n',
        name=None, ok=True,
    )  # fmt: skip
    assert line == (
        'event=request rid=r1 status=200 peer=[::1]:5000 target="/a b" '
        'note="say \\"hi\\"\\n" ok=True'
    )
    assert fields("x", empty="", accent="é") == 'event=x empty="" accent="é"'


def test_lines_of_one_loop_turn_are_written_together_at_its_end(
    logger: tuple[logging.Logger, RecordingStream],
) -> None:
    log, stream = logger

    async def scenario() -> list[str]:
        log.info(fields("request", rid="r1", status=200))
        log.info(fields("request", rid="r1", status=200))
        assert stream.writes == []  # nothing before the turn ends
        loop = asyncio.get_running_loop()
        turn_over = loop.create_future()
        loop.call_soon(turn_over.set_result, None)
        await turn_over
        return stream.writes

    writes = run(scenario())
    assert len(writes) == 1
    lines = writes[0].splitlines()
    assert len(lines) == 2
    assert all(LINE.fullmatch(line) for line in lines), lines


def test_lines_logged_with_no_loop_running_are_written_at_once(
    logger: tuple[logging.Logger, RecordingStream],
) -> None:
    log, stream = logger
    log.info(fields("request", rid="r1", status=200))
    assert len(stream.writes) == 1
    assert LINE.fullmatch(stream.writes[0].rstrip("\n"))


def test_describe_says_an_exception_in_one_line() -> None:
    assert describe(OSError("connect failed\nsecond line")) == "connect failed"
    assert describe(TimeoutError()) == "TimeoutError"  # no message: its type
    assert describe(ValueError("\nonly later lines")) == "ValueError"
    # uvloop + anyio's AttributeError on a reset connection (hostmux.http_client)
    assert describe(AttributeError("'NoneType' object has no attribute 'getpeername'")) == (
        "connection reset by the peer"
    )


@pytest.fixture
def worker_context() -> Iterator[None]:
    set_log_context(shared_stream=True, worker=2)
    try:
        yield
    finally:
        set_log_context()


@pytest.mark.usefixtures("worker_context")
def test_a_log_context_ends_every_line_and_shared_writes_stay_whole_lines(
    logger: tuple[logging.Logger, RecordingStream],
) -> None:
    """Workers share one stderr: each write is whole lines of at most PIPE_BUF bytes
    (a pipe writes those without splicing in another process's), a longer line alone."""
    log, stream = logger
    long_text = "x" * (PIPE_BUF + 100)

    async def scenario() -> list[str]:
        for _ in range(100):  # ~7 KB of lines in one turn
            log.info(fields("request", rid="r1", status=200))
        log.info(fields("long", text=long_text))
        log.info(fields("request", rid="r1", status=200))
        loop = asyncio.get_running_loop()
        turn_over = loop.create_future()
        loop.call_soon(turn_over.set_result, None)
        await turn_over
        return stream.writes

    writes = run(scenario())
    assert len(writes) == 4  # two of short lines, the long one alone, the last one
    assert all(text.endswith("\n") for text in writes)
    assert [len(t.encode()) <= PIPE_BUF for t in writes] == [True, True, False, True]
    assert writes[2].startswith("ts=") and writes[2].count("\n") == 1
    lines = "".join(writes).splitlines()
    assert len(lines) == 102
    assert all(line.endswith(" worker=2") for line in lines), lines[0]
    assert LINE.fullmatch(lines[0].removesuffix(" worker=2"))
