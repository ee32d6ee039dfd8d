"""Header rewriting (``hostmux.http1.headers``): what the app and the browser each receive.

Header names are given lower-case, as h11 hands them to the relay.
"""

from __future__ import annotations

import dataclasses

import pytest

from hostmux.http1 import (
    ClientInfo,
    Http1Connection,
    Request,
    Role,
    TrustedProxies,
    is_websocket_upgrade,
    request_headers_for_app,
    response_headers_for_client,
)
from hostmux.http1.headers import ClientCertificate

Headers = list[tuple[bytes, bytes]]

CLIENT = ClientInfo(peer_ip="203.0.113.7", peer_port=50123, scheme="https")
HOST = b"myapp.example.com"

# What the router appends for CLIENT, HOST and request id "rid-1".
FORWARDING: Headers = [
    (b"x-forwarded-for", b"203.0.113.7"),
    (b"x-forwarded-proto", b"https"),
    (b"x-forwarded-host", b"myapp.example.com"),
    (b"forwarded", b'for=203.0.113.7;proto=https;host="myapp.example.com"'),
    (b"x-request-id", b"rid-1"),
]


def for_app(
    headers: Headers,
    *,
    websocket: bool = False,
    host: bytes = HOST,
    client: ClientInfo = CLIENT,
) -> Headers:
    return request_headers_for_app(
        headers, host=host, client=client, request_id="rid-1", websocket=websocket
    )


# --- request_headers_for_app ---------------------------------------------------------


def test_end_to_end_headers_pass_in_order_and_forwarding_is_appended() -> None:
    headers: Headers = [
        (b"host", HOST),
        (b"accept", b"*/*"),
        (b"cookie", b"a=1"),
        (b"authorization", b"Bearer t"),
        (b"accept", b"text/html"),
    ]
    assert for_app(headers) == [*headers, *FORWARDING]


@pytest.mark.parametrize(
    "name",
    [
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"upgrade",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"http2-settings",
        b"keep_alive",  # the same name once "_" is folded into "-"
        b"proxy_authorization",
    ],
)
def test_hop_by_hop_headers_are_removed(name: bytes) -> None:
    assert for_app([(b"host", HOST), (name, b"x")]) == [(b"host", HOST), *FORWARDING]


def test_headers_named_in_connection_are_removed() -> None:
    headers: Headers = [
        (b"host", HOST),
        (b"connection", b"keep-alive, X-Secret ,x-other"),
        (b"x-secret", b"1"),
        (b"x-other", b"2"),
        (b"x-kept", b"3"),
    ]
    assert for_app(headers) == [(b"host", HOST), (b"x-kept", b"3"), *FORWARDING]


def test_tokens_of_every_connection_header_are_honoured() -> None:
    headers: Headers = [
        (b"connection", b"x-one"),
        (b"connection", b",,x-two,"),
        (b"x-one", b"1"),
        (b"x-two", b"2"),
        (b"x-three", b"3"),
    ]
    assert for_app(headers) == [(b"x-three", b"3"), *FORWARDING]


@pytest.mark.parametrize(
    "name",
    [
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"x-forwarded-port",
        b"x-forwarded-server",
        b"x-forwarded-prefix",
        b"forwarded",
        b"x-real-ip",
        b"x-request-id",
        b"x-client-ip",
        b"true-client-ip",
        b"client-ip",
        b"x_forwarded_for",
        b"x-forwarded_host",
        b"x_real_ip",
        b"x_request_id",
        b"x-hostmux-user",  # identity: set by the auth helper, never by a browser
        b"x_hostmux_user",
        b"x-hostmux-name",  # the router link's: only a peer router may send them
        b"x-hostmux-generation",
        b"x_hostmux_client",
        b"x-hostmux-anything-new",
        b"client-cert",  # RFC 9440 and ours: only a certificate the router verified
        b"client_cert",
        b"client-cert-chain",
        b"client_cert_chain",
        b"x-client-cert-subject",
        b"x_client_cert_subject",
        b"x-client_cert-subject",
        b"x-client-cert-fingerprint",
        b"x_client_cert_fingerprint",
    ],
)
def test_client_sent_forwarding_headers_are_dropped_in_every_spelling(name: bytes) -> None:
    assert for_app([(name, b"6.6.6.6")]) == FORWARDING


def test_the_parsers_facts_mark_x_hostmux_headers_for_the_filter() -> None:
    """The hot path skips the filter for requests whose facts say nothing is droppable."""
    server = Http1Connection(Role.SERVER)
    server.receive_data(b"GET / HTTP/1.1\r\nHost: a\r\nX-Hostmux-Owner: me\r\n\r\n")
    request = server.next_event()
    assert isinstance(request, Request) and request.facts is not None
    assert request.facts.droppable
    out = request_headers_for_app(
        request.headers, host=HOST, client=CLIENT, request_id="rid-1", websocket=False,
        facts=request.facts,
    )  # fmt: skip
    assert out == [(b"host", b"a"), *FORWARDING]


