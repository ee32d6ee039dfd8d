"""The router's own status pages (pure).

Every page is small, says what happened in words a browser user understands,
carries the request id for the operator, is never cached, sets no cookies and
reflects nothing from the request unescaped. Browsers get HTML; everything
else (curl, scripts) gets one line of plain text.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Final

_TITLES: Final = {
    200: "OK",
    302: "Found",
    400: "Bad request",
    401: "Login required",
    403: "Forbidden",
    404: "No such tunnel",
    405: "Method not allowed",
    408: "Request timeout",
    414: "URI too long",
    421: "Misdirected request",
    431: "Request header fields too large",
    500: "Internal error",
    502: "Bad gateway",
    503: "Service unavailable",
    504: "Gateway timeout",
}

_STYLE: Final = (
    "body{font-family:system-ui,sans-serif;max-width:40em;margin:4em auto;padding:0 1em;"
    "color:#222}h1{font-size:1.4em}code{color:#555}"
)


@dataclass(frozen=True, slots=True)
class Page:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


def wants_html(accept: bytes | None) -> bool:
    return accept is not None and b"text/html" in accept.lower()


def status_page(
    status: int,
    detail: str,
    *,
    request_id: str = "",
    as_html: bool = False,
    close: bool = True,
    link: tuple[str, str] | None = None,
) -> Page:
    """A complete response for ``status`` explaining ``detail``.

    ``detail`` may contain request-derived text (a host name): it is escaped.
    ``link`` is (URL, text) for a way out, e.g. "log in as someone else"; the
    caller chooses the URL, both are escaped.
    """
    title = _TITLES.get(status, "Error")
    if as_html:
        rid = (
            f"<p><small>request id <code>{html.escape(request_id)}</code></small></p>"
            if request_id
            else ""
        )
        body = (
            f"<!doctype html><html><head><meta charset=utf-8><title>{status} {title}</title>"
            f"<style>{_STYLE}</style></head><body><h1>{status} {title}</h1>"
            f"<p>{html.escape(detail)}</p>{_link_html(link)}{rid}"
            "<p><small>hostmux</small></p></body></html>\n"
        ).encode()
        content_type = b"text/html; charset=utf-8"
    else:
        rid = f" (request id {request_id})" if request_id else ""
        more = f" {link[1]}: {link[0]}" if link else ""
        body = f"{status} {title}: {detail}{more}{rid}\n".encode()
        content_type = b"text/plain; charset=utf-8"
    headers = [
        (b"content-type", content_type),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
        (b"x-content-type-options", b"nosniff"),
        # Marks the router's own answers, so a listener checking its public URL
        # can tell "the app answered 404" from "the router has no such tunnel".
        (b"x-hostmux-error", str(status).encode()),
    ]
    if request_id:
        headers.append((b"x-request-id", request_id.encode()))
    if close:
        headers.append((b"connection", b"close"))
    return Page(status=status, headers=headers, body=body)


# The holding page's own policy: no script, no fetches; its inline style only.
_HOLDING_CSP: Final = (
    b"default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"
)


def holding_page(name: str, *, retry_after_s: int, request_id: str = "", as_html: bool) -> Page:
    """503 "starting…": the name's instance exists but its tunnel is not up yet.

    The HTML reloads itself every ``retry_after_s`` (a meta refresh: no script,
    so a strict CSP holds), so the browser gets the app once the tunnel is up
    without the user doing anything; other clients get one line and
    ``Retry-After``.
    """
    if as_html:
        rid = (
            f"<p><small>request id <code>{html.escape(request_id)}</code></small></p>"
            if request_id
            else ""
        )
        body = (
            f"<!doctype html><html><head><meta charset=utf-8>"
            f'<meta http-equiv=refresh content="{retry_after_s}">'
            f"<title>Starting\u2026</title><style>{_STYLE}</style></head><body>"
            f"<h1 id=starting>Starting {html.escape(name)}\u2026</h1>"
            f"<p>The app is starting. This page reloads itself every {retry_after_s} s "
            "and shows the app once it is up.</p>"
            f"{rid}<p><small>hostmux</small></p></body></html>\n"
        ).encode()
        content_type = b"text/html; charset=utf-8"
    else:
        rid = f" (request id {request_id})" if request_id else ""
        body = (f"503 Starting: {name!s} is starting; retry in {retry_after_s} s{rid}\n").encode()
        content_type = b"text/plain; charset=utf-8"
    headers = [
        (b"content-type", content_type),
        (b"content-length", str(len(body)).encode()),
        (b"retry-after", str(retry_after_s).encode()),
        (b"cache-control", b"no-store"),
        (b"x-content-type-options", b"nosniff"),
        (b"content-security-policy", _HOLDING_CSP),
        (b"x-hostmux-error", b"503"),
    ]
    if request_id:
        headers.append((b"x-request-id", request_id.encode()))
    return Page(status=503, headers=headers, body=body)


def _link_html(link: tuple[str, str] | None) -> str:
    if link is None:
        return ""
    url, text = link
    return f'<p><a href="{html.escape(url, quote=True)}" id=way-out>{html.escape(text)}</a></p>'


def router_home_page(domain: str, *, ssh_port: int, as_html: bool) -> Page:
    """What the router's own host shows: what it is and how to open a tunnel."""
    port = "" if ssh_port == 22 else f" -p {ssh_port}"  # 22: ssh's own default
    hint = f"Open a tunnel: ssh{port} -R myapp:80:localhost:3000 {domain}"
    if as_html:
        body = (
            f"<!doctype html><html><head><meta charset=utf-8><title>hostmux</title>"
            f"<style>{_STYLE}</style></head><body><h1>hostmux</h1>"
            f"<p>This router serves apps at <code>https://NAME.{html.escape(domain)}</code>.</p>"
            f"<p><code>{html.escape(hint)}</code></p></body></html>\n"
        ).encode()
        content_type = b"text/html; charset=utf-8"
    else:
        body = f"hostmux router for *.{domain}\n{hint}\n".encode()
        content_type = b"text/plain; charset=utf-8"
    headers = [
        (b"content-type", content_type),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
        (b"x-content-type-options", b"nosniff"),
        (b"connection", b"close"),
    ]
    return Page(status=200, headers=headers, body=body)


def redirect_page(location: str, *, extra_headers: list[tuple[bytes, bytes]] | None = None) -> Page:
    """A 302 to ``location`` (which the caller has made safe), never cached."""
    body = b""
    headers = [
        (b"location", location.encode("ascii", "strict")),
        (b"content-length", b"0"),
        (b"cache-control", b"no-store"),
        (b"connection", b"close"),
        *(extra_headers or []),
    ]
    return Page(status=302, headers=headers, body=body)


def with_headers(page: Page, extra: list[tuple[bytes, bytes]]) -> Page:
    return Page(status=page.status, headers=[*page.headers, *extra], body=page.body)
