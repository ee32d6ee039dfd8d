"""The auth helper: a reverse proxy in front of the app that lets only the instance's users in.

It is the router's relay (``router._relay``: llhttp, streaming, back-pressure,
WebSocket splice) with a different gateway: instead of routing by Host it
checks the session cookie, runs the OAuth2 login against the portal, and
passes allowed requests to the app over TCP with the user's name attached.

Resource handling: ``run_authhelper`` owns its listener and every browser
connection (via ``ConnectionSet``); SIGTERM stops accepting and lets in-flight
requests finish for a bounded time.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from urllib.parse import parse_qs

from router._front_door import ConnectionSet, connection_handler
from router._gateway import Destination, UpstreamUnavailable
from router._headers import ClientInfo
from router._http1_events import Request
from router._layered_config import ConfigError, parse_host_port
from router._limits import ConnectionCounts
from router._log import fields
from router._pages import Page, redirect_page, status_page, wants_html, with_headers
from router._relay import RelayLimits
from router._streams import READ_CHUNK_BYTES, ByteStream, open_tcp_stream

from ._config import AuthHelperConfig
from ._gate import (
    CALLBACK_PATH,
    Action,
    action_for,
    app_request_headers,
    app_response_headers,
    safe_return_path,
    split_target,
)
from ._oauth import LoginFailed, PortalOAuth
from ._session import (
    LOGIN_COOKIE,
    LOGIN_STATE_LIFETIME_S,
    SESSION_COOKIE,
    CookieSealer,
    clear_cookie_header,
    cookie_header,
    new_cookie_key,
    read_cookies,
)

log = logging.getLogger("hostmux.authhelper")

# On SIGTERM, requests in flight get this long (as the router's default).
SHUTDOWN_GRACE_S = 10.0
# Connections held at once (the router's default max_connections).
_MAX_CONNECTIONS = 10_000


class AuthGateway:
    """The relay's routing decision for the helper: session → app, else login."""

    def __init__(self, config: AuthHelperConfig, sealer: CookieSealer, oauth: PortalOAuth) -> None:
        self._config = config
        self._sealer = sealer
        self._oauth = oauth
        self._app = parse_host_port(config.app, "app")

    def __repr__(self) -> str:
        return f"<AuthGateway {self._config.instance_id} -> {self._config.app}>"

    def route(
        self, host: str, request: Request, request_id: str, client: ClientInfo
    ) -> Destination | Page | asyncio.Future[Destination | Page]:
        target = request.target.decode("latin-1")
        path, query = split_target(target)
        cookies = read_cookies(request.headers)
        session = self._sealer.open_session(cookies.get(SESSION_COOKIE))
        as_html = wants_html(_header(request, b"accept"))
        action = action_for(path, has_session=session is not None)
        if action is Action.HEALTH:
            return _text_page(200, "ok\n")
        if action is Action.LOGOUT:
            # Forget this instance's session, then end the portal's too: otherwise
            # the next visit would log the same user straight back in.
            return redirect_page(
                self._config.portal_url.rstrip("/") + "/logout",
                extra_headers=[(b"set-cookie", clear_cookie_header(SESSION_COOKIE))],
            )
        if action is Action.PASS:
            assert session is not None
            return Destination(
                key="app",
                label=self._config.instance_id,
                open=partial(_open_app, *self._app),
                request_headers=partial(_app_headers, user=session.user),
                response_headers=app_response_headers,
            )
        origin = _origin(request)
        redirect_uri = origin + CALLBACK_PATH
        if action is Action.CALLBACK:
            return asyncio.ensure_future(
                self._callback(query, cookies.get(LOGIN_COOKIE), redirect_uri, as_html, request_id)
            )
        if request.method not in (b"GET", b"HEAD") or _header(request, b"upgrade"):
            return status_page(401, "log in first: open this instance in a browser",
                               request_id=request_id, as_html=as_html)  # fmt: skip
        url, login = self._oauth.start_login(redirect_uri, safe_return_path(target))
        sealed = self._sealer.seal_login(login)
        return redirect_page(
            url, extra_headers=[(b"set-cookie", cookie_header(LOGIN_COOKIE, sealed,
                                                                max_age=LOGIN_STATE_LIFETIME_S))]
        )  # fmt: skip

    async def _callback(
        self, query: str, login_cookie: str | None, redirect_uri: str, as_html: bool, rid: str
    ) -> Page:
        params = {k: v[0] for k, v in parse_qs(query, keep_blank_values=True).items()}
        login = self._sealer.open_login(login_cookie)
        if login is None:
            detail = (
                "this login expired or was not started in this browser; open the instance again"
            )
            return status_page(400, detail, request_id=rid, as_html=as_html)
        if params.get("state") != login.state:
            log.warning(fields("login_state_mismatch", instance=self._config.instance_id, rid=rid))
            return status_page(400, "the login state does not match; open the instance again",
                               request_id=rid, as_html=as_html)  # fmt: skip
        if "error" in params or not params.get("code"):
            detail = f"the portal did not log you in ({params.get('error', 'no code')})"
            return status_page(403, detail, request_id=rid, as_html=as_html)
        try:
            access = await self._oauth.finish_login(params["code"], redirect_uri, login)
        except LoginFailed as exc:
            log.warning(fields("login_failed", instance=self._config.instance_id, reason=str(exc)))
            return status_page(502, str(exc), request_id=rid, as_html=as_html)
        clear_login = (b"set-cookie", clear_cookie_header(LOGIN_COOKIE))
        if not access.allowed:
            log.info(fields("login_denied", instance=self._config.instance_id, user=access.user))
            page = status_page(
                403,
                f"{access.user} may not use this instance. Ask its owner to share it with you, "
                "or log in as someone else.",
                request_id=rid, as_html=as_html,
                link=(self._config.portal_url.rstrip("/") + "/logout", "Log in as someone else"),
            )  # fmt: skip
            return with_headers(page, [clear_login])
        log.info(fields("login", instance=self._config.instance_id, user=access.user))
        session = self._sealer.seal_session(access.user)
        max_age = self._sealer.session_lifetime_s
        return redirect_page(
            login.return_path,
            extra_headers=[(b"set-cookie", cookie_header(SESSION_COOKIE, session, max_age=max_age)),
                           clear_login],
        )  # fmt: skip


