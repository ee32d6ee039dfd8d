"""The relay's own CPU per request, in memory: no sockets, no SSH, no other process.

    .venv/bin/python bench/relay_cpu.py [--requests 20000] [--repeats 5] [--src DIR]
                                        [--request wrk|browser] [--path task|express]

One ``HttpRelay`` serves one keep-alive browser connection over an
in-memory pipe; its gateway routes every request to an in-memory app that
answers each with nginx's 1 KiB response. The browser sends what ``wrk``
sends (or, ``--request browser``, Chromium's 15 headers), one request at a
time, and reads each response whole. It prints the best of ``--repeats``
runs in µs of process CPU per request: the HTTP core and the relay (parse,
check, route, rewrite, serialise both ways) plus the event loop's share,
without the noise of the machine's other processes that the full row
(``run.py``) carries. ``--src`` puts another checkout's ``hostmux`` first on
the path (e.g. ``git archive layout | tar -x -C DIR``), for an A/B in one run;
a checkout's sources alone run as pure Python, and the line says which
``core`` ran (``compiled`` by mypyc, setup.py, or ``python``).

``--path express`` measures the router's express path instead (a kept-alive
connection's small requests relayed from callbacks: ``hostmux/relay/express.py``):
the browser is a ``TransportStream`` on an in-memory transport, the app an
upstream whose ``sink`` is handed the answer as the SSH channel would hand it;
no task runs per request.

Bounded: ``--requests`` per run, ``--repeats`` runs, each under a 120 s deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

# What wrk sends (``--request wrk``), and what Chromium sends for a page (``browser``).
REQUESTS = {
    "wrk": b"GET /1k HTTP/1.1\r\nHost: bench.bench.test\r\nConnection: keep-alive\r\n"
    b"User-Agent: wrk\r\nAccept: */*\r\n\r\n",
    "browser": b"GET /1k HTTP/1.1\r\nHost: bench.bench.test\r\nConnection: keep-alive\r\n"
    b'sec-ch-ua: "Chromium";v="131", "Not_A Brand";v="24"\r\nsec-ch-ua-mobile: ?0\r\n'
    b'sec-ch-ua-platform: "Linux"\r\nUpgrade-Insecure-Requests: 1\r\n'
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko)"
    b" Chrome/131.0.0.0 Safari/537.36\r\n"
    b"Accept: text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,"
    b"*/*;q=0.8\r\nSec-Fetch-Site: none\r\nSec-Fetch-Mode: navigate\r\nSec-Fetch-User: ?1\r\n"
    b"Sec-Fetch-Dest: document\r\nAccept-Encoding: gzip, deflate, br, zstd\r\n"
    b"Accept-Language: en-GB,en;q=0.9\r\nCookie: session=abcdefghijklmnopqrstuvwxyz0123456789\r\n"
    b"\r\n",
}
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Mon, 23 Nov 2026 00:00:00 GMT\r\n"
    b"Content-Type: application/octet-stream\r\nContent-Length: 1024\r\n"
    b"Last-Modified: Mon, 23 Nov 2026 00:00:00 GMT\r\nConnection: keep-alive\r\n"
    b'ETag: "1-400"\r\nAccept-Ranges: bytes\r\n\r\n' + b"x" * 1024
)
DEADLINE_S = 120.0  # a run that takes longer is stuck, not slow


class Pipe:
    """One end of an in-memory duplex pipe (the relay's ``ByteStream``)."""

    def __init__(self) -> None:
        self.inbox: asyncio.Queue[bytes] = asyncio.Queue()
        self.peer: Pipe = self
        self.closed = False

    async def receive(self) -> bytes:
        return b"" if self.closed else await self.inbox.get()

    async def send_all(self, data: bytes) -> None:
        self.write(data)

    def write(self, data: bytes) -> None:
        if data and not self.peer.closed:
            self.peer.inbox.put_nowait(bytes(data))

    def must_drain(self) -> bool:
        return False

    async def drain(self) -> None:
        return None

    async def send_eof(self) -> None:
        self.peer.inbox.put_nowait(b"")

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.peer.inbox.put_nowait(b"")
            self.inbox.put_nowait(b"")

    def abort(self) -> None:
        self.close()


def pipe() -> tuple[Pipe, Pipe]:
    a, b = Pipe(), Pipe()
    a.peer, b.peer = b, a
    return a, b


async def app(stream: Pipe) -> None:
    """Answers each request head with RESPONSE (the requests have no body)."""
    buffer = b""
    while data := await stream.receive():
        buffer += data
        while (end := buffer.find(b"\r\n\r\n")) >= 0:
            buffer = buffer[end + 4 :]
            stream.write(RESPONSE)


async def one_run(requests: int, request: bytes) -> float:
    from hostmux.http1.headers import ClientInfo
    from hostmux.relay.gateway import Destination
    from hostmux.relay.relay import HttpRelay, RelayLimits

    apps: list[asyncio.Task[None]] = []

    async def open_app() -> Any:
        ours, theirs = pipe()
        apps.append(asyncio.create_task(app(theirs)))
        return ours

    destination = Destination(key="bench", label="bench", open=open_app)

    class Gateway:
        def route(self, host: str, request: Any, request_id: str, client: Any) -> Any:
            return destination

    browser, relay_side = pipe()
    limits = RelayLimits(max_requests_per_connection=requests + 1)
    relay = HttpRelay(
        relay_side, ClientInfo("127.0.0.1", 5000, "http"), Gateway(), limits, lambda r: None
    )
    task = asyncio.create_task(relay.run())
    wanted = len(RESPONSE) - len(b"Connection: keep-alive\r\n")  # the relay drops it
    started = time.process_time()
    async with asyncio.timeout(DEADLINE_S):
        for _ in range(requests):
            browser.write(request)
            got = 0
            while got < wanted:
                got += len(await browser.receive())
        spent = time.process_time() - started
        browser.close()
        await task
        for running in apps:
            running.cancel()
    return spent / requests * 1e6


class _Transport:
    """What ``TransportStream`` needs of a transport, in memory: writes are kept."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default

    def close(self) -> None:
        self.closing = True

    abort = close

    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...


class _SinkApp(Pipe):
    """The app behind a channel: what it answers goes to ``sink`` (the express path's)."""

    quiet = True

    def __init__(self) -> None:
        super().__init__()
        self.sink: Any = None


async def express_run(requests: int, request: bytes) -> float:
    from hostmux.http1.cookies import host_only_cookies
    from hostmux.http1.headers import ClientInfo
    from hostmux.relay.gateway import Destination
    from hostmux.relay.relay import HttpRelay, RelayLimits
    from hostmux.relay.transport_stream import TransportStream

    app_side = _SinkApp()

    async def open_app() -> Any:
        return app_side

    # As the router's: its cookie filter, whose output needs no second check.
    destination = Destination(
        key="bench", label="bench", open=open_app, response_headers=host_only_cookies,
        response_headers_checked=True,
    )  # fmt: skip

    class Gateway:
        def route(self, host: str, request: Any, request_id: str, client: Any) -> Any:
            return destination

    stream = TransportStream("bench", on_made=lambda _: None)
    transport = _Transport()
    stream.connection_made(transport)  # type: ignore[arg-type]
    limits = RelayLimits(max_requests_per_connection=requests + 10)
    relay = HttpRelay(
        stream, ClientInfo("127.0.0.1", 5000, "http"), Gateway(), limits, lambda r: None
    )
    task = asyncio.create_task(relay.run())
    async with asyncio.timeout(DEADLINE_S):
        # The first request opens the upstream (the task's path): answered through receive().
        await asyncio.sleep(0)
        stream.data_received(request)
        app_side.inbox.put_nowait(RESPONSE)
        # (the relay's task runs a few loop turns; it has no event to wait on)
        while not transport.written or relay._express is None or not relay._express.armed:  # noqa: ASYNC110
            await asyncio.sleep(0)
        transport.written.clear()
        started = time.process_time()
        for _ in range(requests):
            stream.data_received(request)  # parsed, checked, routed, sent up...
            app_side.sink(RESPONSE)  # ...and answered, all from callbacks
        spent = time.process_time() - started
        if len(transport.written) != requests:
            raise RuntimeError(f"{len(transport.written)} answers to {requests} requests")
        task.cancel()
    return spent / requests * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--src", help="a checkout whose hostmux to measure")
    parser.add_argument("--request", choices=sorted(REQUESTS), default="wrk")
    parser.add_argument("--path", choices=("task", "express"), default="task")
    args = parser.parse_args()
    if args.src:
        sys.path.insert(0, args.src)
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:
        runner = asyncio.run
    run = express_run if args.path == "express" else one_run
    runs = [runner(run(args.requests, REQUESTS[args.request])) for _ in range(args.repeats)]
    from hostmux.compiled import core_build

    print(
        f"relay CPU µs/req: best {min(runs):.1f}, runs " + ", ".join(f"{r:.1f}" for r in runs)
        + f" (core: {core_build()})"
    )  # fmt: skip


if __name__ == "__main__":
    main()