def test_forwarding_headers_are_dropped_from_responses_only_as_hop_by_hop() -> None:
    # The app may set X-Request-Id on its response; only the request side is guarded.
    assert response_headers_for_client([(b"x-request-id", b"app")]) == [(b"x-request-id", b"app")]


def test_framing_headers_are_kept_as_h11_validated_them() -> None:
    headers: Headers = [
        (b"host", HOST),
        (b"content-length", b"5"),
        (b"transfer-encoding", b"chunked"),
    ]
    assert for_app(headers) == [*headers, *FORWARDING]


@pytest.mark.parametrize("name", [b"content_length", b"transfer_encoding"])
def test_underscore_spellings_of_framing_headers_are_dropped(name: bytes) -> None:
    assert for_app([(b"host", HOST), (name, b"99")]) == [(b"host", HOST), *FORWARDING]


def test_connection_cannot_name_away_host_or_framing() -> None:
    headers: Headers = [
        (b"host", HOST),
        (b"connection", b"host, content-length, transfer-encoding"),
        (b"content-length", b"5"),
    ]
    assert for_app(headers) == [(b"host", HOST), (b"content-length", b"5"), *FORWARDING]


def test_websocket_request_keeps_exactly_connection_upgrade_and_upgrade_websocket() -> None:
    headers: Headers = [
        (b"host", HOST),
        (b"connection", b"keep-alive, Upgrade"),
        (b"upgrade", b"WebSocket"),
        (b"sec-websocket-key", b"dGhlIHNhbXBsZSBub25jZQ=="),
        (b"sec-websocket-version", b"13"),
    ]
    assert for_app(headers, websocket=True) == [
        (b"host", HOST),
        (b"sec-websocket-key", b"dGhlIHNhbXBsZSBub25jZQ=="),
        (b"sec-websocket-version", b"13"),
        (b"connection", b"upgrade"),
        (b"upgrade", b"websocket"),
        *FORWARDING,
    ]


def test_other_upgrades_are_not_passed_on() -> None:
    headers: Headers = [
        (b"host", HOST),
        (b"connection", b"Upgrade, HTTP2-Settings"),
        (b"upgrade", b"h2c"),
        (b"http2-settings", b"AAMAAABkAAQAAP__"),
    ]
    assert for_app(headers) == [(b"host", HOST), *FORWARDING]


def test_forwarded_quotes_ipv6_peers() -> None:
    client = ClientInfo(peer_ip="2001:db8::1", peer_port=1, scheme="http")
    out = for_app([], client=client)
    assert out == [
        (b"x-forwarded-for", b"2001:db8::1"),
        (b"x-forwarded-proto", b"http"),
        (b"x-forwarded-host", HOST),
        (b"forwarded", b'for="[2001:db8::1]";proto=http;host="myapp.example.com"'),
        (b"x-request-id", b"rid-1"),
    ]


def test_forwarded_says_unknown_for_a_peer_that_is_not_an_ip() -> None:
    client = ClientInfo(peer_ip="unix-socket", peer_port=0, scheme="https")
    forwarded = dict(for_app([], client=client))[b"forwarded"]
    assert forwarded == b'for="unknown";proto=https;host="myapp.example.com"'


def test_forwarded_host_cannot_break_out_of_its_quotes() -> None:
    forwarded = dict(for_app([], host=b'evil";for=1.1.1.1'))[b"forwarded"]
    assert forwarded == b'for=203.0.113.7;proto=https;host="evil;for=1.1.1.1"'


def test_host_value_is_forwarded_as_sent_with_its_port() -> None:
    out = dict(for_app([], host=b"MyApp.example.com:8443"))
    assert out[b"x-forwarded-host"] == b"MyApp.example.com:8443"
    assert out[b"forwarded"] == b'for=203.0.113.7;proto=https;host="MyApp.example.com:8443"'


def test_input_headers_are_not_modified() -> None:
    headers: Headers = [(b"connection", b"close"), (b"x-a", b"1")]
    for_app(headers)
    assert headers == [(b"connection", b"close"), (b"x-a", b"1")]


# --- response_headers_for_client -----------------------------------------------------


def test_response_keeps_end_to_end_headers_and_drops_hop_by_hop() -> None:
    headers: Headers = [
        (b"content-type", b"text/plain"),
        (b"set-cookie", b"a=1"),
        (b"set-cookie", b"b=2"),
        (b"connection", b"keep-alive, x-hop"),
        (b"keep-alive", b"timeout=5"),
        (b"x-hop", b"1"),
        (b"trailer", b"x-checksum"),
        (b"upgrade", b"h2c"),
        (b"proxy-authenticate", b"Basic"),
        (b"content-length", b"11"),
    ]
    assert response_headers_for_client(headers) == [
        (b"content-type", b"text/plain"),
        (b"set-cookie", b"a=1"),
        (b"set-cookie", b"b=2"),
        (b"content-length", b"11"),
    ]