def _app_headers(
    headers: Sequence[tuple[bytes, bytes]], websocket: bool, *, user: str
) -> list[tuple[bytes, bytes]]:
    return app_request_headers(headers, user=user, websocket=websocket)


async def _open_app(host: str, port: int) -> ByteStream:
    try:
        return await open_tcp_stream(host, port, label=f"app:{host}:{port}")
    except OSError as exc:
        raise UpstreamUnavailable(f"the app is not answering ({exc.strerror or exc})") from None


def _text_page(status: int, text: str) -> Page:
    body = text.encode()
    return Page(status=status, body=body, headers=[
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
        (b"connection", b"close"),
    ])  # fmt: skip


def _header(request: Request, name: bytes) -> bytes | None:
    for key, value in request.headers:
        if key == name:
            return bytes(value)
    return None


def _origin(request: Request) -> str:
    """The browser's origin for this request, as the router saw it."""
    proto = (_header(request, b"x-forwarded-proto") or b"http").split(b",")[0].strip()
    scheme = "https" if proto == b"https" else "http"
    host = (_header(request, b"host") or b"").decode("latin-1")
    return f"{scheme}://{host}"


def load_cookie_keys(config: AuthHelperConfig) -> list[str]:
    if config.cookie_keys:
        return list(config.cookie_keys)
    path = config.cookie_keys_file
    assert path is not None
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(new_cookie_key() + "\n")
    try:
        return [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None


async def run_authhelper(config: AuthHelperConfig, *, stop: asyncio.Event | None = None) -> None:
    try:
        sealer = CookieSealer(
            load_cookie_keys(config), config.instance_id,
            session_lifetime_s=config.session_lifetime_s,
        )  # fmt: skip
    except ValueError as exc:
        raise ConfigError(f"cookie keys: {exc}") from None
    gateway = AuthGateway(config, sealer, PortalOAuth(config.portal_url, config.instance_id))
    connections = ConnectionSet()
    limits = RelayLimits()
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    # Its only browser-side peer is the listener (one address): no per-IP cap.
    counts = ConnectionCounts(max_total=_MAX_CONNECTIONS, max_per_key=_MAX_CONNECTIONS)
    on_connection = connection_handler(
        "http", gateway=gateway, limits=limits, connections=connections, counts=counts
    )

    host, port = parse_host_port(config.listen, "listen")
    try:
        server = await asyncio.start_server(on_connection, host, port, limit=READ_CHUNK_BYTES)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {config.listen}: {exc.strerror or exc}") from None
    bound = server.sockets[0].getsockname()
    log.info(fields("authhelper_ready", listen=f"{bound[0]}:{bound[1]}", app=config.app,
                    instance=config.instance_id, portal=config.portal_url))  # fmt: skip
    try:
        await stop.wait()
    finally:
        server.close()
        await connections.drain(SHUTDOWN_GRACE_S)
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    log.info(fields("authhelper_stopped"))
