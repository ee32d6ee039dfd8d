"""The auth helper's pure rules: sealed cookies and the gate."""

from __future__ import annotations

import pytest

from authhelper._gate import (
    Action,
    action_for,
    app_request_headers,
    app_response_headers,
    origin_of,
    redirect_uri_for,
    safe_return_path,
    same_origin_request,
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
    token, made = sealer().seal_session("alice", grant="g-1", now=1_000_000)
    opened = sealer().open_session(token, now=1_000_100)
    assert opened == made
    assert (opened.user, opened.instance, opened.issued_at) == ("alice", "inst-a", 1_000_000)
    assert (opened.grant, len(opened.sid)) == ("g-1", 22)
    assert sealer().seal_session("alice")[1].sid != made.sid  # every login: a new id
    assert sealer().open_session(token, now=1_000_000 + 3601) is None


def test_session_for_another_instance_or_key_is_refused() -> None:
    token, _ = sealer("inst-a").seal_session("alice")
    assert sealer("inst-b").open_session(token) is None  # same key, other instance
    assert sealer(keys=[new_cookie_key()]).open_session(token) is None


@pytest.mark.parametrize("token", [None, "", "garbage", "gAAAAA" + "x" * 80])
def test_garbage_cookies_count_as_absent(token: str | None) -> None:
    assert sealer().open_session(token) is None
    assert sealer().open_login(token) is None


def test_tampered_session_is_refused() -> None:
    token, _ = sealer().seal_session("alice")
    flipped = token[:-5] + ("A" if token[-5] != "A" else "B") + token[-4:]
    assert sealer().open_session(flipped) is None


def test_key_rotation_keeps_old_sessions_valid() -> None:
    old, _ = sealer(keys=[KEY]).seal_session("alice")
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
        ("/_hostmux/revoke", False, Action.REVOKE),
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
    assert read_cookies(headers) == {"a": ["1", "3"], "b": ["2"], "c": ["4"]}
    assert without_cookies(b"a=1; b=2; c=3", frozenset({"b"})) == b"a=1; c=3"


@pytest.mark.parametrize(
    "planted",
    [
        "sib=a b",  # a space in the value: SimpleCookie stopped at it
        'sib="unterminated',
        "sib=a,b",
        "no-equals-sign",
        "=empty-name",
        "sib=\\x",
        "sib=a\x01b",
        ";;",
    ],
)
def test_a_malformed_sibling_cookie_does_not_hide_ours(planted: str) -> None:
    """Issue 15, point 2: a cookie another instance's app planted for the parent domain."""
    token, session = sealer().seal_session("alice")
    for header in (f"{planted}; {SESSION_COOKIE}={token}", f"{SESSION_COOKIE}={token}; {planted}"):
        found = read_cookies([(b"cookie", header.encode("latin-1"))])
        assert found[SESSION_COOKIE] == [token], header
        assert sealer().first_session(found[SESSION_COOKIE]) == session


def test_a_planted_copy_of_our_cookie_name_does_not_shadow_the_real_one() -> None:
    token, session = sealer().seal_session("alice")
    found = read_cookies(
        [(b"cookie", f"{SESSION_COOKIE}=planted; {SESSION_COOKIE}={token}".encode())]
    )
    assert sealer().first_session(found[SESSION_COOKIE]) == session


def test_logout_token_is_bound_to_the_session() -> None:
    _, one = sealer().seal_session("alice")
    _, other = sealer().seal_session("alice")
    assert one.logout_token_ok(one.logout_token())
    assert not one.logout_token_ok(other.logout_token())
    assert not one.logout_token_ok(None)
    assert not one.logout_token_ok("")


def test_origin_and_redirect_uri_come_from_the_public_url() -> None:
    assert origin_of("https://i-1.tunnels.example:443") == "https://i-1.tunnels.example"
    assert origin_of("https://I-1.Tunnels.example:8443/") == "https://i-1.tunnels.example:8443"
    assert origin_of("http://i-1.localhost:80") == "http://i-1.localhost"
    assert (
        redirect_uri_for("https://i-1.t.example:443") == "https://i-1.t.example/_hostmux/callback"
    )


@pytest.mark.parametrize(
    ("headers", "ok"),
    [
        ([(b"sec-fetch-site", b"same-origin"), (b"origin", b"https://i.t")], True),
        ([(b"origin", b"https://i.t")], True),
        ([(b"sec-fetch-site", b"same-origin")], True),
        ([], False),
        ([(b"sec-fetch-site", b"same-site"), (b"origin", b"https://i.t")], False),
        ([(b"sec-fetch-site", b"cross-site")], False),
        ([(b"origin", b"https://sibling.t")], False),
        ([(b"origin", b"null")], False),
        ([(b"sec-fetch-site", b"same-origin"), (b"origin", b"https://evil.example")], False),
    ],
)
def test_logout_posts_must_be_same_origin(headers: list[tuple[bytes, bytes]], ok: bool) -> None:
    assert same_origin_request(headers, "https://i.t") is ok
