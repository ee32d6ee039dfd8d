"""The parser's note of a response's hop-by-hop headers gives what the whole filter gives.

``Response.hop_by_hop`` lets the relay skip ``_drop`` for the answers most apps
send (nothing hop-by-hop, or only ``Connection: keep-alive``): for every head
here the shortcut and the whole filter must agree exactly.
"""

from __future__ import annotations

import pytest

from hostmux.http1.checked_events import END_OF_MESSAGE
from hostmux.http1.connection import Http1Connection
from hostmux.http1.events import Request, Response, Role
from hostmux.http1.header_facts import HOP_ANY, HOP_CONNECTION, HOP_NONE
from hostmux.http1.headers import response_headers_for_client

HEADS = [
    (b"Content-Length: 0\r\n", HOP_NONE),
    (b"Server: nginx\r\nConnection: keep-alive\r\nContent-Length: 0\r\n", HOP_CONNECTION),
    (b"Connection: close\r\nContent-Length: 0\r\n", HOP_CONNECTION),
    (b"Connection: Keep-Alive\r\nConnection: close\r\nContent-Length: 0\r\n", HOP_CONNECTION),
    (b"Connection: keep-alive, x-secret\r\nX-Secret: 1\r\nContent-Length: 0\r\n", HOP_ANY),
    (b"Connection: close\r\nClose: 1\r\nContent-Length: 0\r\n", HOP_ANY),
    (b"Close: 1\r\nConnection: close\r\nContent-Length: 0\r\n", HOP_ANY),
    (b"Keep-Alive: timeout=5\r\nContent-Length: 0\r\n", HOP_ANY),
    (b"Transfer_Encoding: x\r\nContent-Length: 0\r\n", HOP_ANY),
    (b"Upgrade: h2c\r\nContent-Length: 0\r\n", HOP_ANY),
    (b"X-Forwarded-For: 1.2.3.4\r\nHost: a\r\nAccept: b\r\nContent-Length: 0\r\n", HOP_ANY),
    (b"Trailer: x\r\nTransfer-Encoding: chunked\r\n", HOP_ANY),
    (b"Transfer-Encoding: chunked\r\nSet-Cookie: a=1\r\n", HOP_NONE),
]


def _parsed(head: bytes) -> Response:
    conn = Http1Connection(Role.CLIENT)
    conn.send(Request(b"GET", b"/", [(b"host", b"a")]))
    conn.send(END_OF_MESSAGE)
    body = b"0\r\n\r\n" if b"chunked" in head else b""
    conn.receive_data(b"HTTP/1.1 200 OK\r\n" + head + b"\r\n" + body)
    event = conn.next_event()
    assert isinstance(event, Response), event
    return event


@pytest.mark.parametrize(("head", "noted"), HEADS)
def test_the_note_gives_what_the_whole_filter_gives(head: bytes, noted: int) -> None:
    response = _parsed(head)
    assert response.hop_by_hop == noted
    assert response_headers_for_client(
        response.headers, hop_by_hop=response.hop_by_hop
    ) == response_headers_for_client(response.headers)


def test_a_response_built_by_hand_gets_the_whole_filter() -> None:
    built = Response(200, [(b"connection", b"x-a"), (b"x-a", b"1"), (b"b", b"2")])
    assert built.hop_by_hop == HOP_ANY
    assert response_headers_for_client(built.headers, hop_by_hop=built.hop_by_hop) == [(b"b", b"2")]
