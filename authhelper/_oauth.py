"""The helper as an OAuth2 client of the portal: authorization code + PKCE (authlib).

The instance is a public client (``client_id`` = instance id, no secret). Its
one redirect URI is its published URL's origin + ``/_hostmux/callback``
(``https://<instance-id>.<domain>[:port]``, default port omitted), built from
that URL, never from request headers; the portal registered the same URI when
it accepted the URL and compares exactly (RFC 9700 2.1). Only the instance's
tunnel can serve that host — the router enforces name ownership — so a code
can only reach this helper. PKCE (S256) binds the
code to the browser's login attempt; ``state`` (sealed in a host-only cookie
with the verifier and a nonce) defeats cross-site request forgery and replay.

Portal endpoints used (see examples/portal):

* ``GET  {portal}/oauth/authorize``   the login page, then a redirect back;
* ``POST {portal}/oauth/token``       code + verifier → access token;
* ``GET  {portal}/instances/{id}/access`` with the user's token →
  ``{"user": "...", "allowed": true|false}``. The access token is kept (sealed
  in the session cookie) as the session's *grant*: re-checks ask with it.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import httpx2
from authlib.integrations.httpx_client import AsyncOAuth2Client
from authlib.oauth2.rfc7636 import create_s256_code_challenge

from ._session import LoginState

# The portal is on the same network as the pod: it answers fast or not at all.
PORTAL_TIMEOUT_S = 10.0


class LoginFailed(Exception):
    """The login could not be completed; the message is safe to show."""


@dataclass(frozen=True)
class Access:
    user: str
    allowed: bool
    grant: str = ""  # the access token the answer was given for


class PortalOAuth:
    def __init__(self, portal_url: str, instance_id: str) -> None:
        self._portal = portal_url.rstrip("/")
        self._instance = instance_id

    def __repr__(self) -> str:
        return f"<PortalOAuth {self._portal} client={self._instance}>"

    def start_login(self, redirect_uri: str, return_path: str) -> tuple[str, LoginState]:
        """The authorize URL to send the browser to, and the state to seal in a cookie."""
        login = LoginState(
            state=secrets.token_urlsafe(24),
            code_verifier=secrets.token_urlsafe(48),
            nonce=secrets.token_urlsafe(16),
            return_path=return_path,
            instance=self._instance,
        )
        client = AsyncOAuth2Client(
            client_id=self._instance, redirect_uri=redirect_uri, code_challenge_method="S256"
        )
        url, _ = client.create_authorization_url(
            f"{self._portal}/oauth/authorize",
            state=login.state,
            code_verifier=login.code_verifier,
            nonce=login.nonce,
            scope="openid",
        )
        return url, login

    async def finish_login(self, code: str, redirect_uri: str, login: LoginState) -> Access:
        """Exchange the code and ask the portal whether this user may use the instance."""
        try:
            async with AsyncOAuth2Client(
                client_id=self._instance,
                redirect_uri=redirect_uri,
                token_endpoint_auth_method="none",
                timeout=PORTAL_TIMEOUT_S,
            ) as client:
                token = await client.fetch_token(
                    f"{self._portal}/oauth/token",
                    grant_type="authorization_code",
                    code=code,
                    code_verifier=login.code_verifier,
                )
                response = await client.get(
                    f"{self._portal}/instances/{self._instance}/access",
                    headers={"authorization": f"Bearer {token['access_token']}"},
                )
        except (httpx2.HTTPError, OSError) as exc:
            raise LoginFailed(f"the portal could not be reached ({type(exc).__name__})") from None
        except Exception as exc:  # authlib raises OAuthError and friends for refusals
            raise LoginFailed(f"the portal refused the login ({exc})") from None
        if response.status_code != 200:
            raise LoginFailed(f"the portal answered {response.status_code} to the access check")
        try:
            body = response.json()
            return Access(user=str(body["user"]), allowed=body["allowed"] is True,
                          grant=str(token["access_token"]))  # fmt: skip
        except (ValueError, KeyError, TypeError):
            raise LoginFailed("the portal's access answer is not usable") from None


def code_challenge(verifier: str) -> str:
    return str(create_s256_code_challenge(verifier))
