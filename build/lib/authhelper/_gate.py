"""What the auth helper does with a request (pure): pass it, or log the browser in.

Rules, in order:

1. ``/_hostmux/health`` answers the pod's health checks without a session.
2. ``/_hostmux/callback`` is the OAuth2 redirect target; ``/_hostmux/logout``
   clears the session.
3. A request with a valid session cookie for this instance goes to the app —
   without the helper's cookies, with the user's name in ``X-Hostmux-User``
   (any client-sent copy, in any spelling, is dropped first).
4. Anything else starts a login: redirect to the portal; afterwards the
   browser comes back to the same path on the same host — never elsewhere.
5. The app's responses may not set the helper's cookies.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

from router._headers import Headers, drop_hop_by_hop

from ._session import LOGIN_COOKIE, SESSION_COOKIE, without_cookies

HEALTH_PATH = "/_hostmux/health"
CALLBACK_PATH = "/_hostmux/callback"
LOGOUT_PATH = "/_hostmux/logout"

USER_HEADER = b"x-hostmux-user"
_OUR_COOKIES = frozenset({SESSION_COOKIE, LOGIN_COOKIE})


class Action(enum.Enum):
    HEALTH = "health"
    CALLBACK = "callback"
    LOGOUT = "logout"
    PASS = "pass"
    LOGIN = "login"


def action_for(path: str, *, has_session: bool) -> Action:
    if path == HEALTH_PATH:
        return Action.HEALTH
    if path == CALLBACK_PATH:
        return Action.CALLBACK
    if path == LOGOUT_PATH:
        return Action.LOGOUT
    return Action.PASS if has_session else Action.LOGIN


def split_target(target: str) -> tuple[str, str]:
    """(path, query) of an origin-form request target."""
    path, _, query = target.partition("?")
    return path, query


def safe_return_path(target: str) -> str:
    """``target`` if it is a path on this host, else ``/`` (no open redirects)."""
    if (
        not target.startswith("/")
        or target.startswith(("//", "/\\"))
        or any(ord(c) < 0x21 or c == "\\" for c in target)
        or len(target) > 2048
    ):
        return "/"
    return target


def app_request_headers(
    headers: Sequence[tuple[bytes, bytes]], *, user: str, websocket: bool
) -> Headers:
    """What the app receives: no hop-by-hop, none of our cookies, our user header."""
    out: Headers = []
    for name, value in drop_hop_by_hop(headers, frozenset({USER_HEADER})):
        if name == b"cookie":
            value = without_cookies(value, _OUR_COOKIES)
            if not value:
                continue
        out.append((name, value))
    if websocket:
        out += [(b"connection", b"upgrade"), (b"upgrade", b"websocket")]
    out.append((USER_HEADER, user.encode()))
    return out


def app_response_headers(headers: Headers) -> Headers:
    """The app's response headers minus any ``Set-Cookie`` for the helper's cookies."""
    return [
        (name, value)
        for name, value in headers
        if not (name == b"set-cookie" and _cookie_name(value) in _OUR_COOKIES)
    ]


def _cookie_name(set_cookie: bytes) -> str:
    return set_cookie.split(b"=", 1)[0].strip().decode("latin-1")
