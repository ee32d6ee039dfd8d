"""The helper's fast path (``AuthGateway.route`` with a session cookie opened before).

As strict as the full path: the same session, revocations asked on every
request; what it keeps is one ``Destination`` per opened cookie, and its
app headers skip the second check only when the values it adds are valid.
"""

from __future__ import annotations

import asyncio

from authhelper._app_connections import AppConnections
from authhelper._auth_gateway import AuthGateway
from authhelper._config import load_config
from authhelper._oauth import PortalOAuth
from authhelper._portal_client import PortalClient
from authhelper._revocations import Revocations
from authhelper._session import SESSION_COOKIE, CookieSealer, new_cookie_key
from hostmux.http1 import ClientInfo, LocalProtocolError, Request, request_checking_headers
from hostmux.relay import Destination

from .asyncio_bounded import run

KEY = new_cookie_key()
PORTAL = "http://127.0.0.1:9"  # never asked here: no login, no re-check is due
CLIENT = ClientInfo(peer_ip="127.0.0.1", peer_port=1, scheme="http")


def gateway() -> tuple[AuthGateway, CookieSealer]:
    config = load_config(
        ["--instance-id", "inst-a", "--portal-url", PORTAL, f"--cookie-keys={KEY}"], {}
    )
    sealer = CookieSealer([KEY], "inst-a", session_lifetime_s=config.session_lifetime_s)
    app = AppConnections("127.0.0.1", 9, max_idle=1)
    portal = PortalClient(PORTAL, "inst-a")
    oauth = PortalOAuth(PORTAL, "inst-a")
    revocations = Revocations(config.session_lifetime_s)
    return AuthGateway(config, sealer, oauth, portal, revocations, app), sealer


def request(sealed: str, target: bytes = b"/page") -> Request:
    cookie = f"theme=dark; {SESSION_COOKIE}={sealed}".encode()
    return Request(b"GET", target, [(b"host", b"inst-a.test"), (b"cookie", cookie)], b"1.1")


def test_one_destination_per_opened_cookie_until_the_session_is_revoked() -> None:
    async def scenario() -> None:
        gw, sealer = gateway()
        sealed, session = sealer.seal_session("alice")
        gw._checks.record(session.sid)  # the portal said yes just now
        first = gw.route("inst-a.test", request(sealed), "r1", CLIENT)
        second = gw.route("inst-a.test", request(sealed, b"/other"), "r2", CLIENT)
        assert isinstance(first, Destination) and first is second
        assert first.user == "alice" and first.request_headers_checked
        assert first.response_headers_checked
        assert first.request_headers is not None
        headers = first.request_headers(request(sealed).headers, False)
        assert (b"cookie", b"theme=dark") in headers and (b"x-hostmux-user", b"alice") in headers
        # Our own paths never take the fast path (the health check answers itself).
        health = gw.route("inst-a.test", request(sealed, b"/_hostmux/health"), "r3", CLIENT)
        assert not isinstance(health, Destination)
        gw._revocations.revoke_session(session)
        after = gw.route("inst-a.test", request(sealed), "r4", CLIENT)
        assert not isinstance(after, Destination)  # a login now, not the app
        assert isinstance(after, asyncio.Future)
        after.cancel()
        await asyncio.wait([after])

    run(scenario())


def test_a_user_name_that_is_no_valid_header_value_keeps_the_second_check() -> None:
    async def scenario() -> None:
        gw, sealer = gateway()
        sealed, session = sealer.seal_session("mallory\r\nx-admin: 1")
        gw._checks.record(session.sid)
        destination = gw.route("inst-a.test", request(sealed), "r1", CLIENT)
        assert isinstance(destination, Destination)
        assert not destination.request_headers_checked
        assert destination.request_headers is not None
        headers = destination.request_headers(request(sealed).headers, False)
        try:
            request_checking_headers(b"GET", b"/page", headers)
        except LocalProtocolError:
            pass
        else:
            raise AssertionError("a header value with CR LF was sent unchecked")

    run(scenario())
