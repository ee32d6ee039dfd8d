"""Framing doubts the parser lets through, and body framing errors, refused by the relay.

Each case here was found by the hostile-input tests against the real router
(tests/integration/test_hostile_http.py), where the app received the request.
What llhttp refuses itself is not checked again: test_llhttp_refusals.py pins it.
"""

from __future__ import annotations

import pytest

from hostmux.http1 import RemoteProtocolError, Request, framing_refusal, parse_error_status

from .test_relay import FakeGateway, relay, robust_app


def _request(*headers: tuple[bytes, bytes], version: bytes = b"1.1") -> Request:
    return Request(b"POST", b"/", [(b"host", b"a.localhost"), *headers], version)


@pytest.mark.parametrize(
    ("request_", "status"),
    [
        (_request((b"transfer-encoding", b"chunked"), version=b"1.0"), 400),
        (_request((b"content-length", b"9223372036854775808")), 400),
        (_request((b"content-length", b"99999999999999999999")), 400),
        (_request(version=b"2.0"), 505),
        (_request(version=b"0.9"), 505),
    ],
)
def test_framing_doubts_the_parser_accepts_are_refused(request_: Request, status: int) -> None:
    refusal = framing_refusal(request_)
    assert refusal is not None
    assert refusal[0] == status


@pytest.mark.parametrize(
    "request_",
    [
        _request((b"content-length", b"9223372036854775807")),
        _request((b"transfer-encoding", b"chunked")),
        _request((b"x-a", b"tab\tand obs-text \xff")),
        _request(version=b"1.0"),
    ],
)
def test_sound_requests_pass(request_: Request) -> None:
    assert framing_refusal(request_) is None


def test_the_parser_s_status_hint_picks_the_page() -> None:
    # The parser tells 414 from 431 itself (it counts the target as it arrives).
    assert parse_error_status(RemoteProtocolError("long", 414))[0] == 414
    assert parse_error_status(RemoteProtocolError("large", 431))[0] == 431
    assert parse_error_status(RemoteProtocolError("coding", 501)) == (
        501, "the request could not be parsed as HTTP/1.1"
    )  # fmt: skip
    assert parse_error_status(RemoteProtocolError("illegal request line"))[0] == 400


HEAD = b"POST /up HTTP/1.1\r\nHost: app.localhost\r\nTransfer-Encoding: chunked\r\n\r\n"


def test_a_bad_chunk_already_received_is_refused_before_the_app_is_reached() -> None:
    gateway = FakeGateway(robust_app)
    result = relay(gateway, HEAD + b"3\r\nabcX\r\n0\r\n\r\n")
    assert result.response.startswith(b"HTTP/1.1 400 ")
    assert gateway.opened == 0
    assert gateway.routed == []  # refused before routing: no login redirect in the helper


def test_a_bad_chunk_arriving_later_is_a_400_and_the_app_saw_only_clean_chunks() -> None:
    gateway = FakeGateway(robust_app)
    result = relay(gateway, HEAD + b"3\r\nabc\r\n", b"zz\r\nGET /smuggled HTTP/1.1\r\n\r\n")
    assert result.response.startswith(b"HTTP/1.1 400 ")
    assert result.response.count(b"HTTP/1.1 ") == 1
    [app] = gateway.apps
    assert app.received.endswith(b"\r\n\r\n3\r\nabc\r\n")
    assert b"smuggled" not in app.received
