"""The helper as an OAuth2 client of the portal: authorization code + PKCE (httpx).

The instance is a public client (``client_id`` = instance id, no secret). Its
one redirect URI is its published URL's origin + ``/_hostmux/callback``
(``https://<instance-id>.<domain>[:port]``, default port omitted), built from
that URL, never from request headers; the portal registered the same URI when
it accepted the URL and compares exactly (RFC 9700 2.1). Only the instance's
tunnel can serve that host — the router enforces name ownership — so a code
can only reach this helper. PKCE (S256, RFC 7636) binds the
code to the browser's login attempt; ``state`` (sealed in a host-only cookie
with the verifier and a nonce) defeats cross-site request forgery and replay.

Portal endpoints used (see examples/portal):

* ``GET  {portal}/oauth/authorize``   the login page, then a redirect back;
* ``POST {portal}/oauth/token``       code + verifier → access token (RFC 6749 4.1.3);
* ``GET  {portal}/instances/{id}/access`` with the user's token →
  ``{"user": "...", "allowed": true|false}``. The access token is kept (sealed
  in the session cookie) as the session's *grant*: re-checks ask with it.

The client side of this flow is two requests and one URL, so it is written
here on httpx (the one HTTP client of the project) rather than through an
OAuth client library. Every call catches ``HTTP_CALL_FAILURES``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from dataclasses import dataclass
from urllib.parse import urlencode

import httpx

from hostmux.http_client import HTTP_CALL_FAILURES, AnswerTooLarge, describe, read_bounded

from ._session import LoginState

# The portal is on the same network as the pod: it answers fast or not at all.
PORTAL_TIMEOUT_S = 10.0
# A token or access answer is a few hundred bytes; more is not one.
_MAX_ANSWER_BYTES = 64 * 1024


class LoginFailed(Exception):
    """The login could not be completed; the message is safe to show."""


@dataclass(frozen=True)
class Access:
    user: str
    allowed: bool
    grant: str = ""  # the access token the answer was given for


def s256_challenge(verifier: str) -> str:
    """RFC 7636 4.2: BASE64URL(SHA256(ASCII(code_verifier))), unpadded."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


class PortalOAuth:
    """Starts and finishes logins at the portal.

    Resource handling: each ``finish_login`` opens and closes its own httpx
    client (logins are rare; nothing is held between them). ``transport`` is
    httpx's, for running against an app in process.
    """

    def __init__(
        self,
        portal_url: str,
        instance_id: str,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._portal = portal_url.rstrip("/")
        self._instance = instance_id
        self._transport = transport

    def __repr__(self) -> str:
        return f"<PortalOAuth {self._portal} client={self._instance}>"

    def start_login(self, redirect_uri: str, return_path: str) -> tuple[str, LoginState]:
        """The authorize URL to send the browser to, and the state to seal in a cookie."""
        login = LoginState(
            state=secrets.token_urlsafe(24),
            code_verifier=secrets.token_urlsafe(48),  # 64 characters (RFC 7636: 43-128)
            nonce=secrets.token_urlsafe(16),
            return_path=return_path,
            instance=self._instance,
        )
        query = urlencode({
            "response_type": "code",
            "client_id": self._instance,
            "redirect_uri": redirect_uri,
            "scope": "openid",
            "state": login.state,
            "nonce": login.nonce,
            "code_challenge": s256_challenge(login.code_verifier),
            "code_challenge_method": "S256",
        })  # fmt: skip
        return f"{self._portal}/oauth/authorize?{query}", login

    async def finish_login(self, code: str, redirect_uri: str, login: LoginState) -> Access:
        """Exchange the code and ask the portal whether this user may use the instance."""
        exchange = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "client_id": self._instance,  # a public client authenticates with its id only
            "code_verifier": login.code_verifier,
        }
        try:
            async with httpx.AsyncClient(
                base_url=self._portal, timeout=PORTAL_TIMEOUT_S, follow_redirects=False,
                transport=self._transport,
            ) as client:  # fmt: skip
                status, body = await _call(client, "POST", "/oauth/token", data=exchange)
                token = _access_token(status, body)
                status, body = await _call(
                    client, "GET", f"/instances/{self._instance}/access",
                    headers={"authorization": f"Bearer {token}"},
                )  # fmt: skip
        except HTTP_CALL_FAILURES as exc:
            raise LoginFailed(f"the portal could not be reached ({describe(exc)})") from None
        if status != 200:
            raise LoginFailed(f"the portal answered {status} to the access check")
        try:
            answer = _json_object(body)
            return Access(user=str(answer["user"]), allowed=answer["allowed"] is True, grant=token)
        except (ValueError, KeyError):
            raise LoginFailed("the portal's access answer is not usable") from None


async def _call(
    client: httpx.AsyncClient,
    method: str,
    path: str,
    *,
    data: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, bytes]:
    """One request to the portal; the status and the body, read up to ``_MAX_ANSWER_BYTES``."""
    request = client.build_request(
        method, path, data=data, headers={"accept": "application/json", **(headers or {})}
    )
    response = await client.send(request, stream=True)
    try:
        body = await read_bounded(response, _MAX_ANSWER_BYTES)
    except AnswerTooLarge:
        raise LoginFailed(f"{method} {path}: the portal's answer is too large") from None
    finally:
        await response.aclose()
    return response.status_code, body


def _access_token(status: int, body: bytes) -> str:
    """The access token of a token endpoint answer (RFC 6749 5.1), or why there is none."""
    try:
        answer = _json_object(body)
    except ValueError:
        raise LoginFailed(f"the portal answered {status} to the code exchange") from None
    if status != 200 or "error" in answer:  # RFC 6749 5.2: {"error": ..., "error_description"}
        reason = ": ".join(str(answer[k]) for k in ("error", "error_description") if k in answer)
        raise LoginFailed(f"the portal refused the login ({reason or status})")
    token = answer.get("access_token")
    if not isinstance(token, str) or not token:
        raise LoginFailed("the portal's token answer has no access token")
    if str(answer.get("token_type", "")).lower() != "bearer":
        raise LoginFailed("the portal's token answer is not a bearer token")
    return token


def _json_object(body: bytes) -> dict[str, object]:
    value = json.loads(body)
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value
