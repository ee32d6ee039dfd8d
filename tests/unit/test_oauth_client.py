"""The auth helper's OAuth2 client (authhelper._oauth) against the example portal.

The code flow runs against the portal app in process (httpx over ASGI, trio),
the browser's part played by a second httpx client with the user's portal
cookie. The failure path runs under uvloop against a real loopback server that
resets every connection, as a restarting portal does.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

import keys
from authhelper._oauth import LoginFailed, PortalOAuth, s256_challenge
from authhelper._session import LoginState
from examples.portal._app import build_app
from examples.portal._db import Database
from examples.portal._login import hash_password
from examples.portal._state import PortalState

from .test_portal_client import ATTEMPTS, resetting_server, run_on_uvloop

ADMIN = {"authorization": "Bearer admin-token"}
PUBLIC_URL = "https://lab-1.tunnels.test:8443"
REDIRECT_URI = PUBLIC_URL + "/_hostmux/callback"


@dataclass
class Portal:
    transport: httpx.AsyncBaseTransport
    browser: httpx.AsyncClient  # logged in as bob once ``log_in`` ran


@pytest.fixture
async def portal(tmp_path: Path) -> AsyncIterator[Portal]:
    """The example portal with users alice and bob and instance lab-1 (owned by alice)."""
    db = Database(tmp_path / "portal.sqlite3")
    state = PortalState(
        db=db, ca=keys.SshCertificateAuthority.generate(), admin_token="admin-token",
        events_secret=None, public_url="http://localhost",
    )  # fmt: skip
    try:
        for user in ("alice", "bob"):
            await db.ensure_user(user, hash_password("pw-" + user))
        await db.set_setting("router_domains", ["tunnels.test"])
        transport = httpx.ASGITransport(app=build_app(state, "test-session-secret"))
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as browser:
            created = await browser.post(
                "/instances", json={"owner": "alice", "id": "lab-1"}, headers=ADMIN
            )
            assert created.status_code == 201, created.text
            key = keys.InstanceKey.from_private_bytes(created.json()["private_key_pem"].encode())
            published = await browser.put(
                "/instances/lab-1/url", content=PUBLIC_URL,
                headers={"authorization": f"Bearer {keys.sign_jwt(key, issuer='lab-1')}"},
            )  # fmt: skip
            assert published.status_code == 204, published.text
            yield Portal(transport, browser)
    finally:
        db.close()


async def authorize(portal: Portal, oauth: PortalOAuth) -> tuple[str, LoginState]:
    """What the browser does: log in as bob, follow the authorize URL; the code it brings back."""
    form = {"username": "bob", "password": "pw-bob", "next": "/"}
    assert (await portal.browser.post("/login", data=form)).status_code == 303
    url, login = oauth.start_login(REDIRECT_URI, "/lab")
    answer = await portal.browser.get(url)
    assert answer.status_code == 302, answer.text
    back = urlsplit(answer.headers["location"])
    assert f"{back.scheme}://{back.netloc}{back.path}" == REDIRECT_URI
    params = parse_qs(back.query)
    assert params["state"] == [login.state]
    return params["code"][0], login


def test_s256_matches_rfc_7636_appendix_b() -> None:
    verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
    assert s256_challenge(verifier) == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


def test_the_authorize_url_carries_pkce_state_and_the_redirect_uri() -> None:
    url, login = PortalOAuth("https://portal.test/", "lab-1").start_login(REDIRECT_URI, "/lab")
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == "https://portal.test/oauth/authorize"
    assert {k: v[0] for k, v in parse_qs(parts.query).items()} == {
        "response_type": "code", "client_id": "lab-1", "redirect_uri": REDIRECT_URI,
        "scope": "openid", "state": login.state, "nonce": login.nonce,
        "code_challenge": s256_challenge(login.code_verifier), "code_challenge_method": "S256",
    }  # fmt: skip
    assert (login.return_path, login.instance) == ("/lab", "lab-1")
    assert 43 <= len(login.code_verifier) <= 128  # RFC 7636 4.1


async def test_a_login_exchanges_the_code_and_asks_for_access(portal: Portal) -> None:
    oauth = PortalOAuth("http://localhost", "lab-1", transport=portal.transport)
    code, login = await authorize(portal, oauth)
    access = await oauth.finish_login(code, REDIRECT_URI, login)
    assert (access.user, access.allowed) == ("bob", False)  # lab-1 is alice's, not shared
    assert access.grant
    shared = await portal.browser.post("/instances/lab-1/shares", json={"user": "bob"},
                                       headers=ADMIN)  # fmt: skip
    assert shared.status_code == 204
    code, login = await authorize(portal, oauth)
    assert (await oauth.finish_login(code, REDIRECT_URI, login)).allowed is True


async def test_a_refused_exchange_is_one_clear_line(portal: Portal) -> None:
    oauth = PortalOAuth("http://localhost", "lab-1", transport=portal.transport)
    code, login = await authorize(portal, oauth)
    forged = LoginState(login.state, "x" * 50, login.nonce, login.return_path, login.instance)
    with pytest.raises(LoginFailed, match=r"^the portal refused the login \(invalid_grant"):
        await oauth.finish_login(code, REDIRECT_URI, forged)
    await oauth.finish_login(code, REDIRECT_URI, login)  # the code is still good: PKCE refused
    with pytest.raises(LoginFailed, match=r"^the portal refused the login \(invalid_grant"):
        await oauth.finish_login(code, REDIRECT_URI, login)  # a code is good for one exchange


def test_a_resetting_portal_fails_the_login_it_does_not_crash_the_helper() -> None:
    async def scenario() -> None:
        with resetting_server() as port:
            oauth = PortalOAuth(f"http://127.0.0.1:{port}", "lab-1")
            _, login = oauth.start_login(REDIRECT_URI, "/")
            for _ in range(ATTEMPTS):
                with pytest.raises(LoginFailed, match=r"^the portal could not be reached \("):
                    await oauth.finish_login("code", REDIRECT_URI, login)

    run_on_uvloop(scenario())
