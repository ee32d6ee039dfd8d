"""The relay's routing decision for the helper: session → app, else login (``_gate`` rules).

Every decision that needs the portal (the published URL, a login, a re-check,
the portal's keys) returns a future; the relay waits for it. Revocations are
written to ``state_dir`` before the answer that depends on them is sent.

Error handling: the portal failing is a clean status page (502) or, for a
re-check, the last answer standing (``_access``); nothing here raises into
the relay.
"""

from __future__ import annotations

import asyncio
import html
import logging
import time
from collections import Counter
from collections.abc import Sequence
from functools import partial
from urllib.parse import parse_qs

from hostmux.http1 import (
    ClientInfo,
    LocalProtocolError,
    Page,
    Request,
    checked_headers,
    redirect_page,
    status_page,
    wants_html,
    with_headers,
)
from hostmux.log import fields
from hostmux.relay import Destination, RequestRecord
from hostmux.relay.front_door import log_request

from ._access import RETRY_UNREACHABLE_S, AccessChecks
from ._app_connections import AppConnections
from ._audit import VisitorAudit
from ._config import AuthHelperConfig
from ._gate import (
    LOGOUT_PATH,
    OUR_COOKIES,
    Action,
    action_for,
    app_request_headers,
    app_response_headers,
    origin_of,
    redirect_uri_for,
    safe_return_path,
    same_origin_request,
    split_target,
)
from ._oauth import LoginFailed, PortalOAuth
from ._portal_client import PortalClient, PortalUnreachable
from ._revocations import Revocations, write_revocations
from ._revoke import RevocationRefused, read_revocation
from ._session import (
    LOGIN_COOKIE,
    LOGIN_STATE_LIFETIME_S,
    SESSION_COOKIE,
    CookieSealer,
    Session,
    clear_cookie_header,
    cookie_header,
    read_cookies,
)
from ._session_cache import SessionCache

log = logging.getLogger("hostmux.authhelper")

# Every path the helper answers itself starts so (``_gate``): the fast path leaves them alone.
_OUR_PATHS = b"/_hostmux/"


