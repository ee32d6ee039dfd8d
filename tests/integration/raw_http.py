"""Raw bytes at a front door, and a stand-in app that records every byte reaching it.

The hostile-input tests (``test_hostile_*.py``) must not go through an HTTP
client library: a library would refuse, or repair, exactly the malformed
requests they send. So requests are bytes on a real socket, and responses are
split by the small strict parser below, which fails on anything it does not
understand instead of guessing.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import trio

from .conftest import LoggedProcess, Router

# Each exchange is a few milliseconds; 30 s only trips on a hang, on a loaded machine.
EXCHANGE_DEADLINE_S = 30.0


@dataclass
class RawResponse:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        return next((v for n, v in self.headers if n == name), None)


def parse_responses(data: bytes) -> list[RawResponse]:
    """Every complete response in ``data``; anything left over fails the test."""
    responses: list[RawResponse] = []
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        assert sep, f"incomplete response head: {data[:200]!r}"
        status_line, *lines = head.split(b"\r\n")
        match = re.fullmatch(rb"HTTP/1\.1 (\d{3}) [^\r\n]*", status_line)
        assert match, f"bad status line {status_line!r}"
        headers = []
        for line in lines:
            name, colon, value = line.partition(b":")
            assert colon and name == name.strip(), f"bad header line {line!r}"
            headers.append((name.lower(), value.strip()))
        status = int(match[1])
        length = next((int(v) for n, v in headers if n == b"content-length"), None)
        if (b"transfer-encoding", b"chunked") in headers:
            body, rest = _dechunk(rest)
        elif status in (101, 204, 304) or 100 <= status < 200:
            body = b""
        else:
            assert length is not None, f"response without framing: {head!r}"
            assert len(rest) >= length, f"short body: {rest!r}"
            body, rest = rest[:length], rest[length:]
        responses.append(RawResponse(status, headers, body))
        data = rest
    return responses


def _dechunk(data: bytes) -> tuple[bytes, bytes]:
    body = b""
    while True:
        size_line, sep, data = data.partition(b"\r\n")
        assert sep, f"incomplete chunk: {data[:100]!r}"
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            trailer_end = data.index(b"\r\n")  # no trailers from our apps
            return body, data[trailer_end + 2 :]
        body, data = body + data[:size], data[size + 2 :]


async def open_front_door(router: Router | int, *, tls: bool = False) -> trio.abc.Stream:
    """A connection to the router's plain or TLS front door, or to a loopback port."""
    if isinstance(router, int):
        assert not tls
        return await trio.open_tcp_stream("127.0.0.1", router)
    if tls:
        return await router.open_tls("x")
    return await trio.open_tcp_stream("127.0.0.1", router.http_port)


async def read_to_eof(
    stream: trio.abc.ReceiveStream, deadline_s: float = EXCHANGE_DEADLINE_S
) -> bytes:
    """Everything until the peer closes (a reset counts); fails if not within the deadline."""
    data = b""
    with trio.fail_after(deadline_s):
        try:
            while chunk := await stream.receive_some(65536):
                data += chunk
        except trio.BrokenResourceError:
            pass  # a reset after the answer: the router closed with input unread
    return data


async def exchange(
    router: Router | int, data: bytes, *, tls: bool = False, eof: bool = False
) -> bytes:
    """Send ``data`` on a new connection; what comes back before the router closes.

    ``eof``: shut down our sending side after ``data`` (plain TCP only), for a
    request the router may accept and then keep the connection open for more.
    """
    stream = await open_front_door(router, tls=tls)
    async with stream:
        with trio.fail_after(EXCHANGE_DEADLINE_S):
            await stream.send_all(data)
            if eof:
                assert isinstance(stream, trio.SocketStream)
                await stream.send_eof()
        return await read_to_eof(stream)


async def read_response(stream: trio.abc.ReceiveStream) -> tuple[RawResponse, bytes]:
    """One complete response (with Content-Length), and any bytes after it."""
    data = b""
    with trio.fail_after(EXCHANGE_DEADLINE_S):
        while True:
            head_end = data.find(b"\r\n\r\n")
            if head_end >= 0:
                head = data[:head_end].lower()
                match = re.search(rb"\r\ncontent-length: *(\d+)", head)
                length = int(match[1]) if match else 0
                if len(data) >= head_end + 4 + length:
                    end = head_end + 4 + length
                    return parse_responses(data[:end])[0], data[end:]
            chunk = await stream.receive_some(65536)
            assert chunk, f"closed before a whole response: {data!r}"
            data += chunk


@dataclass
class RecordingApp:
    """A stand-in app on loopback: keeps every connection's bytes, answers each head ``ok``.

    It is where a tunnel delivers: if a hostile request reached the app in any
    form, its bytes are here.
    """

    port: int = 0
    answer: bool = True  # False: only record (an app still waiting for the body)
    response: bytes = b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n"
    connections: list[bytearray] = field(default_factory=list)
    closed: int = 0  # connections that ended
    _changed: trio.Event = field(default_factory=trio.Event)

    async def wait_until(self, condition: Callable[[], bool]) -> None:
        with trio.fail_after(EXCHANGE_DEADLINE_S):
            while not condition():
                await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def serve(self, stream: trio.SocketStream) -> None:
        received = bytearray()
        self.connections.append(received)
        answered = 0
        try:
            while chunk := await stream.receive_some(65536):
                received += chunk
                self._notify()
                while self.answer and received.count(b"\r\n\r\n") > answered:
                    answered += 1
                    await stream.send_all(self.response)
        except trio.BrokenResourceError:
            pass
        finally:
            self.closed += 1
            self._notify()

    async def start(self, nursery: trio.Nursery) -> RecordingApp:
        listeners = await nursery.start(partial(trio.serve_tcp, self.serve, 0, host="127.0.0.1"))
        self.port = listeners[0].socket.getsockname()[1]
        return self


def assert_no_traceback(*processes: LoggedProcess) -> None:
    for proc in processes:
        assert not any("Traceback" in line for line in proc.lines), proc.name


def rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB$", status, re.MULTILINE)
    assert match, status
    return int(match[1])


def open_fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))
