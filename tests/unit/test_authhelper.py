"""The auth helper's pure rules: sealed cookies and the gate."""

from __future__ import annotations

import pytest

from authhelper._gate import (
    Action,
    action_for,
    app_request_headers,
    app_response_headers,
    safe_return_path,
)
from authhelper._session import (
    LOGIN_COOKIE,
    SESSION_COOKIE,
    CookieSealer,
    LoginState,
    cookie_header,
    new_cookie_key,
    read_cookies,
    without_cookies,
)

KEY = new_cookie_key()


def sealer(instance: str = "inst-a", keys: list[str] | None = None) -> CookieSealer:
    return CookieSealer(keys or [KEY], instance, session_lifetime_s=3600)


def test_session_round_trip_and_expiry() -> None:
    token = sealer().seal_session("alice", now=1_000_000)
    opened = sealer().open_session(token, now=1_000_100)
    assert opened is not None
    assert (opened.user, opened.instance, opened.issued_at) == ("alice", "inst-a", 1_000_000)
    assert sealer().open_session(token, now=1_000_000 + 3601) is None


def test_session_for_another_instance_or_key_is_refused() -> None:
    token = sealer("inst-a").seal_session("alice")
    assert sealer("inst-b").open_session(token) is None  # same key, other instance
    assert sealer(keys=[new_cookie_key()]).open_session(token) is None


@pytest.mark.parametrize("token", [None, "", "garbage", "gAAAAA" + "x" * 80])
def test_garbage_cookies_count_as_absent(token: str | None) -> None:
    assert sealer().open_session(token) is None
    assert sealer().open_login(token) is None


def test_tampered_session_is_refused() -> None:
    token = sealer().seal_session("alice")
    flipped = token[:-5] + ("A" if token[-5] != "A" else "B") + token[-4:]
    assert sealer().open_session(flipped) is None


def test_key_rotation_keeps_old_sessions_valid() -> None:
    old = sealer(keys=[KEY]).seal_session("alice")
    rotated = sealer(keys=[new_cookie_key(), KEY])
    opened = rotated.open_session(old)
    assert opened is not None
    assert opened.user == "alice"


def test_login_state_round_trip_is_bound_to_the_instance() -> None:
    login = LoginState("st", "verifier", "nonce", "/lab?x=1", "inst-a")
    token = sealer().seal_login(login)
    assert sealer().open_login(token) == login
    assert sealer("inst-b").open_login(token) is None


def test_cookie_attributes_are_host_only_and_strict() -> None:
    header = cookie_header(SESSION_COOKIE, "v", max_age=60).decode()
    assert header.startswith("__Host-hostmux-session=v;")
    for attribute in ("Path=/", "Secure", "HttpOnly", "SameSite=Lax", "Max-Age=60"):
        assert attribute in header
    assert "Domain" not in header


@pytest.mark.parametrize(
    ("path", "has_session", "action"),
    [
        ("/_hostmux/health", False, Action.HEALTH),
        ("/_hostmux/callback", False, Action.CALLBACK),
        ("/_hostmux/logout", True, Action.LOGOUT),
        ("/", True, Action.PASS),
        ("/", False, Action.LOGIN),
        ("/_hostmux/other", False, Action.LOGIN),
    ],
)
def test_actions(path: str, has_session: bool, action: Action) -> None:
    assert action_for(path, has_session=has_session) is action


@pytest.mark.parametrize(
    ("target", "safe"),
    [
        ("/lab?x=1", "/lab?x=1"),
        ("//evil.example/", "/"),
        ("/\\evil.example", "/"),
        ("https://evil.example/", "/"),
        ("/a b", "/"),
        ("/" + "a" * 3000, "/"),
        ("", "/"),
    ],
)
def test_return_paths_stay_on_this_host(target: str, safe: str) -> None:
    assert safe_return_path(target) == safe


def test_app_request_headers_drop_our_cookies_and_spoofed_user() -> None:
    headers = [
        (b"host", b"inst-a.localhost"),
        (b"cookie", f"{SESSION_COOKIE}=sealed; theme=dark; {LOGIN_COOKIE}=x".encode()),
        (b"x-hostmux-user", b"mallory"),
        (b"x_hostmux_user", b"mallory"),
        (b"x-forwarded-for", b"203.0.113.9"),
        (b"connection", b"keep-alive"),
    ]
    out = app_request_headers(headers, user="alice", websocket=False)
    assert out == [
        (b"host", b"inst-a.localhost"),
        (b"cookie", b"theme=dark"),
        (b"x-forwarded-for", b"203.0.113.9"),  # set by the router: trusted here
        (b"x-hostmux-user", b"alice"),
    ]


def test_app_request_headers_without_other_cookies_drop_the_header() -> None:
    out = app_request_headers(
        [(b"cookie", f"{SESSION_COOKIE}=s".encode())], user="bob", websocket=True
    )
    assert out == [
        (b"connection", b"upgrade"),
        (b"upgrade", b"websocket"),
        (b"x-hostmux-user", b"bob"),
    ]


def test_app_cannot_set_the_helpers_cookies() -> None:
    headers = [
        (b"set-cookie", f"{SESSION_COOKIE}=forged; Path=/".encode()),
        (b"set-cookie", b"theme=dark"),
        (b"set-cookie", f" {LOGIN_COOKIE}=x".encode()),
    ]
    assert app_response_headers(headers) == [(b"set-cookie", b"theme=dark")]


def test_read_cookies_and_without_cookies() -> None:
    headers = [(b"cookie", b"a=1; b=2"), (b"cookie", b"a=3; c=4")]
    assert read_cookies(headers) == {"a": "1", "b": "2", "c": "4"}
    assert without_cookies(b"a=1; b=2; c=3", frozenset({"b"})) == b"a=1; c=3"