class AuthGateway:
    """Session → app (re-checked), logout, revocations, else the OAuth2 login."""

    def __init__(
        self,
        config: AuthHelperConfig,
        sealer: CookieSealer,
        oauth: PortalOAuth,
        portal: PortalClient,
        revocations: Revocations,
        app: AppConnections,
        audit: VisitorAudit | None = None,
    ) -> None:
        self._config = config
        self._audit = audit
        self._sealer = sealer
        self._oauth = oauth
        self._portal = portal
        self._revocations = revocations
        self._app = app
        # Idle connections to the app are shared by every browser connection (0: none).
        self._app_pool = app if config.app_idle_connections > 0 else None
        self._checks = AccessChecks(config.access_recheck_s)
        self._sessions = SessionCache(sealer, OUR_COOKIES)
        self._save_lock = asyncio.Lock()
        # Logins and denials by event (``_metrics`` names them): login, login_denied,
        # login_failed, access_withdrawn, no_session.
        self.counts: Counter[str] = Counter()

    def __repr__(self) -> str:
        return f"<AuthGateway {self._config.instance_id} -> {self._config.app}>"

    def route(
        self, host: str, request: Request, request_id: str, client: ClientInfo
    ) -> Destination | Page | asyncio.Future[Destination | Page]:
        # The common case first: a session cookie opened before (``_session_cache``),
        # still unrevoked, for a path of the app (none of ours: they all start with
        # ``/_hostmux/``). Its destination was made when the cookie was first opened;
        # revocations and the access re-check are asked here for every request.
        opened = self._sessions.opened(request.headers)
        if (
            opened is not None
            and not request.target.startswith(_OUR_PATHS)
            and not self._revocations.is_revoked(opened.session)
        ):
            destination = opened.destination
            if destination is None:
                destination = opened.destination = self._destination(
                    opened.session, opened.app_cookie
                )
            if self._audit is not None:
                self._audit.visit(request_id, opened.session.user, request.headers)
            if not self._checks.is_due(opened.session.sid):
                return destination
            target = request.target.decode("latin-1")
            return asyncio.ensure_future(
                self._recheck(opened.session, destination, request, target)
            )
        target = request.target.decode("latin-1")
        path, query = split_target(target)
        cookies = read_cookies(request.headers)
        session = self._sealer.first_session(cookies.get(SESSION_COOKIE, []))
        revoked = session is not None and self._revocations.is_revoked(session)
        if revoked:
            session = None
        as_html = wants_html(_header(request, b"accept"))
        action = action_for(path, has_session=session is not None)
        if action is Action.HEALTH:
            return _text_page(200, "ok\n")
        if action is Action.REVOKE:
            return asyncio.ensure_future(self._revoke(request, request_id))
        if action is Action.LOGOUT:
            if request.method == b"POST":
                return asyncio.ensure_future(self._logout(request, query, session, request_id))
            return _logout_page(session)
        if action is Action.PASS:
            assert session is not None
            destination = self._destination(session)
            if self._audit is not None:
                self._audit.visit(request_id, session.user, request.headers)
            if not self._checks.is_due(session.sid):
                return destination
            return asyncio.ensure_future(self._recheck(session, destination, request, target))
        if action is Action.CALLBACK:
            login_cookies = cookies.get(LOGIN_COOKIE, [])
            return asyncio.ensure_future(
                self._callback(query, login_cookies, as_html, request_id, request.headers)
            )
        return asyncio.ensure_future(self._start_login(request, target, revoked, request_id))

    def _destination(self, session: Session, app_cookie: bytes | None = None) -> Destination:
        """``app_cookie``: the request's one Cookie header less ours, known already.

        The app's request headers are the browser's parsed ones less some, plus
        constants and these two values: when both are valid header values, the
        relay skips the second check of the whole list (``request_headers_checked``).
        """
        user = session.user
        plain = app_cookie is not None and _valid_values(user.encode(), app_cookie)
        return Destination(
            key="app",
            label=self._config.instance_id,
            user=user,
            open=self._app.open,
            pool=self._app_pool,
            request_headers=partial(_app_headers, user=user, app_cookie=app_cookie),
            request_headers_checked=plain,
            response_headers=app_response_headers,
            response_headers_checked=True,  # it only drops parsed headers
        )

    def on_request(self, record: RequestRecord) -> None:
        """Each finished request (the relay's ``on_request``), forwarded or answered here.

        The one place per request where its status is known: the access log,
        and the visitor audit's call for a forwarded request (``record.user``
        is set when the request went to the app: a valid session; ``record.name``
        is the instance; the method, target and status are the request's).
        """
        log_request(record)
        if self._audit is not None:
            self._audit.finished(record)  # the request's status is known: its audit record

    async def _public_url(self) -> str:
        return self._config.public_url or await self._portal.published_url()

    async def _start_login(
        self, request: Request, target: str, clear_session: bool, rid: str
    ) -> Page:
        self.counts["no_session"] += 1
        as_html = wants_html(_header(request, b"accept"))
        clear = [(b"set-cookie", clear_cookie_header(SESSION_COOKIE))] if clear_session else []
        if request.method not in (b"GET", b"HEAD") or _header(request, b"upgrade"):
            page = status_page(401, "log in first: open this instance in a browser",
                               request_id=rid, as_html=as_html)  # fmt: skip
            return with_headers(page, clear)
        try:
            redirect_uri = redirect_uri_for(await self._public_url())
        except PortalUnreachable as exc:
            log.warning(fields("login_unavailable", instance=self._config.instance_id,
                               reason=str(exc)))  # fmt: skip
            return status_page(502, f"cannot start a login: {exc}", request_id=rid,
                               as_html=as_html)  # fmt: skip
        url, login = self._oauth.start_login(redirect_uri, safe_return_path(target))
        sealed = self._sealer.seal_login(login)
        cookie = cookie_header(LOGIN_COOKIE, sealed, max_age=LOGIN_STATE_LIFETIME_S)
        return redirect_page(url, extra_headers=[(b"set-cookie", cookie), *clear])

    async def _callback(
        self,
        query: str,
        login_cookies: Sequence[str],
        as_html: bool,
        rid: str,
        headers: Sequence[tuple[bytes, bytes]],
    ) -> Page:
        params = {k: v[0] for k, v in parse_qs(query, keep_blank_values=True).items()}
        login = self._sealer.first_login(login_cookies)
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
            redirect_uri = redirect_uri_for(await self._public_url())
            access = await self._oauth.finish_login(params["code"], redirect_uri, login)
        except (LoginFailed, PortalUnreachable) as exc:
            self.counts["login_failed"] += 1
            log.warning(fields("login_failed", instance=self._config.instance_id, reason=str(exc)))
            return status_page(502, str(exc), request_id=rid, as_html=as_html)
        clear_login = (b"set-cookie", clear_cookie_header(LOGIN_COOKIE))
        if not access.allowed:
            self.counts["login_denied"] += 1
            log.info(fields("login_denied", instance=self._config.instance_id, user=access.user))
            page = status_page(
                403,
                f"{access.user} may not use this instance. Ask its owner to share it with you, "
                "or log in as someone else.",
                request_id=rid, as_html=as_html,
                link=(self._config.portal_url.rstrip("/") + "/logout", "Log in as someone else"),
            )  # fmt: skip
            return with_headers(page, [clear_login])
        sealed, session = self._sealer.seal_session(access.user, grant=access.grant)
        self._checks.record(session.sid)  # the portal has just said yes
        self.counts["login"] += 1
        log.info(fields("login", instance=self._config.instance_id, user=access.user,
                        sid=session.sid[:8]))  # fmt: skip
        if self._audit is not None:
            self._audit.session_started(access.user, headers)
        max_age = self._sealer.session_lifetime_s
        return redirect_page(
            login.return_path,
            extra_headers=[(b"set-cookie", cookie_header(SESSION_COOKIE, sealed, max_age=max_age)),
                           clear_login],
        )  # fmt: skip

    async def _recheck(
        self, session: Session, destination: Destination, request: Request, target: str
    ) -> Destination | Page:
        if await self._checks.check(session.sid, partial(self._ask_portal, session)):
            return destination
        return await self._start_login(request, target, True, "")

    async def _ask_portal(self, session: Session) -> bool:
        """Whether ``session`` may go on; a "no" revokes it (``_access`` rules 4-5)."""
        instance = self._config.instance_id
        try:
            answer = await self._portal.access(session.grant) if session.grant else None
        except PortalUnreachable as exc:
            log.warning(fields("access_recheck_unavailable", instance=instance, reason=str(exc)))
            self._checks.record(session.sid, retry_in_s=RETRY_UNREACHABLE_S)
            return True
        if answer is not None and answer.allowed:
            self._checks.record(session.sid)
            return True
        self._revocations.revoke_session(session)
        self._checks.forget(session.sid)
        await self._save()
        self.counts["access_withdrawn"] += 1
        log.info(fields("access_withdrawn", instance=instance, user=session.user,
                        sid=session.sid[:8]))  # fmt: skip
        return False

    async def _logout(
        self, request: Request, query: str, session: Session | None, rid: str
    ) -> Page:
        as_html = wants_html(_header(request, b"accept"))
        portal_logout = self._config.portal_url.rstrip("/") + "/logout"
        clear = (b"set-cookie", clear_cookie_header(SESSION_COOKIE))
        if session is None:  # nothing to revoke: on to the portal's logout
            return _see_other(portal_logout, [clear])
        try:
            origin = origin_of(await self._public_url())
        except PortalUnreachable as exc:
            return status_page(502, f"cannot log out now: {exc}", request_id=rid, as_html=as_html)
        if not same_origin_request(request.headers, origin):
            log.warning(fields("logout_cross_origin", instance=self._config.instance_id, rid=rid))
            return status_page(403, "a logout must come from this instance's own logout page",
                               request_id=rid, as_html=as_html)  # fmt: skip
        token = parse_qs(query).get("token", [None])[0]
        if not session.logout_token_ok(token):
            return status_page(403, "this logout form is not for your session; open "
                               f"{LOGOUT_PATH} again", request_id=rid, as_html=as_html)  # fmt: skip
        self._revocations.revoke_session(session)
        self._checks.forget(session.sid)
        await self._save()
        log.info(fields("logout", instance=self._config.instance_id, user=session.user,
                        sid=session.sid[:8]))  # fmt: skip
        return _see_other(portal_logout, [clear])

    async def _revoke(self, request: Request, rid: str) -> Page:
        if request.method != b"POST":
            return with_headers(_text_page(405, "POST a signed revocation\n"),
                                [(b"allow", b"POST")])  # fmt: skip
        scheme, _, token = (
            (_header(request, b"authorization") or b"").decode("latin-1").partition(" ")
        )
        if scheme.lower() != "bearer" or not token.strip():
            return _text_page(401, "a Bearer JWT signed by the portal is required\n")
        instance = self._config.instance_id
        try:
            try:
                found = read_revocation(token.strip(), await self._portal.jwks(), instance)
            except RevocationRefused as exc:
                if str(exc) != "unknown kid":
                    raise
                jwks = await self._portal.jwks(refresh=True)  # the portal may have a new key
                found = read_revocation(token.strip(), jwks, instance)
        except RevocationRefused as exc:
            log.warning(fields("revocation_refused", instance=instance, reason=str(exc), rid=rid))
            return _text_page(401, f"revocation refused: {exc}\n")
        except PortalUnreachable as exc:
            return _text_page(502, f"the portal's keys are not available: {exc}\n")
        if not self._revocations.use_jti(found.jti, found.exp):
            return _text_page(409, "revocation refused: this jti was used already\n")
        self._revocations.revoke_user(found.user, found.at)
        await self._save()
        log.info(fields("sessions_revoked", instance=instance, user=found.user, at=found.at))
        return _text_page(200, "revoked\n")

    async def _save(self) -> None:
        """Write the revocations to ``state_dir`` (none: memory only), in order."""
        state_dir = self._config.state_dir
        async with self._save_lock:
            # Pruned and serialised here, in the event loop that changes them; the
            # lock makes the last snapshot taken the last one written.
            self._revocations.prune(int(time.time()))
            if state_dir is not None:
                text = self._revocations.to_json()
                await asyncio.to_thread(write_revocations, state_dir, text)


