"""The sample app: a plain ASGI 3 application to put behind a hostmux tunnel.

There is no web framework here on purpose. Every endpoint is a few direct
``await send({...})`` calls, so when a tunnel test fails you can read exactly
which ASGI messages the app produced and rule the app out quickly.

Endpoints (each one exercises something a tunnel can get wrong):

=======================  ====================================================
``GET /``                HTML page; its inline JS opens ``/ws`` and shows the
                         echo (WebSocket upgrade through the tunnel).
``GET /headers``         the request headers as received, duplicates kept,
                         plus ``_client`` and ``_server`` (header rewriting,
                         peer address, which app answered).
``GET /bytes?n=&seed=``  exactly *n* deterministic bytes with Content-Length
                         (large downloads, byte-exactness).
``POST /upload``         byte count and sha256 of the body, read as a stream
                         (large and chunked uploads).
``GET /events?count=``   Server-Sent Events that stay open
                         (the path must stream, not buffer).
``&paced=ID``            ... one event at a time: the first at once, each
                         next one when ``POST /events/next?paced=ID`` asks
                         (proves each event got through before the next
                         was even sent).
``GET /status/CODE``     that status code (error-page pass-through).
``GET /slow-headers``    never answers (gateway timeouts).
``WebSocket /ws``        echoes every text or bytes message.
=======================  ====================================================

Anything else is a 404.

The app uses trio for one thing: noticing that a client went away while a
long body is being sent (see ``_stream_body``). Run it under a trio ASGI
server, e.g. ``python -m examples.sample_app`` (hypercorn's trio worker).
"""

from __future__ import annotations

import hashlib
import html
import json
import random
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl

import trio

from examples.sample_app.pacing import PacingRefused, allow_next, paced_stream

__all__ = ["BYTES_CHUNK_SIZE", "MAX_BYTES", "Receive", "Scope", "Send", "app", "expected_bytes"]

# ASGI messages and scopes are dicts whose value types depend on the key, so
# ``Any`` values are the honest type; the names below keep the signatures readable.
Scope = Mapping[str, Any]
Message = Mapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# One MiB per body message: big enough that per-message overhead is small,
# small enough that a chunk is generated in about 3 ms without stalling the loop.
BYTES_CHUNK_SIZE = 1024 * 1024
# Upper bound for /bytes?n=: enough for throughput tests, and refuses typos
# that would keep a tunnel busy for hours.
MAX_BYTES = 1024 * 1024 * 1024
# /bytes answers 1 KiB when no n is given: a quick "does it work" download.
DEFAULT_BYTES = 1024
# /events sends three events by default: enough to see that they arrive one by one.
DEFAULT_EVENT_COUNT = 3
# Cap for /events?count=: a demo never needs more, and it bounds the work per request.
MAX_EVENT_COUNT = 10_000


class _BadRequest(Exception):
    """A query or path parameter is malformed; the message becomes the 400 body."""


def expected_bytes(n: int, seed: str) -> Iterator[bytes]:
    """Yield the body of ``GET /bytes?n=N&seed=S`` chunk by chunk, without a server.

    Chunk ``i`` comes from its own generator seeded with ``"{seed}:{i}"``, so a
    test can hash the expected stream in constant memory, and the server never
    has to keep generator state across more than one chunk.
    """
    if not 0 <= n <= MAX_BYTES:
        raise ValueError(f"n must be in 0..{MAX_BYTES}, got {n}")
    for index, start in enumerate(range(0, n, BYTES_CHUNK_SIZE)):
        size = min(BYTES_CHUNK_SIZE, n - start)
        yield random.Random(f"{seed}:{index}").randbytes(size)


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """The ASGI 3 entry point: dispatch on the scope type."""
    if scope["type"] == "http":
        await _serve_http(scope, receive, send)
    elif scope["type"] == "websocket":
        await _serve_websocket(scope, receive, send)
    elif scope["type"] == "lifespan":
        await _serve_lifespan(receive, send)


# --- lifespan -------------------------------------------------------------------


async def _serve_lifespan(receive: Receive, send: Send) -> None:
    # Nothing to set up, but answering keeps servers from logging a warning
    # that "the app does not support lifespan".
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


# --- HTTP -------------------------------------------------------------------------


async def _serve_http(scope: Scope, receive: Receive, send: Send) -> None:
    method: str = scope["method"]
    path: str = scope["path"]
    try:
        match (method, path):
            case ("GET", "/"):
                await _send_index(scope, send)
            case ("GET", "/headers"):
                await _send_headers(scope, send)
            case ("GET", "/bytes"):
                await _send_bytes(scope, receive, send)
            case ("POST", "/upload"):
                await _receive_upload(receive, send)
            case ("GET", "/events"):
                await _send_events(scope, receive, send)
            case ("POST", "/events/next"):
                await _allow_next_event(scope, send)
            case ("GET", "/slow-headers"):
                # Say nothing at all, so the proxy in front has to time out.
                await _wait_for_disconnect(receive)
            case ("GET", _) if path.startswith("/status/"):
                await _send_status(path.removeprefix("/status/"), send)
            case _:
                await _send_text(send, 404, "not found\n")
    except _BadRequest as error:
        # Raised only while parsing parameters, i.e. before anything was sent.
        await _send_text(send, 400, f"bad request: {error}\n")


