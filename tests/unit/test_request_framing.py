"""The upstream request's framing taken from the parsed request equals what its headers say.

The relay hands ``Http1Connection`` the framing it knows from the browser's
parsed request (``Request.framing``) instead of having ``send`` look each
header up again; for every request here both ways give the same bytes,
framing, length and keep-alive.
"""

from __future__ import annotations

import pytest

from hostmux.http1.checked_events import request_of_checked_headers
from hostmux.http1.connection import Http1Connection
from hostmux.http1.events import Request, Role
from hostmux.http1.framing import request_framing, request_head
from hostmux.http1.headers import ClientInfo, request_headers_for_app

CLIENT = ClientInfo("127.0.0.1", 5000, "https")

HEADS = [
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    b"POST /u HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /u HTTP/1.1\r\nHost: a\r\nContent-Length: 007\r\n\r\nhello!!",
    b"POST /u HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"PUT /u HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, x-a\r\nX-A: 1\r\n"
    b"Content-Length: 0\r\n\r\n",
    b"GET / HTTP/1.0\r\nHost: a\r\n\r\n",
]


def _parsed(raw: bytes) -> Request:
    conn = Http1Connection(Role.SERVER)
    conn.receive_data(raw)
    event = conn.next_event()
    assert isinstance(event, Request), event
    return event


@pytest.mark.parametrize("raw", HEADS)
def test_known_framing_equals_the_headers(raw: bytes) -> None:
    request = _parsed(raw)
    assert request.facts is not None
    headers = request_headers_for_app(
        request.headers, host=b"a", client=CLIENT, request_id="r1", websocket=False,
        facts=request.facts,
    )  # fmt: skip
    framing = request_framing(request.facts.content_length, request.facts.transfer_encoding)
    assert framing is not None
    known = request_of_checked_headers(request.method, request.target, headers, framing)
    looked_up = request_of_checked_headers(request.method, request.target, headers)
    data, how, length, keep_alive = request_head(looked_up)
    assert (how, length, keep_alive) == (*framing, True)
    sent_known, sent_looked_up = Http1Connection(Role.CLIENT), Http1Connection(Role.CLIENT)
    assert sent_known.send(known) == sent_looked_up.send(looked_up) == data
    assert sent_known._out_framing == sent_looked_up._out_framing
    assert sent_known._out_left == sent_looked_up._out_left
    assert sent_known._keep_alive == sent_looked_up._keep_alive


def test_an_odd_length_is_left_to_the_headers() -> None:
    assert request_framing(b"1x", False) is None
