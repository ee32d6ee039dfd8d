"""Session and login-state cookies: sealed (encrypted + authenticated), expiring (pure).

Sealing is Fernet (AES-128-CBC + HMAC-SHA256 with a timestamp) from
``cryptography``; ``MultiFernet`` gives key rotation: the first key seals,
every key opens, so a new key can be put first while old cookies stay valid
until they expire. A cookie sealed for one instance names that instance
inside and is refused by every other (each instance has its own keys too).

The rules:

1. Cookies are ``__Host-`` prefixed, ``Secure; HttpOnly; Path=/;
   SameSite=Lax`` and have no ``Domain``: host-only, so instance A's cookie
   is never sent to instance B (sibling subdomains).
2. A cookie that does not open, has expired, or names another instance
   counts as absent — never as an error shown to the user.
3. The ``Cookie`` header is read the way browsers write it (RFC 6265bis
   5.7.4 / 4.2.1): pairs split on ``;``, anything malformed skipped, every
   value of a repeated name kept. A sibling instance's app that plants an odd
   cookie for the parent domain (a space, a quote, no ``=``) cannot hide ours;
   ``http.cookies.SimpleCookie`` stops at the first such pair, so it is not used.
4. Every session has a random id (``sid``) that can be revoked, and carries
   the portal grant the helper re-checks access with (``_access``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

SESSION_COOKIE = "__Host-hostmux-session"
LOGIN_COOKIE = "__Host-hostmux-login"

# The login round trip (portal login page, maybe a password manager) must fit.
LOGIN_STATE_LIFETIME_S = 600


def new_cookie_key() -> str:
    return Fernet.generate_key().decode()


# A session id: 128 random bits, unguessable and unique without coordination.
_SID_BYTES = 16


@dataclass(frozen=True, slots=True)
class Session:
    user: str
    instance: str
    issued_at: int
    sid: str  # what logout and the portal's revocations name
    grant: str  # the portal's access token for this login: re-checks ask with it

    def logout_token(self) -> str:
        """The CSRF token of this session's logout form (RFC 2104 HMAC keyed by the sid).

        The sid never leaves the sealed cookie, so nobody without the cookie can
        compute it, and it names only this session.
        """
        mac = hmac.new(self.sid.encode(), b"hostmux-logout", hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()

    def logout_token_ok(self, token: str | None) -> bool:
        return token is not None and hmac.compare_digest(token, self.logout_token())


@dataclass(frozen=True, slots=True)
class LoginState:
    """What the callback must find again: binds the OAuth ``state`` to this browser."""

    state: str
    code_verifier: str
    nonce: str
    return_path: str
    instance: str


class CookieSealer:
    """Seals and opens the helper's cookies for one instance."""

    def __init__(self, keys: Sequence[str], instance: str, *, session_lifetime_s: int) -> None:
        if not keys:
            raise ValueError("at least one cookie key is needed")
        try:
            self._fernet = MultiFernet([Fernet(key.encode()) for key in keys])
        except (ValueError, TypeError):
            raise ValueError("cookie keys must be Fernet keys (32 url-safe base64 bytes)") from None
        self._instance = instance
        self.session_lifetime_s = session_lifetime_s

    def __repr__(self) -> str:
        return f"<CookieSealer instance={self._instance}>"

    def seal_session(
        self, user: str, *, grant: str = "", now: int | None = None
    ) -> tuple[str, Session]:
        """A new session for ``user`` (fresh sid), sealed, and the session itself."""
        now = int(time.time()) if now is None else now
        sid = secrets.token_urlsafe(_SID_BYTES)
        body: dict[str, object] = {"u": user, "i": self._instance, "t": now, "s": sid, "g": grant}
        session = Session(user=user, instance=self._instance, issued_at=now, sid=sid, grant=grant)
        return self._seal(body, now), session

    def open_session(self, token: str | None, *, now: int | None = None) -> Session | None:
        body = self._open(token, self.session_lifetime_s, now)
        if body is None or body.get("i") != self._instance:
            return None
        user, issued, sid, grant = body.get("u"), body.get("t"), body.get("s"), body.get("g")
        # A cookie from before sessions had ids cannot be revoked: it counts as absent.
        if not (isinstance(user, str) and isinstance(issued, int) and isinstance(sid, str)):
            return None
        return Session(user=user, instance=self._instance, issued_at=issued, sid=sid,
                       grant=grant if isinstance(grant, str) else "")  # fmt: skip

    def session_expiry(self, token: str) -> int | None:
        """The last unix second at which ``token`` (a session cookie) still opens, or None.

        Fernet refuses a token once its timestamp + the lifetime has passed.
        """
        try:
            return self._fernet.extract_timestamp(token.encode()) + self.session_lifetime_s
        except (InvalidToken, UnicodeError):
            return None

    def first_session(self, tokens: Sequence[str], *, now: int | None = None) -> Session | None:
        """The first of ``tokens`` (every value the browser sent) that opens."""
        for token in tokens:
            if (session := self.open_session(token, now=now)) is not None:
                return session
        return None

    def first_login(self, tokens: Sequence[str], *, now: int | None = None) -> LoginState | None:
        for token in tokens:
            if (login := self.open_login(token, now=now)) is not None:
                return login
        return None

    def seal_login(self, login: LoginState, *, now: int | None = None) -> str:
        now = int(time.time()) if now is None else now
        body: dict[str, object] = {"s": login.state, "v": login.code_verifier, "n": login.nonce,
                "r": login.return_path, "i": login.instance}  # fmt: skip
        return self._seal(body, now)

    def open_login(self, token: str | None, *, now: int | None = None) -> LoginState | None:
        body = self._open(token, LOGIN_STATE_LIFETIME_S, now)
        if body is None or body.get("i") != self._instance:
            return None
        try:
            return LoginState(state=str(body["s"]), code_verifier=str(body["v"]),
                              nonce=str(body["n"]), return_path=str(body["r"]),
                              instance=self._instance)  # fmt: skip
        except KeyError:
            return None

    def _seal(self, body: dict[str, object], now: int) -> str:
        data = json.dumps(body, separators=(",", ":")).encode()
        return self._fernet.encrypt_at_time(data, now).decode()

    def _open(self, token: str | None, ttl: int, now: int | None) -> dict[str, object] | None:
        if not token:
            return None
        now = int(time.time()) if now is None else now
        try:
            data = self._fernet.decrypt_at_time(token.encode(), ttl, now)
            body = json.loads(data)
        except (InvalidToken, ValueError, UnicodeError):
            return None
        return body if isinstance(body, dict) else None


