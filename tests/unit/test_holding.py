"""The holding page and the per-address limit on the portal look-ups it costs."""

from __future__ import annotations

from hostmux.http1.pages import holding_page
from router.holding import MAX_TRACKED_IPS, LookupLimit


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_each_address_gets_its_own_bucket_refilled_evenly() -> None:
    clock = Clock()
    limit = LookupLimit(6, clock=clock)
    assert [limit.allow("10.0.0.1") for _ in range(8)] == [True] * 6 + [False] * 2
    assert limit.allow("10.0.0.2")  # another address is not charged for the first
    clock.now += 10  # 6 per minute: one token every 10 s
    assert limit.allow("10.0.0.1")
    assert not limit.allow("10.0.0.1")
    clock.now += 3600  # refills up to the bucket's size, no more
    assert [limit.allow("10.0.0.1") for _ in range(7)] == [True] * 6 + [False]


def test_zero_allows_no_look_up_and_the_addresses_kept_are_bounded() -> None:
    assert not LookupLimit(0).allow("10.0.0.1")
    limit = LookupLimit(1)
    for n in range(MAX_TRACKED_IPS + 50):
        assert limit.allow(f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}")
    assert len(limit._buckets) == MAX_TRACKED_IPS


def test_the_holding_page_reloads_itself_and_escapes_the_name() -> None:
    page = holding_page("a<b", retry_after_s=5, request_id="r1", as_html=True)
    headers = dict(page.headers)
    assert page.status == 503
    assert headers[b"retry-after"] == b"5"
    assert headers[b"cache-control"] == b"no-store"
    assert headers[b"content-security-policy"].startswith(b"default-src 'none'")
    assert b'<meta http-equiv=refresh content="5">' in page.body
    assert b"a&lt;b" in page.body and b"a<b" not in page.body
    assert b"<script" not in page.body
    assert int(headers[b"content-length"]) == len(page.body)
    plain = holding_page("demo", retry_after_s=5, as_html=False)
    assert plain.body == b"503 Starting: demo is starting; retry in 5 s\n"
    assert dict(plain.headers)[b"retry-after"] == b"5"
