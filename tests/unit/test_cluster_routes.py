"""The pure parts of router-to-router forwarding: the route cache, router ids, the wire."""

from __future__ import annotations

import pytest

from hostmux.http1 import Request, Response
from router.cluster.identity import authorises
from router.cluster.routes import RouteCache
from router.cluster.wire import (
    OPEN_ANSWER,
    BadStreamRequest,
    LinkError,
    StreamRequest,
    error_answer,
    error_of,
    parse_stream_request,
)
from router.registry.model import Holder, Route


def _route(name: str, generation: int = 1) -> Route:
    return Route(name, "owner", generation, (Holder("a", "c", 0.0),), None)


def test_entries_are_used_only_while_the_subscription_is_up() -> None:
    cache = RouteCache()
    cache.put("demo", _route("demo"), cache.ticket())
    assert cache.get("demo") == (False, None)  # not subscribed yet: not trusted
    assert cache.fallback("demo") == _route("demo")  # ... but kept for fail static
    cache.subscribed()
    assert cache.fallback("demo") is None  # subscribing starts from nothing
    cache.put("demo", _route("demo", 2), cache.ticket())
    cache.put("nobody", None, cache.ticket())
    assert cache.get("demo") == (True, _route("demo", 2))
    assert cache.get("nobody") == (True, None)  # a negative entry
    cache.unsubscribed()
    assert cache.get("demo") == (False, None)
    assert cache.fallback("demo") == _route("demo", 2)
    assert cache.fallback("nobody") is None
    assert len(cache) == 1  # the negative entry went with the subscription
    cache.put("nobody", None, cache.ticket())
    assert len(cache) == 1  # and none are stored while it is down


def test_an_invalidation_drops_its_name_and_a_racing_lookup_is_not_stored() -> None:
    cache = RouteCache()
    cache.subscribed()
    cache.put("demo", _route("demo"), cache.ticket())
    ticket = cache.ticket()  # a look-up starts ...
    cache.drop("demo")  # ... an invalidation arrives before it answers ...
    cache.put("demo", _route("demo"), ticket)  # ... so its answer may be stale
    assert cache.get("demo") == (False, None)


def test_the_cache_is_bounded_least_recently_used_first() -> None:
    cache = RouteCache(max_entries=3)
    cache.subscribed()
    for name in ("a", "b", "c"):
        cache.put(name, None, cache.ticket())
    assert cache.get("a") == (True, None)  # a is now the most recent
    cache.put("d", None, cache.ticket())
    assert len(cache) == 3
    assert cache.get("b") == (False, None)
    assert all(cache.get(name)[0] for name in ("a", "c", "d"))


@pytest.mark.parametrize(
    ("certificate", "router", "expected"),
    [
        ("a", "a", True),
        ("a", "a.1", True),
        ("a", "a.12", True),
        ("router-a", "router-a.3", True),
        ("a", "b", False),
        ("a", "ab", False),
        ("a", "a.", False),
        ("a", "a.x", False),
        ("a", "a.01", False),
        ("a", "a.1.2", False),
        ("a.1", "a", False),
        ("a.1", "a.2", False),
        ("a", "b.a.1", False),
    ],
)
def test_a_certificate_speaks_for_its_id_and_its_workers(
    certificate: str, router: str, expected: bool
) -> None:
    assert authorises(certificate, router) is expected


def test_a_stream_request_round_trips_and_bad_ones_are_one_line() -> None:
    sent = StreamRequest("demo", "SHA256:abc", 42, "2001:db8::1", 443, "https")
    request = sent.request("a")
    assert dict(request.headers)[b"transfer-encoding"] == b"chunked"
    assert parse_stream_request(request) == sent
    tcp = StreamRequest("tcp:20001", "SHA256:abc", 42, "192.0.2.1", 5000, "http")
    assert parse_stream_request(tcp.request("a")) == tcp  # a TCP tunnel's port
    assert b"x-hostmux-client-cert-route" not in dict(request.headers)
    verified = StreamRequest("lab-1", "o", 1, "192.0.2.1", 5, "https", "lab-*,ops-*")
    assert dict(verified.request("a").headers)[b"x-hostmux-client-cert-route"] == b"lab-*,ops-*"
    assert parse_stream_request(verified.request("a")) == verified
    twice = [*verified.request("a").headers, (b"x-hostmux-client-cert-route", b"lab-*")]
    bad = [
        Request(b"GET", b"/_hostmux/stream", request.headers),
        Request(b"POST", b"/other", request.headers),
        Request(b"POST", b"/_hostmux/stream", request.headers[:2] + request.headers[3:]),
        Request(b"POST", b"/_hostmux/stream", [*request.headers, (b"x-hostmux-name", b"x")]),
        Request(b"POST", b"/_hostmux/stream", _with(request, b"x-hostmux-name", b"Not_A_Name")),
        Request(b"POST", b"/_hostmux/stream", _with(request, b"x-hostmux-generation", b"-1")),
        Request(b"POST", b"/_hostmux/stream", _with(request, b"x-hostmux-client", b"1.2.3.4")),
        Request(b"POST", b"/_hostmux/stream", _with(request, b"x-hostmux-scheme", b"ftp")),
        *(
            Request(b"POST", b"/_hostmux/stream", _with(request, b"x-hostmux-name", bad_port))
            for bad_port in (b"tcp:0", b"tcp:65536", b"tcp:020001", b"tcp:x", b"tcp:")
        ),
        Request(b"POST", b"/_hostmux/stream", twice),
        Request(
            b"POST", b"/_hostmux/stream",
            [*request.headers, (b"x-hostmux-client-cert-route", b"x" * 2049)],
        ),
    ]  # fmt: skip
    for request in bad:
        with pytest.raises(BadStreamRequest) as raised:
            parse_stream_request(request)
        assert "\n" not in str(raised.value)


def test_answers_carry_their_error_codes() -> None:
    assert error_of(OPEN_ANSWER) is None
    for error in LinkError:
        assert error_of(error_answer(error)) is error
    assert error_answer(LinkError.CERTIFICATE_REQUIRED).status_code == 403
    assert error_answer(LinkError.ROUTE_MOVED).status_code == 409
    assert error_answer(LinkError.TUNNEL_FAILED).status_code == 502
    assert error_of(Response(503, [])) is LinkError.BAD_REQUEST  # anything unexpected


def _with(request: Request, name: bytes, value: bytes) -> list[tuple[bytes, bytes]]:
    return [(n, value if n == name else v) for n, v in request.headers]