def test_accepted_websocket_response_gets_exactly_the_upgrade_pair() -> None:
    headers: Headers = [
        (b"connection", b"Upgrade"),
        (b"upgrade", b"WebSocket"),
        (b"sec-websocket-accept", b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
    ]
    assert response_headers_for_client(headers, websocket_accepted=True) == [
        (b"sec-websocket-accept", b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        (b"connection", b"upgrade"),
        (b"upgrade", b"websocket"),
    ]


# --- is_websocket_upgrade ------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([(b"connection", b"Upgrade"), (b"upgrade", b"websocket")], True),
        ([(b"connection", b"keep-alive, upgrade"), (b"upgrade", b" WebSocket ")], True),
        ([(b"connection", b"keep-alive"), (b"connection", b"upgrade"), (b"upgrade", b"websocket")],
         True),
        ([(b"upgrade", b"websocket")], False),  # Connection must name it
        ([(b"connection", b"upgrade")], False),
        ([(b"connection", b"upgrade"), (b"upgrade", b"h2c")], False),
        ([(b"connection", b"upgrade"), (b"upgrade", b"websocket, h2c")], False),
        ([(b"connection", b"upgrade"), (b"upgrade", b"websocket"), (b"upgrade", b"websocket")],
         False),
        ([(b"connection", b"upgraded"), (b"upgrade", b"websocket")], False),
        ([], False),
    ],
)  # fmt: skip
def test_is_websocket_upgrade(headers: Headers, expected: bool) -> None:
    assert is_websocket_upgrade(headers) is expected


def test_client_info_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        CLIENT.peer_ip = "1.1.1.1"  # type: ignore[misc]


# --- trusted proxies --------------------------------------------------------------------------

PROXY = ClientInfo(peer_ip="10.0.0.2", peer_port=40000, scheme="http")
TRUSTED = TrustedProxies(["10.0.0.0/24", "::1"])


@pytest.mark.parametrize(
    ("headers", "ip", "scheme"),
    [
        ([], "10.0.0.2", "http"),  # nothing said: the proxy itself
        ([(b"x-forwarded-for", b"198.51.100.7")], "198.51.100.7", "http"),
        ([(b"x-forwarded-for", b"6.6.6.6, 198.51.100.7")], "198.51.100.7", "http"),  # spoof left
        ([(b"x-forwarded-for", b"198.51.100.7, 10.0.0.9")], "198.51.100.7", "http"),  # 2 proxies
        (
            [(b"x-forwarded-for", b"6.6.6.6"), (b"x-forwarded-for", b"198.51.100.7")],
            "198.51.100.7",
            "http",
        ),
        ([(b"x-forwarded-for", b"junk, 10.0.0.9")], "10.0.0.9", "http"),  # stops at junk
        ([(b"x-forwarded-for", b"2001:db8::1")], "2001:db8::1", "http"),
        ([(b"x-forwarded-proto", b"HTTPS")], "10.0.0.2", "https"),
        ([(b"x-forwarded-proto", b"gopher")], "10.0.0.2", "http"),
    ],
)
def test_a_trusted_proxy_names_the_browser(
    headers: list[tuple[bytes, bytes]], ip: str, scheme: str
) -> None:
    client = TRUSTED.client_of(headers, PROXY)
    assert (client.peer_ip, client.scheme) == (ip, scheme)
    assert client.peer_port == (PROXY.peer_port if ip == PROXY.peer_ip else 0)


def test_an_untrusted_peer_is_the_client_whatever_it_says() -> None:
    browser = ClientInfo(peer_ip="203.0.113.9", peer_port=5555, scheme="https")
    said = [(b"x-forwarded-for", b"198.51.100.7"), (b"x-forwarded-proto", b"http")]
    assert TRUSTED.client_of(said, browser) is browser
    assert not TrustedProxies([])
    assert TRUSTED.trusts("::1")
    assert not TRUSTED.trusts("not an ip")


def test_parsed_client_cert_headers_are_dropped_and_the_routers_are_appended() -> None:
    server = Http1Connection(Role.SERVER)
    server.receive_data(
        b"GET / HTTP/1.1\r\nHost: a\r\nClient-Cert: :bWFsbG9yeQ==:\r\n"
        b"X-Client-Cert-Subject: CN=mallory\r\n\r\n"
    )
    request = server.next_event()
    assert isinstance(request, Request) and request.facts is not None
    assert request.facts.droppable
    verified = ClientCertificate(
        verified_by="lab-*", headers=((b"client-cert", b":YWxpY2U=:"),
                                      (b"x-client-cert-subject", b"CN=alice")),
    )  # fmt: skip
    client = dataclasses.replace(CLIENT, certificate=verified)
    out = request_headers_for_app(
        request.headers, host=HOST, client=client, request_id="rid-1", websocket=False,
        facts=request.facts,
    )  # fmt: skip
    assert out == [(b"host", b"a"), *FORWARDING[:-1], *verified.headers, FORWARDING[-1]]


def test_a_trusted_proxy_keeps_the_connections_client_certificate() -> None:
    verified = ClientCertificate(verified_by="lab-*", headers=((b"client-cert", b":YQ==:"),))
    peer = ClientInfo("10.0.0.1", 4000, "https", verified)
    client = TrustedProxies(["10.0.0.0/8"]).client_of([(b"x-forwarded-for", b"198.51.100.1")], peer)
    assert client == ClientInfo("198.51.100.1", 0, "https", verified)
