"""What every portal request handler shares: the state object and the admin check."""

from __future__ import annotations

import secrets
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from starlette.requests import Request
from starlette.responses import JSONResponse

import keys

from ._db import Database
from ._oauth import OAuthStore, PortalAuthorizationServer

# The router events kept for GET /admin/events (the newest; older ones drop off).
EVENTS_KEPT = 1000


@dataclass
class PortalState:
    db: Database
    ca: keys.SshCertificateAuthority
    admin_token: str
    events_secret: bytes | None
    public_url: str = ""
    # Instance id -> its registered redirect URI (None until it publishes a URL):
    # a sync view of the database for authlib's callbacks.
    redirect_uris: dict[str, str | None] = field(default_factory=dict)
    # Signs the revocations pushed to the helpers; its public half is /.well-known/jwks.json.
    signing_key: keys.InstanceKey = field(
        default_factory=lambda: keys.InstanceKey.generate("ed25519")
    )
    # The CA that signs the routers' certificates, for pushes (None: the system's trust).
    router_ca_file: Path | None = None
    # Requests served so far, by kind ("key_lookups": GET /instances/{id}/keys), for
    # GET /admin/stats: what routers cost the portal (the holding page's rate limit).
    counts: dict[str, int] = field(
        default_factory=lambda: {"key_lookups": 0, "events": 0, "certificates": 0}
    )
    # The router events whose signature verified, newest last (GET /admin/events).
    events: deque[dict[str, object]] = field(default_factory=lambda: deque(maxlen=EVENTS_KEPT))
    oauth: PortalAuthorizationServer = field(init=False)

    def __post_init__(self) -> None:
        self.oauth = PortalAuthorizationServer(OAuthStore(), self.redirect_uris)


def _new_signing_key() -> keys.InstanceKey:
    return keys.InstanceKey.generate("ed25519")


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