async def _send_index(scope: Scope, send: Send) -> None:
    headers = _header_lists(scope)
    host = headers.get("host", ["(none)"])[0]
    query = scope["query_string"].decode("latin-1")
    target = scope["path"] + (f"?{query}" if query else "")
    user = headers.get("x-hostmux-user")
    # Everything that came from the request is escaped: the page must not
    # become an XSS demo when someone sends a creative Host header.
    user_line = f"<p>Signed in as <b>{html.escape(user[0])}</b></p>\n" if user else ""
    page = _INDEX_TEMPLATE.format(
        host=html.escape(host), target=html.escape(target), user_line=user_line
    )
    await _send_response(send, 200, page.encode(), "text/html; charset=utf-8")


_INDEX_TEMPLATE = """<!doctype html>
<html>
<head><meta charset="utf-8"><title>hostmux sample app</title></head>
<body>
<h1>hostmux sample app</h1>
<p>Host: <code>{host}</code></p>
<p>Path: <code>{target}</code></p>
{user_line}<p>WebSocket echo: <span id="echo">(connecting)</span></p>
<script>
  // Same host as the page; wss: when the page came over https (the tunnel's TLS).
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const socket = new WebSocket(scheme + "//" + location.host + "/ws");
  const echo = document.getElementById("echo");
  socket.onopen = () => socket.send("hello");
  socket.onmessage = (event) => {{ echo.textContent = event.data; }};
  socket.onerror = () => {{ echo.textContent = "(websocket error)"; }};
</script>
</body>
</html>
"""


async def _send_headers(scope: Scope, send: Send) -> None:
    report: dict[str, Any] = dict(_header_lists(scope))
    # ASGI gives (host, port) or None (e.g. over a Unix socket).
    client = scope.get("client")
    report["_client"] = list(client) if client is not None else None
    # Which app instance answered: tests with several apps behind one router use it.
    server = scope.get("server")
    report["_server"] = list(server) if server is not None else None
    await _send_json(send, report)


async def _send_bytes(scope: Scope, receive: Receive, send: Send) -> None:
    query = _query(scope)
    n = _int_param(query, "n", DEFAULT_BYTES, 0, MAX_BYTES)
    seed = query.get("seed", "0")
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/octet-stream"),
                # A known length lets the client (and the tunnel) check that
                # nothing was lost or added.
                (b"content-length", str(n).encode()),
            ],
        }
    )
    await _stream_body(receive, send, expected_bytes(n, seed), finish=True)


async def _receive_upload(receive: Receive, send: Send) -> None:
    # Hash each body message as it arrives: memory stays flat for any upload size.
    digest = hashlib.sha256()
    count = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return  # the client gave up; nobody is left to answer
        body: bytes = message.get("body", b"")
        digest.update(body)
        count += len(body)
        if not message.get("more_body", False):
            break
    await _send_json(send, {"bytes": count, "sha256": digest.hexdigest()})


async def _send_events(scope: Scope, receive: Receive, send: Send) -> None:
    query = _query(scope)
    count = _int_param(query, "count", DEFAULT_EVENT_COUNT, 0, MAX_EVENT_COUNT)
    close = query.get("close") == "1"
    paced = query.get("paced")
    if paced is None:
        await _start_events(send)
        # Without close=1 the response never finishes: a client that sees the
        # events has proven that every hop streams instead of buffering.
        await _stream_body(receive, send, _events(count), finish=close)
        return
    try:
        with paced_stream(paced) as pacer:  # refused (in use, too many) before anything is sent
            await _start_events(send)
            await _stream_body(receive, send, _events(count), finish=close, pace=pacer.turn)
    except PacingRefused as refused:
        raise _BadRequest(str(refused)) from None


def _events(count: int) -> Iterator[bytes]:
    return (f"data: event {i}\n\n".encode() for i in range(1, count + 1))


async def _allow_next_event(scope: Scope, send: Send) -> None:
    allowed = allow_next(_query(scope).get("paced", ""))
    if allowed is None:
        await _send_text(send, 404, "no such paced stream open\n")
        return
    await _send_json(send, {"allowed": allowed})


async def _start_events(send: Send) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"text/event-stream"),
                # A cache in the path must neither store nor hold back the stream.
                (b"cache-control", b"no-store"),
            ],
        }
    )


