"""``hostmux.http1.connection``: client and server back to back in memory, exact bytes."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hostmux.http1 import (
    CONNECTION_CLOSED,
    END_OF_MESSAGE,
    NEED_DATA,
    PAUSED,
    ConnectionClosed,
    Data,
    EndOfMessage,
    Event,
    Http1Connection,
    InformationalResponse,
    LocalProtocolError,
    Pending,
    RemoteProtocolError,
    Request,
    Response,
    Role,
    State,
)

GET = b"GET /a HTTP/1.1\r\nHost: example.test\r\n\r\n"
CHUNKED = b"Transfer-Encoding: chunked\r\n\r\n"


def server(*chunks: bytes, **limits: int) -> Http1Connection:
    conn = Http1Connection(Role.SERVER, **limits)
    for chunk in chunks:
        conn.receive_data(chunk)
    return conn


def events(conn: Http1Connection) -> list[Event | Pending]:
    """Events until NEED_DATA, PAUSED or ConnectionClosed (included)."""
    out: list[Event | Pending] = []
    while not isinstance(out[-1:] and out[-1], Pending | ConnectionClosed):
        out.append(conn.next_event())
    return out


def answer(conn: Http1Connection, status: int = 200, body: bytes = b"ok", **kw: bytes) -> bytes:
    headers = [(b"content-length", str(len(body)).encode())] if "no_length" not in kw else []
    data = conn.send(Response(status, headers, b"OK"))
    data += conn.send(Data(body)) + conn.send(END_OF_MESSAGE)
    return data


def events_until_need_data(conn: Http1Connection) -> None:
    while conn.next_event() is not NEED_DATA:
        pass


def status_of(*chunks: bytes, **limits: int) -> int:
    conn = server(*chunks, **limits)
    with pytest.raises(RemoteProtocolError) as caught:
        events_until_need_data(conn)
    assert conn.their_state is State.ERROR
    return caught.value.error_status_hint


# --- a round trip ---------------------------------------------------------------------------


def test_request_and_response_round_trip_byte_for_byte() -> None:
    client = Http1Connection(Role.CLIENT)
    wire = client.send(
        Request(b"POST", b"/up?x=1", [(b"host", b"example.test"), (b"content-length", b"5")])
    )
    wire += client.send(Data(b"hello")) + client.send(END_OF_MESSAGE)
    assert wire == b"POST /up?x=1 HTTP/1.1\r\nhost: example.test\r\ncontent-length: 5\r\n\r\nhello"
    assert (client.our_state, client.their_state) == (State.DONE, State.SEND_RESPONSE)

    srv = server(wire)
    assert events(srv) == [
        Request(b"POST", b"/up?x=1", [(b"host", b"example.test"), (b"content-length", b"5")]),
        Data(b"hello"),
        END_OF_MESSAGE,
        PAUSED,
    ]
    reply = answer(srv, 201, b"done")
    assert reply == b"HTTP/1.1 201 OK\r\ncontent-length: 4\r\n\r\ndone"
    assert (srv.our_state, srv.their_state) == (State.DONE, State.DONE)

    client.receive_data(reply)
    assert events(client) == [
        Response(201, [(b"content-length", b"4")], b"OK"),
        Data(b"done"),
        END_OF_MESSAGE,
        PAUSED,
    ]
    client.start_next_cycle()
    srv.start_next_cycle()
    assert client.our_state is client.their_state is srv.our_state is State.IDLE


def test_header_names_are_lower_cased_and_values_trimmed() -> None:
    srv = server(b"GET / HTTP/1.1\r\nHOST: a\r\nX-Pad:   b c \t\r\nX-Empty:\r\n\r\n")
    assert srv.next_event() == Request(
        b"GET", b"/", [(b"host", b"a"), (b"x-pad", b"b c"), (b"x-empty", b"")]
    )


def test_a_request_without_length_or_chunked_has_no_body() -> None:
    assert events(server(GET + b"x")) == [
        Request(b"GET", b"/a", [(b"host", b"example.test")]),
        END_OF_MESSAGE,
        PAUSED,
    ]


def test_chunked_body_arrives_in_pieces_and_trailers_are_dropped() -> None:
    head = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n"
    srv = server(head + b"3\r\nabc\r\n2\r")
    assert events(srv) == [
        Request(b"POST", b"/", [(b"host", b"a"), (b"transfer-encoding", b"chunked")]),
        Data(b"abc"),
        NEED_DATA,
    ]
    srv.receive_data(b"\nde\r\n0\r\nX-Sum: 5\r\n\r\n")
    assert events(srv) == [Data(b"de"), END_OF_MESSAGE, PAUSED]


def test_the_peer_closing_between_requests_or_mid_request() -> None:
    srv = server(b"")
    assert srv.next_event() is CONNECTION_CLOSED
    assert srv.their_state is State.CLOSED
    assert status_of(b"GET / HTTP/1.1\r\nHost: a\r\n", b"") == 400
    assert status_of(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nab", b"") == 400


# --- what is refused --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_", "status"),
    [
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n" + CHUNKED, 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n", 501),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n", 501),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\t\r\n\r\n", 501),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n folded\r\n\r\n", 400),
        (b"GET / HTTP/1.1\nHost: a\n\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\rX: 1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\x01b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX A: 1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400),
        (b"GET  /  HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET /\r\nHost: a\r\n\r\n", 400),
        (b"GET / HTTP/1.2\r\nHost: a\r\n\r\n", 505),
        (b"GET / HTTP/1.1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", 400),
        (b"get / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400),
    ],
)
def test_framing_doubts_are_errors_with_a_status(request_: bytes, status: int) -> None:
    assert status_of(request_) == status


def test_http_2_0_and_1_0_parse_for_the_relay_to_judge() -> None:
    srv = server(b"GET / HTTP/2.0\r\nHost: a\r\n\r\n")
    assert srv.next_event() == Request(b"GET", b"/", [(b"host", b"a")], b"2.0")
    assert server(b"GET / HTTP/1.0\r\n\r\n").next_event() == Request(b"GET", b"/", [], b"1.0")


def test_after_an_error_what_was_received_is_the_trailing_data() -> None:
    srv = server(b"GARBAGE\r\n\r\n")
    with pytest.raises(RemoteProtocolError):
        srv.next_event()
    assert srv.trailing_data == b"GARBAGE\r\n\r\n"
    srv.receive_data(b"more")  # ignored: nothing after an error is parsed
    assert srv.trailing_data == b"GARBAGE\r\n\r\n"


# --- limits -----------------------------------------------------------------------------------


def test_a_long_target_is_414_as_soon_as_it_is_too_long() -> None:
    pieces = [b"GET /", *[b"a" * 100] * 20]
    assert status_of(*pieces, max_target_bytes=1000) == 414


def test_an_unfinished_head_past_the_limit_is_431() -> None:
    pieces = [b"GET / HTTP/1.1\r\nHost: a\r\nX-Flood: ", *[b"f" * 300] * 4]
    assert status_of(*pieces, max_head_bytes=1024) == 431
    # One byte under: still waiting for the rest.
    srv = server(b"GET / HTTP/1.1\r\nX: " + b"f" * 1000, max_head_bytes=1024)
    assert srv.next_event() is NEED_DATA


def test_a_head_complete_in_one_read_is_left_to_the_relay_to_measure() -> None:
    head = b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"f" * 2000 + b"\r\n\r\n"
    assert isinstance(server(head, max_head_bytes=1024).next_event(), Request)


def test_endless_trailers_are_cut_off() -> None:
    head = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: "
    assert status_of(head, *[b"t" * 500] * 4, max_head_bytes=1024) == 400


# --- pipelining -------------------------------------------------------------------------------


def test_pipelined_requests_come_one_cycle_at_a_time() -> None:
    srv = server(GET.replace(b"/a", b"/1") + GET.replace(b"/a", b"/2"))
    assert [type(e) for e in events(srv)] == [Request, EndOfMessage, Pending]
    with pytest.raises(LocalProtocolError):
        srv.start_next_cycle()  # the response is owed first
    answer(srv)
    srv.start_next_cycle()
    first = srv.next_event()
    assert isinstance(first, Request)
    assert first.target == b"/2"


def test_an_error_in_a_later_request_surfaces_only_when_it_is_reached() -> None:
    srv = server(
        GET + b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"
    )
    assert [type(e) for e in events(srv)] == [Request, EndOfMessage, Pending]
    assert answer(srv) == b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
    srv.start_next_cycle()
    with pytest.raises(RemoteProtocolError):
        srv.next_event()


def test_a_body_error_follows_the_request_it_belongs_to() -> None:
    srv = server(
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\nzz\r\n"
    )
    assert isinstance(srv.next_event(), Request)
    assert srv.next_event() == Data(b"ab")
    with pytest.raises(RemoteProtocolError):
        srv.next_event()


# --- keep-alive -------------------------------------------------------------------------------


def test_http_1_0_closes_unless_keep_alive() -> None:
    srv = server(b"GET / HTTP/1.0\r\n\r\n")
    events(srv)
    assert answer(srv) == b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nConnection: close\r\n\r\nok"
    assert (srv.our_state, srv.their_state) == (State.MUST_CLOSE, State.MUST_CLOSE)

    srv = server(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    events(srv)
    assert answer(srv) == (
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nConnection: keep-alive\r\n\r\nok"
    )
    assert (srv.our_state, srv.their_state) == (State.DONE, State.DONE)


def test_connection_close_from_either_side_ends_the_connection() -> None:
    srv = server(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n" + GET)
    events(srv)
    assert answer(srv).endswith(b"\r\nConnection: close\r\n\r\nok")
    assert srv.our_state is State.MUST_CLOSE

    srv = server(GET)
    events(srv)
    srv.send(Response(200, [(b"content-length", b"0"), (b"connection", b"close")]))
    srv.send(END_OF_MESSAGE)
    assert (srv.our_state, srv.their_state) == (State.MUST_CLOSE, State.MUST_CLOSE)


# --- responses --------------------------------------------------------------------------------


def client_after(request: Request, *chunks: bytes) -> Http1Connection:
    client = Http1Connection(Role.CLIENT)
    client.send(request)
    client.send(END_OF_MESSAGE)
    for chunk in chunks:
        client.receive_data(chunk)
    return client


REQ = Request(b"GET", b"/", [(b"host", b"a")])
HEAD = Request(b"HEAD", b"/", [(b"host", b"a")])


def test_a_response_to_head_has_no_body_and_the_next_one_follows() -> None:
    client = client_after(HEAD, b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nHTTP/1.1 204 No")
    assert events(client) == [
        Response(200, [(b"content-length", b"5")], b"OK"),
        END_OF_MESSAGE,
        PAUSED,
    ]
    client.start_next_cycle()
    client.send(REQ)
    client.send(END_OF_MESSAGE)
    client.receive_data(b" Content\r\n\r\n")
    assert events(client) == [Response(204, [], b"No Content"), END_OF_MESSAGE, PAUSED]


def test_a_head_response_split_across_reads() -> None:
    client = client_after(HEAD, b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r", b"\nrest")
    assert [type(e) for e in events(client)] == [Response, EndOfMessage, Pending]
    assert client.trailing_data == b"rest"


def test_empty_lines_before_a_head_response_are_not_its_end() -> None:
    client = client_after(HEAD, b"\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nrest")
    assert [type(e) for e in events(client)] == [Response, EndOfMessage, Pending]
    assert client.trailing_data == b"rest"


def test_204_304_and_1xx_have_no_body() -> None:
    client = client_after(
        REQ,
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early\r\nlink: </s>\r\n\r\n"
        b"HTTP/1.1 304 Not Modified\r\ncontent-length: 10\r\n\r\n",
    )
    assert events(client) == [
        InformationalResponse(100, [], b"Continue"),
        InformationalResponse(103, [(b"link", b"</s>")], b"Early"),
        Response(304, [(b"content-length", b"10")], b"Not Modified"),
        END_OF_MESSAGE,
        PAUSED,
    ]


def test_a_body_without_length_ends_at_eof_and_the_connection_with_it() -> None:
    client = client_after(REQ, b"HTTP/1.0 200 OK\r\n\r\nabc")
    assert events(client) == [Response(200, [], b"OK", b"1.0"), Data(b"abc"), NEED_DATA]
    client.receive_data(b"")
    assert events(client) == [END_OF_MESSAGE, PAUSED]
    assert client.their_state is State.MUST_CLOSE


def test_a_response_cut_short_is_an_error() -> None:
    client = client_after(REQ, b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nab", b"")
    assert client.next_event() == Response(200, [(b"content-length", b"5")], b"OK")
    assert client.next_event() == Data(b"ab")
    with pytest.raises(RemoteProtocolError):
        client.next_event()
    with pytest.raises(RemoteProtocolError):  # closed before a byte of answer
        client_after(REQ, b"").next_event()


def test_an_unknown_length_is_sent_chunked_to_http_1_1_and_raw_to_http_1_0() -> None:
    srv = server(GET)
    events(srv)
    wire = srv.send(Response(200, [(b"transfer-encoding", b"chunked"), (b"x-a", b"1")], b"OK"))
    wire += srv.send(Data(b"abc")) + srv.send(Data(b"")) + srv.send(END_OF_MESSAGE)
    assert wire == (
        b"HTTP/1.1 200 OK\r\nx-a: 1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    )
    srv = server(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    events(srv)
    wire = srv.send(Response(200, [], b"OK")) + srv.send(Data(b"abc")) + srv.send(END_OF_MESSAGE)
    assert wire == b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nabc"
    assert srv.our_state is State.MUST_CLOSE


def test_a_response_to_head_keeps_its_length_and_sends_no_body() -> None:
    srv = server(b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n")
    events(srv)
    assert srv.send(Response(200, [(b"content-length", b"11")], b"OK")) == (
        b"HTTP/1.1 200 OK\r\ncontent-length: 11\r\n\r\n"
    )
    with pytest.raises(LocalProtocolError):
        srv.send(Data(b"hello world"))


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        ([(b"content-length", b"2")], [b"abc"]),  # too much
        ([(b"content-length", b"2")], [b"a"]),  # too little
        ([(b"content-length", b"x")], []),
        ([], [b"a"]),  # a 204 has no body
    ],
)
def test_sending_what_the_framing_forbids_is_refused(
    headers: list[tuple[bytes, bytes]], body: list[bytes]
) -> None:
    srv = server(GET)
    events(srv)

    def send_response() -> None:
        srv.send(Response(204 if not headers else 200, headers, b"OK"))
        for piece in body:
            srv.send(Data(piece))
        srv.send(END_OF_MESSAGE)

    with pytest.raises(LocalProtocolError):
        send_response()


def test_events_out_of_turn_are_refused() -> None:
    srv = server(GET)
    events(srv)
    answer(srv)
    for event in (Data(b"x"), END_OF_MESSAGE, Response(200, []), REQ):
        with pytest.raises(LocalProtocolError):
            srv.send(event)
    client = Http1Connection(Role.CLIENT)
    with pytest.raises(LocalProtocolError):
        client.send(Response(200, []))
    client.send(REQ)
    with pytest.raises(LocalProtocolError):
        client.send(REQ)


def test_a_page_can_answer_bytes_that_never_became_a_request() -> None:
    srv = server(b"GARBAGE\r\n\r\n")
    with pytest.raises(RemoteProtocolError):
        srv.next_event()
    assert answer(srv) == b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"


# --- upgrades ---------------------------------------------------------------------------------

UPGRADE = (
    b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n"
)


def test_an_accepted_upgrade_hands_over_the_bytes_after_the_request() -> None:
    srv = server(UPGRADE + b"\x81\x05hello", b" more")
    assert [type(e) for e in events(srv)] == [Request, EndOfMessage, Pending]
    wire = srv.send(InformationalResponse(101, [(b"upgrade", b"websocket")], b"Switching"))
    assert wire == b"HTTP/1.1 101 Switching\r\nupgrade: websocket\r\n\r\n"
    assert srv.our_state is srv.their_state is State.SWITCHED_PROTOCOL
    assert srv.trailing_data == b"\x81\x05hello more"


def test_a_refused_upgrade_goes_on_as_http() -> None:
    srv = server(UPGRADE + GET)
    events(srv)
    answer(srv, 404, b"no")
    srv.start_next_cycle()
    assert srv.next_event() == Request(b"GET", b"/a", [(b"host", b"example.test")])


def test_101_is_refused_without_an_upgrade_request() -> None:
    srv = server(GET)
    events(srv)
    with pytest.raises(LocalProtocolError):
        srv.send(InformationalResponse(101, []))


def test_an_upgrade_request_with_a_length_body_is_read_before_the_pause() -> None:
    request = (
        b"POST / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: h2c\r\n"
        b"Content-Length: 5\r\n\r\nab"
    )
    srv = server(request, b"cde" + GET)
    assert [type(e) for e in events(srv)] == [Request, Data, Data, EndOfMessage, Pending]
    answer(srv)
    srv.start_next_cycle()
    assert isinstance(srv.next_event(), Request)


def test_an_upgrade_request_with_a_chunked_body_is_refused() -> None:
    request = b"POST / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: h2c\r\n"
    assert status_of(request + b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n") == 400


def test_the_app_s_101_hands_over_the_bytes_after_it() -> None:
    client = client_after(
        Request(b"GET", b"/ws", [(b"host", b"a"), (b"connection", b"upgrade")]),
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
        b"\r\nhello",
    )
    assert events(client) == [
        InformationalResponse(100, [], b"Continue"),
        InformationalResponse(101, [(b"upgrade", b"websocket")], b"Switching Protocols"),
        PAUSED,
    ]
    assert client.their_state is State.SWITCHED_PROTOCOL
    assert client.trailing_data == b"hello"


def test_empty_lines_before_the_app_s_101_are_not_its_end() -> None:
    client = client_after(
        Request(b"GET", b"/ws", [(b"host", b"a"), (b"connection", b"upgrade")]),
        b"\r\n\r\nHTTP/1.1 101 Switching Protocols\r\n\r\n\r\n\r\nhello",
    )
    assert [type(e) for e in events(client)] == [InformationalResponse, Pending]
    assert client.trailing_data == b"\r\n\r\nhello"  # after the head: the new protocol's


# --- reads may end anywhere ---------------------------------------------------------------------

PIPELINE = [
    GET,
    b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc",
    b"PUT /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\nT: 1\r\n\r\n",
    b"\r\nHEAD /h?x=" + b"q" * 300 + b" HTTP/1.1\r\nHost: a\r\nX-Long: " + b"v" * 300 + b"\r\n\r\n",
    UPGRADE,
    GET.replace(b"/a", b"/after-upgrade"),
]


def served(chunks: list[bytes]) -> list[object]:
    """Every request's events (a 404 answers each, so upgrades are refused)."""
    srv = Http1Connection(Role.SERVER, max_head_bytes=1024, max_target_bytes=512)
    seen: list[object] = []
    for chunk in chunks:
        srv.receive_data(chunk)
        while (event := srv.next_event()) is not NEED_DATA:
            if event is PAUSED:
                seen.append(answer(srv, 404, b""))
                srv.start_next_cycle()
            else:
                seen.append(event)
    return seen


