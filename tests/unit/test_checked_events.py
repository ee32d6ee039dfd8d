"""Events built from checked headers serialise exactly as ones whose headers are checked."""

from __future__ import annotations

import pytest

from hostmux.http1 import (
    END_OF_MESSAGE,
    Http1Connection,
    LocalProtocolError,
    Request,
    Response,
    Role,
    request_checking_headers,
    request_of_checked_headers,
    response_checking_headers,
    response_of_checked_headers,
)

HEADERS = [(b"host", b"myapp.localhost"), (b"x-forwarded-for", b"203.0.113.7")]


def _server_after(request: bytes) -> Http1Connection:
    server = Http1Connection(Role.SERVER)
    server.receive_data(request)
    assert isinstance(server.next_event(), Request)
    server.next_event()
    return server


def test_request_serialises_as_a_checked_one() -> None:
    fast = request_of_checked_headers(b"GET", b"/a?b=1", list(HEADERS))
    checked = request_checking_headers(b"GET", b"/a?b=1", HEADERS)
    assert Http1Connection(Role.CLIENT).send(fast) == Http1Connection(Role.CLIENT).send(checked)
    assert Http1Connection(Role.CLIENT).send(fast) == (
        b"GET /a?b=1 HTTP/1.1\r\nhost: myapp.localhost\r\nx-forwarded-for: 203.0.113.7\r\n\r\n"
    )


def test_response_keeps_status_and_reason_of_the_parsed_one() -> None:
    app = Http1Connection(Role.CLIENT)
    app.send(request_of_checked_headers(b"GET", b"/", HEADERS))
    app.receive_data(b"HTTP/1.1 404 Not Here\r\ncontent-length: 0\r\nserver: x\r\n\r\n")
    parsed = app.next_event()
    assert isinstance(parsed, Response)
    fast = response_of_checked_headers(parsed, [(b"content-length", b"0")])
    wire = _server_after(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n").send(fast)
    assert wire == b"HTTP/1.1 404 Not Here\r\ncontent-length: 0\r\n\r\n"


@pytest.mark.parametrize(
    "headers",
    [
        [(b"x-a", b"a\r\nx-injected: 1")],
        [(b"x-a", b"nul\x00")],
        [(b"x-a", b" padded")],
        [(b"x a", b"1")],
        [(b"", b"1")],
        [(b"x-a\r\n", b"1")],
    ],
)
def test_headers_from_elsewhere_are_checked(headers: list[tuple[bytes, bytes]]) -> None:
    with pytest.raises(LocalProtocolError):
        response_checking_headers(200, b"OK", headers)
    with pytest.raises(LocalProtocolError):
        request_checking_headers(b"GET", b"/", headers)


def test_checked_names_are_lower_case_and_values_kept() -> None:
    response = response_checking_headers(200, b"OK", [(b"X-Hostmux-User", b"ann \t b\xff")])
    assert response.headers == [(b"x-hostmux-user", b"ann \t b\xff")]


def test_one_end_of_message_serves_every_message() -> None:
    server = _server_after(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
    server.send(Response(200, [(b"content-length", b"0")]))
    assert server.send(END_OF_MESSAGE) == b""
    server.start_next_cycle()
    server.receive_data(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
    assert isinstance(server.next_event(), Request)
    server.next_event()
    server.send(Response(200, [(b"transfer-encoding", b"chunked")]))
    assert server.send(END_OF_MESSAGE) == b"0\r\n\r\n"