async def _send_status(code_text: str, send: Send) -> None:
    code = _parse_int(code_text)
    if code is None or not 200 <= code <= 599:
        # 1xx are not final responses, so they cannot be sent as one.
        raise _BadRequest("status must be a number in 200..599")
    if code in (204, 304):
        # These must not have a body (RFC 9110), nor a Content-Length for 204.
        await send({"type": "http.response.start", "status": code, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return
    try:
        phrase = HTTPStatus(code).phrase
    except ValueError:
        phrase = "Unassigned"
    await _send_text(send, code, f"{code} {phrase}\n")


async def _stream_body(
    receive: Receive,
    send: Send,
    chunks: Iterable[bytes],
    *,
    finish: bool,
    pace: Callable[[int], Awaitable[None]] | None = None,
) -> None:
    """Send ``chunks`` as body messages, stopping early if the client goes away.

    ``pace(i)``, when given, returns once chunk ``i`` (from 0) may be sent.

    Resource handling: a watcher task reads ``receive`` until ``http.disconnect``,
    then cancels the sending (also while ``pace`` waits). With
    ``finish=True`` the body is ended after the last chunk and the watcher is
    cancelled; with ``finish=False`` the response stays open until the watcher
    sees the client leave.

    Error handling: none needed for a vanished client. Servers may silently
    drop messages sent after a disconnect (hypercorn does), which is why we
    watch for the disconnect instead of waiting for ``send`` to fail.
    """
    async with trio.open_nursery() as nursery:

        async def watch_for_disconnect() -> None:
            await _wait_for_disconnect(receive)
            nursery.cancel_scope.cancel()  # nobody is left to send to

        nursery.start_soon(watch_for_disconnect)
        for index, chunk in enumerate(chunks):
            if pace is not None:
                await pace(index)
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            # A dropped send may not yield to the loop; this checkpoint lets the
            # watcher (and every other connection) run between chunks.
            await trio.lowlevel.checkpoint()
        if finish:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            nursery.cancel_scope.cancel()


async def _wait_for_disconnect(receive: Receive) -> None:
    # Request body messages may come first; only the disconnect matters here.
    while (await receive())["type"] != "http.disconnect":
        pass


# --- WebSocket --------------------------------------------------------------------


async def _serve_websocket(scope: Scope, receive: Receive, send: Send) -> None:
    await receive()  # websocket.connect: the client's handshake has arrived
    if scope["path"] != "/ws":
        await _reject_websocket(scope, send)
        return
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        # Exactly one of "bytes" and "text" is set; echo it in the same kind.
        if message.get("bytes") is not None:
            await send({"type": "websocket.send", "bytes": message["bytes"]})
        else:
            await send({"type": "websocket.send", "text": message["text"]})


async def _reject_websocket(scope: Scope, send: Send) -> None:
    if "websocket.http.response" in scope.get("extensions", {}):
        # The server lets us answer the upgrade with a real 404 ...
        body = b"not found\n"
        await send(
            {
                "type": "websocket.http.response.start",
                "status": 404,
                "headers": _text_headers(body, "text/plain; charset=utf-8"),
            }
        )
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        # ... otherwise closing before accepting makes the server send a 403.
        await send({"type": "websocket.close"})


# --- small helpers for the handlers above -----------------------------------------


def _header_lists(scope: Scope) -> dict[str, list[str]]:
    """Request headers as lower-case name -> values, in arrival order."""
    headers: dict[str, list[str]] = {}
    for raw_name, raw_value in scope["headers"]:
        # HTTP header bytes are latin-1 by definition; this never fails.
        name = raw_name.decode("latin-1").lower()
        headers.setdefault(name, []).append(raw_value.decode("latin-1"))
    return headers


def _query(scope: Scope) -> dict[str, str]:
    # The last value wins for repeated parameters: simple and predictable.
    return dict(parse_qsl(scope["query_string"].decode("latin-1")))


def _int_param(query: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    text = query.get(name)
    if text is None:
        return default
    value = _parse_int(text)
    if value is None or not low <= value <= high:
        raise _BadRequest(f"{name} must be an integer in {low}..{high}")
    return value


def _parse_int(text: str) -> int | None:
    # ASCII digits only: int() would also take "+1", " 1" and non-ASCII digits.
    return int(text) if text.isascii() and text.isdigit() else None


def _text_headers(body: bytes, content_type: str) -> list[tuple[bytes, bytes]]:
    return [
        (b"content-type", content_type.encode()),
        (b"content-length", str(len(body)).encode()),
    ]


async def _send_response(send: Send, status: int, body: bytes, content_type: str) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": _text_headers(body, content_type),
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _send_text(send: Send, status: int, text: str) -> None:
    await _send_response(send, status, text.encode(), "text/plain; charset=utf-8")


async def _send_json(send: Send, value: object) -> None:
    body = json.dumps(value, indent=2).encode() + b"\n"
    await _send_response(send, 200, body, "application/json")
