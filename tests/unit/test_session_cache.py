"""The helper's cache of opened session cookies: as strict as opening each (``_session_cache``)."""

from __future__ import annotations

from authhelper._gate import OUR_COOKIES, app_request_headers
from authhelper._session import LOGIN_COOKIE, SESSION_COOKIE, CookieSealer, new_cookie_key
from authhelper._session_cache import MAX_HEADER_BYTES, SessionCache

KEY = new_cookie_key()
LIFETIME_S = 3600
T0 = 1_000_000


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make(clock: Clock, *, max_entries: int = 16, instance: str = "inst-a") -> SessionCache:
    sealer = CookieSealer([KEY], instance, session_lifetime_s=LIFETIME_S)
    return SessionCache(sealer, OUR_COOKIES, clock=clock, max_entries=max_entries)


def seal(user: str = "alice", *, now: int = T0, instance: str = "inst-a") -> str:
    sealer = CookieSealer([KEY], instance, session_lifetime_s=LIFETIME_S)
    return sealer.seal_session(user, now=now)[0]


def cookie(value: str) -> list[tuple[bytes, bytes]]:
    return [(b"host", b"x"), (b"cookie", value.encode())]


def test_an_opened_header_is_remembered_and_gives_the_app_cookie() -> None:
    clock = Clock(T0 + 10)
    cache = make(clock)
    headers = cookie(f"theme=dark; {SESSION_COOKIE}={seal()}; {LOGIN_COOKIE}=x; b=2")
    first = cache.opened(headers)
    assert first is not None and first.session.user == "alice"
    assert first.app_cookie == b"theme=dark; b=2"
    assert first.until == T0 + LIFETIME_S
    assert cache.opened(headers) is first  # remembered: no second opening
    assert len(cache) == 1


def test_an_entry_ends_exactly_when_the_cookie_would_stop_opening() -> None:
    clock = Clock(T0)
    cache = make(clock)
    token = seal()
    headers = cookie(f"{SESSION_COOKIE}={token}")
    assert cache.opened(headers) is not None
    clock.now = T0 + LIFETIME_S  # Fernet's last second: still opens
    assert cache.opened(headers) is not None
    sealer = CookieSealer([KEY], "inst-a", session_lifetime_s=LIFETIME_S)
    assert sealer.open_session(token, now=T0 + LIFETIME_S + 1) is None
    clock.now = T0 + LIFETIME_S + 1  # ... and neither does the cache
    assert cache.opened(headers) is None
    assert len(cache) == 0


def test_bad_cookies_are_not_remembered() -> None:
    cache = make(Clock(T0))
    token = seal()
    tampered = token[:-5] + ("A" if token[-5] != "A" else "B") + token[-4:]
    for value in ("", "a=b", f"{SESSION_COOKIE}=garbage", f"{SESSION_COOKIE}={tampered}"):
        assert cache.opened(cookie(value)) is None
    other = seal(instance="inst-b")  # sealed with the same key for another instance
    assert cache.opened(cookie(f"{SESSION_COOKIE}={other}")) is None
    assert len(cache) == 0


def test_the_first_session_that_opens_wins_as_on_the_full_path() -> None:
    cache = make(Clock(T0 + 1))
    bob = seal("bob")
    headers = cookie(f"{SESSION_COOKIE}=planted; {SESSION_COOKIE}={bob}; {SESSION_COOKIE}={seal()}")
    found = cache.opened(headers)
    assert found is not None and found.session.user == "bob"


def test_two_cookie_lines_or_a_long_header_take_the_full_path() -> None:
    cache = make(Clock(T0))
    token = seal()
    two = [(b"cookie", f"{SESSION_COOKIE}={token}".encode()), (b"cookie", b"a=b")]
    assert cache.opened(two) is None
    long = cookie(f"{SESSION_COOKIE}={token}; pad={'x' * MAX_HEADER_BYTES}")
    assert cache.opened(long) is None
    assert cache.opened([(b"host", b"x")]) is None
    assert len(cache) == 0


def test_the_cache_is_bounded_oldest_first() -> None:
    cache = make(Clock(T0), max_entries=3)
    headers = [cookie(f"{SESSION_COOKIE}={seal(f'u{i}')}") for i in range(4)]
    opened = [cache.opened(h) for h in headers]
    assert len(cache) == 3
    assert cache.opened(headers[3]) is opened[3]  # still there
    again = cache.opened(headers[0])  # the oldest was dropped: opened afresh
    first = opened[0]
    assert again is not None and first is not None
    assert again is not first and again.session == first.session


def test_app_headers_with_a_known_app_cookie_match_the_full_path() -> None:
    raw = [
        (b"host", b"x"),
        (b"cookie", f"a=1; {SESSION_COOKIE}=s".encode()),
        (b"x-hostmux-user", b"eve"),
    ]
    full = app_request_headers(raw, user="alice", websocket=False)
    known = app_request_headers(raw, user="alice", websocket=False, app_cookie=b"a=1")
    assert known == full == [(b"host", b"x"), (b"cookie", b"a=1"), (b"x-hostmux-user", b"alice")]
    only_ours = app_request_headers(raw, user="alice", websocket=False, app_cookie=b"")
    assert only_ours == [(b"host", b"x"), (b"x-hostmux-user", b"alice")]
