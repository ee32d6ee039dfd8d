"""The header facts the parser gathers match one scan of the headers, and the
hop-by-hop filter's fast path (no header it may remove) changes nothing."""

from __future__ import annotations

import pytest

from hostmux.http1 import (
    ClientInfo,
    Http1Connection,
    Request,
    Role,
    facts_of,
    header_facts,
    request_headers_for_app,
)

HEADS = [
    b"GET / HTTP/1.1\r\nHost: a.localhost\r\n\r\n",
    b"GET /x HTTP/1.1\r\nHost: a.localhost\r\nAccept: text/html\r\nAccept: */*\r\n"
    b"User-Agent: t\r\nCookie: a=1\r\n\r\n",
    b"GET /ws HTTP/1.1\r\nHost: a.localhost\r\nConnection: keep-alive, Upgrade\r\n"
    b"Upgrade:  WebSocket \r\nSec-WebSocket-Key: k\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a.localhost\r\nTransfer-Encoding: Chunked\r\n"
    b"X-Forwarded-For: 1.2.3.4\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a.localhost\r\nContent-Length: 0\r\nX_Forwarded_For: 1\r\n"
    b"Connection: x-secret\r\nX-Secret: s\r\n\r\n",
    b"GET / HTTP/1.0\r\nKeep-Alive: 5\r\nX-Hostmux-User: eve\r\nTE: trailers\r\n\r\n",
]


def _parse(raw: bytes) -> Request:
    conn = Http1Connection(Role.SERVER)
    conn.receive_data(raw)
    event = conn.next_event()
    assert isinstance(event, Request)
    return event


@pytest.mark.parametrize("raw", HEADS)
def test_the_parser_s_facts_are_those_of_its_headers(raw: bytes) -> None:
    request = _parse(raw)
    assert request.facts is not None
    assert request.facts == header_facts(request.headers)
    built = Request(request.method, request.target, request.headers, request.http_version)
    assert built.facts is None
    assert facts_of(built) == request.facts


@pytest.mark.parametrize("raw", HEADS)
def test_the_filter_gives_the_same_headers_with_or_without_facts(raw: bytes) -> None:
    request = _parse(raw)
    client = ClientInfo("203.0.113.7", 5000, "https")

    with_facts = request_headers_for_app(
        request.headers, host=b"a.localhost", client=client, request_id="r", websocket=False,
        facts=request.facts,
    )  # fmt: skip
    without = request_headers_for_app(
        request.headers, host=b"a.localhost", client=client, request_id="r", websocket=False
    )
    assert with_facts == without


def test_facts() -> None:
    facts = _parse(HEADS[2]).facts
    assert facts is not None
    assert facts.websocket_upgrade
    assert facts.connection == {b"keep-alive", b"upgrade"}
    assert facts.host == b"a.localhost"
    assert facts.droppable
    plain = _parse(HEADS[1]).facts
    assert plain is not None
    assert not plain.droppable
    assert plain.accept == b"text/html"
    assert plain.size == sum(len(n) + len(v) + 4 for n, v in _parse(HEADS[1]).headers)
    assert _parse(HEADS[4]).facts == header_facts(_parse(HEADS[4]).headers)
    underscored = _parse(HEADS[4]).facts
    assert underscored is not None
    assert underscored.content_length == b"0"
