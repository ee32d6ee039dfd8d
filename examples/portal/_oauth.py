"""The portal as an OAuth2 authorization server for the instances' auth helpers (authlib).

Each instance is a *public* client: ``client_id`` = instance id, no secret,
authorization code + PKCE (S256) only. Its one redirect URI is registered when
the portal accepts the instance's published URL (``_app.update_url``): that
URL's origin (default port omitted) + ``/_hostmux/callback``. A ``redirect_uri``
is compared with it exactly, as RFC 9700 2.1 requires — no pattern, no "first
label is the id": ``https://<id>.evil.example/...`` is refused, and so is any
URI before the instance has published one. Only the instance's tunnel serves
that host (the router enforces name ownership), so a code can only reach that
instance's helper.

After the code exchange the helper asks ``GET /instances/{id}/access`` with
the access token, and keeps asking with it every ``access_recheck_s``:
``{"user": ..., "allowed": owner-or-shared-with}``. The token is the helper
session's *grant*: it lives ``GRANT_LIFETIME_S``, is stored hashed in the
database (a portal restart keeps it), and is deleted when its user logs out of
the portal or is removed from the instance's shares, so the next re-check
fails. Codes (10 minutes) live in memory: a portal restart costs only logins
in flight.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from authlib.oauth2 import AuthorizationServer, OAuth2Request
from authlib.oauth2.rfc6749 import ClientMixin, InvalidRequestError, OAuth2Payload
from authlib.oauth2.rfc6749.grants import AuthorizationCodeGrant
from authlib.oauth2.rfc7636 import CodeChallenge

CODE_LIFETIME_S = 600
# A helper session can last no longer than its grant: longer than a day of work.
GRANT_LIFETIME_S = 24 * 3600
CALLBACK_PATH = "/_hostmux/callback"


def redirect_uri_for(url: str) -> str:
    """An instance's one redirect URI: its published URL's origin + the callback path.

    The origin as RFC 6454 writes it: scheme, lower-cased host, the port only
    when it is not the scheme's default.
    """
    parts = urlsplit(url)
    port = parts.port
    netloc = (parts.hostname or "").lower()
    if port is not None and port != {"https": 443, "http": 80}.get(parts.scheme):
        netloc += f":{port}"
    return f"{parts.scheme}://{netloc}{CALLBACK_PATH}"


@dataclass
class InstanceClient(ClientMixin):  # type: ignore[misc]
    """An instance as an OAuth2 client."""

    instance_id: str
    redirect_uri: str | None  # registered from the published URL; None: none yet

    def get_client_id(self) -> str:
        return self.instance_id

    def get_default_redirect_uri(self) -> str | None:
        return None

    def get_allowed_scope(self, scope: str) -> str:
        return "openid" if scope and "openid" in scope.split() else ""

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return self.redirect_uri is not None and redirect_uri == self.redirect_uri

    def check_client_secret(self, client_secret: str) -> bool:
        return False

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method == "none"  # a public client: PKCE is its proof

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type == "authorization_code"


@dataclass
class _Code:
    code: str
    client_id: str
    redirect_uri: str
    scope: str
    user: str
    code_challenge: str | None
    code_challenge_method: str | None
    nonce: str | None
    expires: float

    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope

    def get_nonce(self) -> str | None:
        return self.nonce

    def get_auth_time(self) -> int:
        return int(self.expires - CODE_LIFETIME_S)


@dataclass
class TokenGrant:
    user: str
    client_id: str
    expires: float


@dataclass
class OAuthStore:
    """Codes and access tokens in memory (short-lived by design)."""

    codes: dict[str, _Code] = field(default_factory=dict)
    tokens: dict[str, TokenGrant] = field(default_factory=dict)

    def expire(self) -> None:
        now = time.time()
        for stale in [k for k, v in self.codes.items() if v.expires < now]:
            del self.codes[stale]
        for stale in [k for k, v in self.tokens.items() if v.expires < now]:
            del self.tokens[stale]

    def token(self, value: str) -> TokenGrant | None:
        grant = self.tokens.get(value)
        return grant if grant is not None and grant.expires > time.time() else None


class _Payload(OAuth2Payload):  # type: ignore[misc]
    def __init__(self, data: dict[str, str]) -> None:
        self._data = data

    @property
    def data(self) -> dict[str, str]:
        return self._data

    @property
    def datalist(self) -> dict[str, list[str]]:
        return {k: [v] for k, v in self._data.items()}


class PortalRequest(OAuth2Request):  # type: ignore[misc]
    """A Starlette request's parts in authlib's shape (built after reading the form)."""

    def __init__(
        self, method: str, uri: str, headers: dict[str, str], data: dict[str, str]
    ) -> None:
        super().__init__(method=method, uri=uri, headers=headers)
        self._args = data
        self.payload = _Payload(data)

    @property
    def args(self) -> dict[str, str]:
        return self._args

    @property
    def form(self) -> dict[str, str]:
        return self._args


class _CodeGrant(AuthorizationCodeGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = ["none"]

    def save_authorization_code(self, code: str, request: Any) -> None:
        store: OAuthStore = self.server.store
        payload = request.payload
        store.codes[code] = _Code(
            code=code,
            client_id=request.client.get_client_id(),
            redirect_uri=payload.redirect_uri,
            scope=payload.scope or "",
            user=request.user,
            code_challenge=payload.data.get("code_challenge"),
            code_challenge_method=payload.data.get("code_challenge_method"),
            nonce=payload.data.get("nonce"),
            expires=time.time() + CODE_LIFETIME_S,
        )

    def query_authorization_code(self, code: str, client: InstanceClient) -> _Code | None:
        store: OAuthStore = self.server.store
        found = store.codes.get(code)
        if (
            found is None
            or found.client_id != client.get_client_id()
            or found.expires < time.time()
        ):
            return None
        return found

    def delete_authorization_code(self, authorization_code: _Code) -> None:
        self.server.store.codes.pop(authorization_code.code, None)  # one use only

    def authenticate_user(self, authorization_code: _Code) -> str:
        return authorization_code.user


class _S256Only(CodeChallenge):  # type: ignore[misc]
    """PKCE as OAuth 2.1 wants it: always, and only S256 (no "plain")."""

    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]

    def validate_code_challenge(self, grant: Any, redirect_uri: str) -> None:
        data = grant.request.payload.data
        if not data.get("code_challenge") or data.get("code_challenge_method") != "S256":
            raise InvalidRequestError("PKCE with code_challenge_method=S256 is required")
        super().validate_code_challenge(grant, redirect_uri)


class PortalAuthorizationServer(AuthorizationServer):  # type: ignore[misc]
    def __init__(self, store: OAuthStore, redirect_uris: dict[str, str | None]) -> None:
        super().__init__(scopes_supported=["openid"])
        self.store = store
        self._redirect_uris = redirect_uris  # id -> registered URI (a sync view of the DB)
        self.register_grant(_CodeGrant, [_S256Only(required=True)])

    def query_client(self, client_id: str) -> InstanceClient | None:
        if client_id not in self._redirect_uris:
            return None
        return InstanceClient(client_id, self._redirect_uris[client_id])

    def save_token(self, token: dict[str, Any], request: Any) -> None:
        self.store.tokens[token["access_token"]] = TokenGrant(
            user=request.user,
            client_id=request.client.get_client_id(),
            expires=time.time() + GRANT_LIFETIME_S,
        )

    def generate_token(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return {
            "token_type": "Bearer",
            "access_token": secrets.token_urlsafe(32),
            "expires_in": GRANT_LIFETIME_S,
        }

    def create_oauth2_request(self, request: PortalRequest) -> PortalRequest:
        return request

    def handle_response(self, status: int, body: Any, headers: Any) -> tuple[int, Any, Any]:
        return status, body, headers

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        return None