def cookie_header(name: str, value: str, *, max_age: int) -> bytes:
    """A ``Set-Cookie`` value with the helper's fixed attributes."""
    return (f"{name}={value}; Max-Age={max_age}; Path=/; Secure; HttpOnly; SameSite=Lax").encode()


def clear_cookie_header(name: str) -> bytes:
    return f"{name}=; Max-Age=0; Path=/; Secure; HttpOnly; SameSite=Lax".encode()


def read_cookies(headers: Sequence[tuple[bytes, bytes]]) -> dict[str, list[str]]:
    """Cookie name → every value sent for it, in order, from every ``Cookie`` header.

    As a browser writes the header (RFC 6265bis 4.2.1, 5.7.4): ``name=value``
    pairs separated by ``;``. A pair without ``=`` or with an empty name is
    skipped; spaces, quotes, commas and other bytes a server should not have
    set stay inside their own pair and harm nothing else. Values are kept
    verbatim (no unquoting: ours never contain quotes).
    """
    found: dict[str, list[str]] = {}
    for name, value in headers:
        if name != b"cookie":
            continue
        for pair in value.decode("latin-1").split(";"):
            key, equals, cookie_value = pair.partition("=")
            key = key.strip(" \t")
            if equals and key:
                found.setdefault(key, []).append(cookie_value.strip(" \t"))
    return found


def without_cookies(value: bytes, names: frozenset[str]) -> bytes:
    """A ``Cookie`` header value minus the named cookies (the app never sees ours)."""
    kept = [
        part
        for part in value.split(b";")
        if part.strip() and part.split(b"=", 1)[0].strip().decode("latin-1") not in names
    ]
    return b";".join(kept).strip()
