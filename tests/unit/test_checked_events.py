"""Events built without h11's second header check serialise exactly as checked ones do."""

from __future__ import annotations

import h11

from router._checked_events import (
    END_OF_MESSAGE,
    request_of_checked_headers,
    response_of_checked_headers,
)

HEADERS = [(b"host", b"myapp.localhost"), (b"x-forwarded-for", b"203.0.113.7")]


def _server_after(request: bytes) -> h11.Connection:
    server = h11.Connection(h11.SERVER)
    server.receive_data(request)
    assert isinstance(server.next_event(), h11.Request)
    assert isinstance(server.next_event(), h11.EndOfMessage)
    return server


def test_request_serialises_as_a_checked_one() -> None:
    fast = request_of_checked_headers(b"GET", b"/a?b=1", list(HEADERS))
    checked = h11.Request(method=b"GET", target=b"/a?b=1", headers=list(HEADERS))
    assert h11.Connection(h11.CLIENT).send(fast) == h11.Connection(h11.CLIENT).send(checked)
    assert h11.Connection(h11.CLIENT).send(fast) == (
        b"GET /a?b=1 HTTP/1.1\r\nhost: myapp.localhost\r\nx-forwarded-for: 203.0.113.7\r\n\r\n"
    )


def test_response_keeps_status_and_reason_of_the_parsed_one() -> None:
    app = h11.Connection(h11.CLIENT)
    app.send(h11.Request(method=b"GET", target=b"/", headers=HEADERS))
    app.receive_data(b"HTTP/1.1 404 Not Here\r\ncontent-length: 0\r\nserver: x\r\n\r\n")
    parsed = app.next_event()
    assert isinstance(parsed, h11.Response)
    fast = response_of_checked_headers(parsed, [(b"content-length", b"0")])
    wire = _server_after(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n").send(fast)
    assert wire == b"HTTP/1.1 404 Not Here\r\ncontent-length: 0\r\n\r\n"


def test_one_end_of_message_serves_every_message() -> None:
    server = _server_after(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
    server.send(h11.Response(status_code=200, headers=[(b"content-length", b"0")]))
    assert server.send(END_OF_MESSAGE) == b""
    server.start_next_cycle()
    server.receive_data(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
    assert isinstance(server.next_event(), h11.Request)
    assert isinstance(server.next_event(), h11.EndOfMessage)
    server.send(h11.Response(status_code=200, headers=[(b"transfer-encoding", b"chunked")]))
    assert server.send(END_OF_MESSAGE) == b"0\r\n\r\n"
