"""The router's status pages (``hostmux.http1.pages``): exact bodies and headers."""

from __future__ import annotations

import pytest

from hostmux.http1 import Page, router_home_page, status_page, wants_html

STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:40em;margin:4em auto;padding:0 1em;"
    "color:#222}h1{font-size:1.4em}code{color:#555}"
)

ALL_STATUSES = [400, 403, 404, 405, 408, 414, 421, 431, 500, 502, 503, 504, 599]


def header_names(page: Page) -> list[bytes]:
    return [name for name, _ in page.headers]


def header(page: Page, name: bytes) -> bytes | None:
    values = [value for key, value in page.headers if key == name]
    assert len(values) <= 1, values
    return values[0] if values else None


# --- status_page: plain text -----------------------------------------------------------


def test_text_page_is_one_line_with_title_detail_and_request_id() -> None:
    page = status_page(502, "the tunnel 'myapp' is offline", request_id="abc123")
    body = b"502 Bad gateway: the tunnel 'myapp' is offline (request id abc123)\n"
    assert page == Page(
        status=502,
        headers=[
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-store"),
            (b"x-content-type-options", b"nosniff"),
            (b"x-hostmux-error", b"502"),
            (b"x-request-id", b"abc123"),
            (b"connection", b"close"),
        ],
        body=body,
    )


def test_text_page_without_request_id_has_no_request_id() -> None:
    page = status_page(400, "the request could not be parsed as HTTP/1.1")
    assert page.body == b"400 Bad request: the request could not be parsed as HTTP/1.1\n"
    assert header(page, b"x-request-id") is None


def test_unknown_status_is_titled_error() -> None:
    assert status_page(599, "odd").body == b"599 Error: odd\n"


def test_close_false_leaves_the_connection_open() -> None:
    page = status_page(404, "no such tunnel", close=False)
    assert header(page, b"connection") is None
    assert header_names(page) == [
        b"content-type",
        b"content-length",
        b"cache-control",
        b"x-content-type-options",
        b"x-hostmux-error",
    ]


# --- status_page: HTML --------------------------------------------------------------------


def test_html_page_is_exact() -> None:
    page = status_page(404, "no tunnel is named 'myapp'", request_id="r1", as_html=True)
    body = (
        "<!doctype html><html><head><meta charset=utf-8><title>404 No such tunnel</title>"
        f"<style>{STYLE}</style></head><body><h1>404 No such tunnel</h1>"
        "<p>no tunnel is named &#x27;myapp&#x27;</p>"
        "<p><small>request id <code>r1</code></small></p>"
        "<p><small>hostmux</small></p></body></html>\n"
    ).encode()
    assert page.body == body
    assert page.headers == [
        (b"content-type", b"text/html; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
        (b"x-content-type-options", b"nosniff"),
        (b"x-hostmux-error", b"404"),
        (b"x-request-id", b"r1"),
        (b"connection", b"close"),
    ]


def test_html_page_escapes_the_detail_and_the_request_id() -> None:
    page = status_page(
        404, 'no tunnel <script>alert("x")</script>&', request_id="<i>", as_html=True
    )
    assert b"<script>" not in page.body
    assert b"<i>" not in page.body
    assert b"<p>no tunnel &lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;</p>" in page.body
    assert b"<code>&lt;i&gt;</code>" in page.body


def test_html_page_without_request_id_has_no_request_id_line() -> None:
    page = status_page(504, "slow", as_html=True)
    assert b"request id" not in page.body
    assert header(page, b"x-request-id") is None


# --- properties of every page -------------------------------------------------------------


@pytest.mark.parametrize("status", ALL_STATUSES)
@pytest.mark.parametrize("as_html", [False, True])
def test_every_page_has_a_correct_length_is_not_cached_and_sets_no_cookie(
    status: int, as_html: bool
) -> None:
    page = status_page(status, "détail ünïcode", request_id="rid", as_html=as_html)
    assert page.status == status
    assert header(page, b"content-length") == str(len(page.body)).encode()
    assert header(page, b"cache-control") == b"no-store"
    assert header(page, b"x-content-type-options") == b"nosniff"
    assert header(page, b"x-hostmux-error") == str(status).encode()
    assert header(page, b"set-cookie") is None
    expected_type = b"text/html; charset=utf-8" if as_html else b"text/plain; charset=utf-8"
    assert header(page, b"content-type") == expected_type
    assert page.body.decode("utf-8").endswith("\n")


def test_content_length_counts_bytes_not_characters() -> None:
    page = status_page(400, "é")
    assert page.body == "400 Bad request: é\n".encode()
    assert header(page, b"content-length") == b"20"


# --- router_home_page ------------------------------------------------------------------------


def test_home_page_as_text() -> None:
    page = router_home_page("example.com", ssh_port=2222, as_html=False)
    body = (
        b"hostmux router for *.example.com\n"
        b"Open a tunnel: ssh -p 2222 -R myapp:80:localhost:3000 example.com\n"
    )
    assert page == Page(
        status=200,
        headers=[
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-store"),
            (b"x-content-type-options", b"nosniff"),
            (b"connection", b"close"),
        ],
        body=body,
    )


def test_home_page_as_html_escapes_the_domain() -> None:
    page = router_home_page("a<b>.example", ssh_port=2222, as_html=True)
    assert page.status == 200
    assert b"<b>" not in page.body
    assert b"<code>https://NAME.a&lt;b&gt;.example</code>" in page.body
    assert header(page, b"content-type") == b"text/html; charset=utf-8"
    assert header(page, b"content-length") == str(len(page.body)).encode()
    assert header(page, b"cache-control") == b"no-store"
    assert header(page, b"set-cookie") is None


def test_home_page_is_not_marked_as_a_router_error() -> None:
    for as_html in (False, True):
        page = router_home_page("example.com", ssh_port=2222, as_html=as_html)
        assert header(page, b"x-hostmux-error") is None


def test_home_page_names_the_ssh_port_the_router_listens_on() -> None:
    page = router_home_page("example.com", ssh_port=40022, as_html=False)
    assert b"ssh -p 40022 -R myapp:80:localhost:3000 example.com" in page.body
    assert b"2222" not in page.body
    assert b" -p " not in router_home_page("example.com", ssh_port=22, as_html=False).body


# --- wants_html -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (None, False),
        (b"", False),
        (b"*/*", False),
        (b"application/json", False),
        (b"text/plain", False),
        (b"text/html", True),
        (b"TEXT/HTML", True),
        (b"text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", True),
    ],
)
def test_wants_html(accept: bytes | None, expected: bool) -> None:
    assert wants_html(accept) is expected