def _logout_page(session: Session | None) -> Page:
    """The confirmation page: a GET changes nothing; its button POSTs with the token."""
    if session is None:
        body = "<h1>Not logged in</h1><p>There is no session here to end.</p>"
    else:
        action = html.escape(f"{LOGOUT_PATH}?token={session.logout_token()}", quote=True)
        body = (
            f"<h1>Log out</h1><p>Log <b>{html.escape(session.user)}</b> out of this instance "
            "(and then of the portal)?</p>"
            f'<form method=post action="{action}"><button type=submit id=logout>Log out</button>'
            "</form>"
        )
    data = (
        "<!doctype html><html><head><meta charset=utf-8><title>Log out</title></head>"
        f"<body>{body}</body></html>"
    ).encode()
    return Page(status=200, body=data, headers=[
        (b"content-type", b"text/html; charset=utf-8"),
        (b"content-length", str(len(data)).encode()),
        (b"cache-control", b"no-store"),
        # Not in a frame: a page that frames it cannot trick a click on the button.
        (b"content-security-policy", b"frame-ancestors 'none'"),
        (b"x-frame-options", b"DENY"),
        (b"connection", b"close"),  # as every page of the helper's: the relay closes after it
    ])  # fmt: skip


def _see_other(location: str, extra: list[tuple[bytes, bytes]]) -> Page:
    page = redirect_page(location, extra_headers=extra)
    return Page(status=303, headers=page.headers, body=page.body)


def _app_headers(
    headers: Sequence[tuple[bytes, bytes]], websocket: bool, *, user: str, app_cookie: bytes | None
) -> list[tuple[bytes, bytes]]:
    return app_request_headers(headers, user=user, websocket=websocket, app_cookie=app_cookie)


def _valid_values(*values: bytes) -> bool:
    """Whether each of ``values`` may be sent as a header value as it is."""
    try:
        checked_headers([(b"x", value) for value in values])
    except LocalProtocolError:
        return False
    return True


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