@settings(max_examples=300, deadline=None)
@given(cuts=st.lists(st.integers(min_value=1, max_value=900), max_size=12))
def test_requests_parse_the_same_however_the_reads_are_cut(cuts: list[int]) -> None:
    data = b"".join(PIPELINE)
    bounds = [0, *sorted({c for c in cuts if c < len(data)}), len(data)]
    chunks = [data[a:b] for a, b in itertools.pairwise(bounds) if a < b]
    whole = served([data])
    assert [e for e in whole if isinstance(e, Request)][-1].target == b"/after-upgrade"
    pieces = served(chunks)
    # Bodies may come in more pieces; everything else is the same.
    assert _joined(pieces) == _joined(whole)


def _joined(seen: list[object]) -> list[object]:
    out: list[object] = []
    for event in seen:
        if isinstance(event, Data) and out and isinstance(out[-1], Data):
            out[-1] = Data(out[-1].data + event.data)
        elif not (isinstance(event, Data) and not event.data):
            out.append(event)
    return out


RESPONSES = (
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\n",
    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
)


@settings(max_examples=200, deadline=None)
@given(cut=st.integers(min_value=1, max_value=80), head=st.booleans())
def test_responses_parse_the_same_however_the_reads_are_cut(cut: int, head: bool) -> None:
    data = RESPONSES[0] + (b"" if head else b"body") + RESPONSES[1]
    requests = [HEAD if head else REQ, REQ]

    def received(chunks: list[bytes]) -> list[object]:
        client = Http1Connection(Role.CLIENT)
        client.send(requests[0])
        client.send(END_OF_MESSAGE)
        seen: list[object] = []
        for chunk in chunks:
            client.receive_data(chunk)
            while (event := client.next_event()) is not NEED_DATA:
                if event is PAUSED:
                    client.start_next_cycle()
                    client.send(requests[1])
                    client.send(END_OF_MESSAGE)
                else:
                    seen.append(event)
        return seen

    assert _joined(received([data[:cut], data[cut:]])) == _joined(received([data]))


def test_requests_parse_the_same_cut_at_any_byte_or_fed_byte_by_byte() -> None:
    data = b"".join(PIPELINE)
    whole = _joined(served([data]))
    for cut in range(1, len(data)):
        assert _joined(served([data[:cut], data[cut:]])) == whole, cut
    assert _joined(served([data[i : i + 1] for i in range(len(data))])) == whole


def test_a_head_begun_after_another_request_in_the_same_read_is_bounded_too() -> None:
    flood = b"GET /2 HTTP/1.1\r\nHost: a\r\nX: " + b"f" * 600
    srv = server(b"GET / HTTP/1.1\r\nHost: a\r\nX: 1", b"\r\n\r\n" + flood, max_head_bytes=1024)
    assert [type(e) for e in events(srv)] == [Request, EndOfMessage, Pending]
    answer(srv)
    srv.start_next_cycle()
    # What of the read the head began in was not parsed yet is not counted: the
    # bound is the limit plus one read.
    srv.receive_data(b"f" * 600)
    assert srv.next_event() is NEED_DATA
    srv.receive_data(b"f" * 600)
    with pytest.raises(RemoteProtocolError) as caught:
        events_until_need_data(srv)
    assert caught.value.error_status_hint == 431
