"""What every portal request handler shares: the state object and the admin check."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from starlette.requests import Request
from starlette.responses import JSONResponse

import keys

from ._db import Database
from ._oauth import OAuthStore, PortalAuthorizationServer


@dataclass
class PortalState:
    db: Database
    ca: keys.SshCertificateAuthority
    admin_token: str
    events_secret: bytes | None
    public_url: str = ""
    instance_ids: set[str] = field(default_factory=set)  # a sync view for authlib's callbacks
    oauth: PortalAuthorizationServer = field(init=False)

    def __post_init__(self) -> None:
        self.oauth = PortalAuthorizationServer(OAuthStore(), self.instance_ids.__contains__)


def state_of(request: Request) -> PortalState:
    state: PortalState = request.app.state.portal
    return state


def is_admin(request: Request) -> bool:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and secrets.compare_digest(
        token.strip(), state_of(request).admin_token
    )


def admin_only(request: Request) -> JSONResponse | None:
    """None for the admin; otherwise the refusal to send."""
    if "authorization" not in request.headers:
        return JSONResponse({"error": "admin token required"}, status_code=401)
    if not is_admin(request):
        return JSONResponse({"error": "wrong admin token"}, status_code=403)
    return None
