"""Sessions already opened, by ``Cookie`` header: the cookie's Fernet work once, not per request.

Opening the sealed session cookie (HMAC-SHA256, AES-CBC, JSON) was the helper's
biggest own cost per request (py-spy: 14% of its busy time, more than parsing
the request). A browser sends the same ``Cookie`` header with every request of
a session, and what that header opens to cannot change until its cookie
expires: the same keys open the same bytes to the same session. So the answer
is remembered per header value. The rules:

1. Only a header with exactly one ``Cookie`` line whose session opened is
   remembered; anything else takes the full path every time, as before (so a
   stream of bad cookies costs their checks and cannot fill this cache).
2. An entry is used only up to its cookie's expiry — the last second at which
   Fernet itself would still open it (the token's timestamp + the session
   lifetime); after that it is dropped and the header is read afresh.
3. What may change while a cookie is valid is not remembered: revocations and
   the access re-check are asked for every request, as before. What the
   gateway makes of an entry (its ``Destination``: the user, the app's cookie)
   is kept with it, as it follows from the entry alone.
4. Bounded: at most ``MAX_ENTRIES`` headers of at most ``MAX_HEADER_BYTES``
   each; when full, the oldest entry goes first.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from hostmux.relay import Destination

from ._session import SESSION_COOKIE, CookieSealer, Session, read_cookies, without_cookies

# Browsers behind one helper: an instance's users, a few tabs and devices each.
MAX_ENTRIES = 1024
# A Cookie header longer than this (app cookies) is read afresh each time: bounds the memory.
MAX_HEADER_BYTES = 8 * 1024


@dataclass(slots=True)
class OpenedHeader:
    """What one ``Cookie`` header value opened to."""

    session: Session
    until: int  # unix seconds: usable while now <= until (Fernet's own expiry rule)
    app_cookie: bytes  # the header less the helper's cookies: what the app gets (b"": none)
    # Where its requests go, made by the gateway on first use (rule 3).
    destination: Destination | None = None


class SessionCache:
    """Cookie header value → the session it opened (rules in the module docstring)."""

    def __init__(
        self,
        sealer: CookieSealer,
        our_cookies: frozenset[str],
        *,
        clock: Callable[[], float] = time.time,
        max_entries: int = MAX_ENTRIES,
    ) -> None:
        self._sealer = sealer
        self._our_cookies = our_cookies
        self._clock = clock
        self._max_entries = max_entries
        self._entries: dict[bytes, OpenedHeader] = {}

    def __repr__(self) -> str:
        return f"<SessionCache entries={len(self._entries)}>"

    def __len__(self) -> int:
        return len(self._entries)

    def opened(self, headers: Sequence[tuple[bytes, bytes]]) -> OpenedHeader | None:
        """The session of the request's one ``Cookie`` header, or None: take the full path."""
        value: bytes | None = None
        for name, field_value in headers:
            if name == b"cookie":
                if value is not None:
                    return None  # several Cookie lines: not remembered (rule 1)
                value = field_value
        if value is None or len(value) > MAX_HEADER_BYTES:
            return None
        key = bytes(value)
        now = int(self._clock())
        entry = self._entries.get(key)
        if entry is not None:
            if now <= entry.until:
                return entry
            del self._entries[key]  # expired (rule 2): read afresh, as Fernet would refuse it
        entry = self._open(key, now)
        if entry is not None:
            if len(self._entries) >= self._max_entries:
                del self._entries[next(iter(self._entries))]  # the oldest (rule 4)
            self._entries[key] = entry
        return entry

    def _open(self, value: bytes, now: int) -> OpenedHeader | None:
        tokens = read_cookies([(b"cookie", value)]).get(SESSION_COOKIE, [])
        for token in tokens:
            session = self._sealer.open_session(token, now=now)
            if session is not None:
                until = self._sealer.session_expiry(token)
                if until is None or now > until:
                    return None
                app_cookie = without_cookies(value, self._our_cookies)
                return OpenedHeader(session, until, app_cookie)
        return None
