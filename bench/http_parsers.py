"""What one relayed request costs in HTTP parsing and serialising alone: h11 vs httptools.

    .venv/bin/python bench/http_parsers.py [--requests 20000] [--repeats 5]

One relayed request is four steps: parse the browser's request, serialise it
upstream with one header added, parse the app's 1 KiB response, serialise it
back to the browser. This times those four steps in a loop, in memory (no
sockets, no event loop), with each library driven the way a relay would: h11
through two ``Connection`` objects (one per side, with ``start_next_cycle``),
httptools (llhttp) through one request and one response parser with the heads
joined as bytes. The request is what ``wrk`` sends; the response is nginx's.
It prints the best of ``--repeats`` runs per library, in µs per request.

Why it exists: the router's profile put h11 at about half its CPU per small
request (``bench/OPTIMISATION.md``); this isolates that cost.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import h11
import httptools

REQUEST = (
    b"GET /1k HTTP/1.1\r\nHost: bench.bench.test\r\nConnection: keep-alive\r\n"
    b"User-Agent: wrk\r\nAccept: */*\r\n\r\n"
)
BODY = b"x" * 1024
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Mon, 23 Nov 2026 00:00:00 GMT\r\n"
    b"Content-Type: application/octet-stream\r\nContent-Length: 1024\r\n"
    b"Last-Modified: Mon, 23 Nov 2026 00:00:00 GMT\r\nConnection: keep-alive\r\n"
    b'ETag: "abc-400"\r\nAccept-Ranges: bytes\r\n\r\n' + BODY
)
ADDED = (b"x-forwarded-for", b"127.0.0.1")
X = "\N{MULTIPLICATION SIGN}"


def h11_relay(n: int) -> bytes:
    browser, app = h11.Connection(h11.SERVER), h11.Connection(h11.CLIENT)
    out = b""
    for _ in range(n):
        browser.receive_data(REQUEST)
        request = browser.next_event()
        assert isinstance(request, h11.Request)
        browser.next_event()  # EndOfMessage
        up = app.send(
            h11.Request(
                method=request.method, target=request.target,
                headers=[*request.headers, ADDED], _parsed=True,
            )
        )  # fmt: skip
        up += app.send(h11.EndOfMessage())
        app.receive_data(RESPONSE)
        response, data = app.next_event(), app.next_event()
        app.next_event()  # EndOfMessage
        assert isinstance(response, h11.Response) and isinstance(data, h11.Data)
        out = browser.send(
            h11.Response(
                status_code=response.status_code, reason=response.reason,
                headers=list(response.headers), _parsed=True,
            )
        )  # fmt: skip
        out += browser.send(data) + browser.send(h11.EndOfMessage())
        browser.start_next_cycle()
        app.start_next_cycle()
    return out


class _Message:
    """httptools' callbacks, collected."""

    __slots__ = ("body", "complete", "headers", "url")

    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.url = b""
        self.complete = False

    def on_url(self, url: bytes) -> None:
        self.url = url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.complete = True


def _head(first_line: bytes, headers: list[tuple[bytes, bytes]]) -> bytes:
    return b"".join([first_line, *[b"%s: %s\r\n" % field for field in headers], b"\r\n"])


def httptools_relay(n: int) -> bytes:
    request, response = _Message(), _Message()
    request_parser = httptools.HttpRequestParser(request)
    response_parser = httptools.HttpResponseParser(response)
    out = b""
    for _ in range(n):
        request.__init__()  # type: ignore[misc]
        request_parser.feed_data(REQUEST)
        assert request.complete
        first = b"%s %s HTTP/1.1\r\n" % (request_parser.get_method(), request.url)
        up = _head(first, [*request.headers, ADDED])
        response.__init__()  # type: ignore[misc]
        response_parser.feed_data(RESPONSE)
        assert response.complete
        status = response_parser.get_status_code()
        out = _head(b"HTTP/1.1 %d OK\r\n" % status, response.headers) + b"".join(response.body)
        assert up
    return out


def best_us(relay: Callable[[int], bytes], n: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        relay(n)
        best = min(best, time.perf_counter() - started)
    return best / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    n, repeats = max(1, min(args.requests, 1_000_000)), max(1, min(args.repeats, 20))
    rows = [(name, best_us(fn, n, repeats)) for name, fn in
            (("h11 0.16", h11_relay), ("httptools (llhttp)", httptools_relay))]  # fmt: skip
    print(f"| library | µs per relayed request (parse + serialise, both ways) | {X} h11 |")
    print("|---|---|---|")
    for name, us in rows:
        print(f"| {name} | {us:.1f} | {us / rows[0][1]:.2f}{X} |")


if __name__ == "__main__":
    main()
