"""What the auth helper does with a request (pure): pass it, or log the browser in.

Rules, in order:

1. ``/_hostmux/health`` answers the pod's health checks without a session.
2. ``/_hostmux/callback`` is the OAuth2 redirect target. ``/_hostmux/logout``:
   a GET shows a confirmation page whose form POSTs back with the session's
   logout token; the POST must be same-origin (``Sec-Fetch-Site``/``Origin``)
   and carry that token, then the session is revoked. ``/_hostmux/revoke`` takes
   the portal's signed revocations (``_revoke``).
3. A request with a valid, unrevoked session cookie for this instance goes to
   the app (after a re-check with the portal when one is due, ``_access``) —
   without the helper's cookies, with the user's name in ``X-Hostmux-User``
   (any client-sent copy, in any spelling, is dropped first).
4. Anything else starts a login: redirect to the portal; afterwards the
   browser comes back to the same path on the same host — never elsewhere.
5. The app's responses may not set the helper's cookies.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from urllib.parse import urlsplit

from hostmux.http1 import Headers, drop_hop_by_hop

from ._session import LOGIN_COOKIE, SESSION_COOKIE, without_cookies

HEALTH_PATH = "/_hostmux/health"
CALLBACK_PATH = "/_hostmux/callback"
LOGOUT_PATH = "/_hostmux/logout"
REVOKE_PATH = "/_hostmux/revoke"

USER_HEADER = b"x-hostmux-user"
OUR_COOKIES = frozenset({SESSION_COOKIE, LOGIN_COOKIE})


_DROPPED = frozenset({USER_HEADER})  # a client-sent copy of ours, in any spelling


class Action(enum.Enum):
    HEALTH = "health"
    CALLBACK = "callback"
    LOGOUT = "logout"
    REVOKE = "revoke"
    PASS = "pass"
    LOGIN = "login"


def action_for(path: str, *, has_session: bool) -> Action:
    if path == HEALTH_PATH:
        return Action.HEALTH
    if path == CALLBACK_PATH:
        return Action.CALLBACK
    if path == LOGOUT_PATH:
        return Action.LOGOUT
    if path == REVOKE_PATH:
        return Action.REVOKE
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


def origin_of(url: str) -> str:
    """The origin (RFC 6454) of an http(s) URL: scheme://host[:port], the default port
    omitted and the host lower-cased, as browsers write it in ``Origin``."""
    parts = urlsplit(url)
    port = parts.port
    default = {"https": 443, "http": 80}.get(parts.scheme)
    netloc = (parts.hostname or "").lower()
    if ":" in netloc:
        netloc = f"[{netloc}]"
    if port is not None and port != default:
        netloc += f":{port}"
    return f"{parts.scheme}://{netloc}"


def redirect_uri_for(public_url: str) -> str:
    """The one redirect URI of an instance: its published URL's origin + the callback path."""
    return origin_of(public_url) + CALLBACK_PATH


def same_origin_request(headers: Sequence[tuple[bytes, bytes]], origin: str) -> bool:
    """Whether a state-changing request comes from a page of ``origin`` itself.

    ``Sec-Fetch-Site`` (every current browser sends it) must be ``same-origin``
    when present; ``Origin`` (sent with every POST) must equal ``origin`` when
    present; at least one of them must be there.
    """
    site = [v for n, v in headers if n == b"sec-fetch-site"]
    sent_origin = [v for n, v in headers if n == b"origin"]
    if not site and not sent_origin:
        return False
    if site and site != [b"same-origin"]:
        return False
    return not sent_origin or sent_origin == [origin.encode("latin-1")]


def app_request_headers(
    headers: Sequence[tuple[bytes, bytes]],
    *,
    user: str,
    websocket: bool,
    app_cookie: bytes | None = None,
) -> Headers:
    """What the app receives: no hop-by-hop, none of our cookies, our user header.

    ``app_cookie``: the value of the request's only ``Cookie`` header less ours,
    when known already (``_session_cache``); None: worked out here.
    """
    out: Headers = []
    for name, value in drop_hop_by_hop(headers, _DROPPED):
        if name == b"cookie":
            value = without_cookies(value, OUR_COOKIES) if app_cookie is None else app_cookie
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
        if not (name == b"set-cookie" and _cookie_name(value) in OUR_COOKIES)
    ]


def _cookie_name(set_cookie: bytes) -> str:
    return set_cookie.split(b"=", 1)[0].strip().decode("latin-1")
