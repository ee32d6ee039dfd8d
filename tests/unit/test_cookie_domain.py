"""The router keeps apps' cookies host-only: ``Domain`` leaves every ``Set-Cookie``."""

from __future__ import annotations

import pytest

from hostmux.http1 import host_only_cookies, without_cookie_domain
from hostmux.http1.events import checked_headers


@pytest.mark.parametrize(
    ("app_sent", "browser_gets"),
    [
        (b"a=1; Domain=.tunnels.example; Path=/", b"a=1; Path=/"),
        (b"a=1; domain=tunnels.example", b"a=1"),
        (b"a=1;DOMAIN = tunnels.example ;Secure", b"a=1;Secure"),
        (b"a=1; Path=/; Domain=x; Domain=y; HttpOnly", b"a=1; Path=/; HttpOnly"),
        (b"a=1; Domain", b"a=1"),
        # No Domain: the exact bytes go through.
        (b"a=1; Path=/; Secure", b"a=1; Path=/; Secure"),
        (b"domain=1; Path=/", b"domain=1; Path=/"),  # a cookie *named* domain stays
        (b"a=b c; Max-Age=5", b"a=b c; Max-Age=5"),
        # What a removed last attribute leaves is no header value's end: trimmed.
        (b"a=1 ; Domain=x", b"a=1"),
        (b"a=1; Path=/\t;Domain=x", b"a=1; Path=/"),
    ],
)
def test_domain_attribute_is_removed(app_sent: bytes, browser_gets: bytes) -> None:
    assert without_cookie_domain(app_sent) == browser_gets


def test_only_set_cookie_headers_change() -> None:
    headers = [
        (b"content-type", b"text/html; domain=x"),
        (b"set-cookie", b"sib=a b; Domain=tunnels.example"),
        (b"set-cookie", b"ok=1"),
    ]
    assert host_only_cookies(headers) == [
        (b"content-type", b"text/html; domain=x"),
        (b"set-cookie", b"sib=a b"),
        (b"set-cookie", b"ok=1"),
    ]


def test_what_comes_out_of_checked_values_passes_the_header_check() -> None:
    # The router skips the second check of this filter's output
    # (``Destination.response_headers_checked``): it must never need one.
    for value in (b"a=1 ; Domain=x", b"a=1;\tDomain=x", b"a=1; Path=/ ; domain=y ; Secure"):
        headers = [(b"set-cookie", value)]
        checked_headers(headers)  # the app's value: valid
        assert checked_headers(host_only_cookies(headers)) == host_only_cookies(headers)
