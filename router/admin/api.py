"""The admin API: routes, JSON shapes, the token check and the audit log.

Routes (all JSON; every ``/api/`` call needs ``Authorization: Bearer TOKEN``)::

    GET  /api/tunnels   {"tunnels": [TUNNEL...]}
    POST /api/kick      {"name": N}                       -> {"name", "kicked"}
    GET  /api/blocks    {"blocks": [BLOCK...]}
    POST /api/block     {"kind", "value", "reason"?}       -> {"block", "kicked"}
    POST /api/unblock   {"kind", "value"}                  -> {"unblocked": BLOCK}
    POST /api/drain     {}                                 -> {"draining": [WHO...]}
    GET  /  /status.js  /status.css                        the status page (no token)

Rules:

1. No token, or a wrong one: 401 with ``WWW-Authenticate: Bearer``; the
   token is never in a cookie, so another site cannot make a browser call
   the API (no CSRF), and the page keeps it in sessionStorage.
2. Every action (kick, block, unblock, drain) and every refused token is one
   log line with who asked: the client's address and the token's id.
3. Every reply carries a strict Content-Security-Policy (scripts, styles and
   fetches from this origin only, no inline code), ``nosniff``, no referrer,
   no caching and no framing.
4. Bad JSON or a bad value is 400 with one line saying why; an unknown path
   404; a known path with the wrong method 405.

What a backend does (``AdminBackend``) is the router's own tunnels and a
state_dir file (``router.admin.local``) or, with a registry, the cluster's
(``router.admin.cluster``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from hostmux.log import fields
from router.admin.http import AdminReply, AdminRequest
from router.admin.token import AdminToken
from router.blocks import BadBlock, Block, Kind, checked

log = logging.getLogger("hostmux.admin")

SECURITY_HEADERS = (
    (
        "content-security-policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("cache-control", "no-store"),
    ("x-frame-options", "DENY"),
)
_PAGE_DIR = Path(__file__).resolve().parent
_PAGE_FILES = {
    "/": ("status.html", "text/html; charset=utf-8"),
    "/status.js": ("status.js", "text/javascript; charset=utf-8"),
    "/status.css": ("status.css", "text/css; charset=utf-8"),
}


class AdminUnavailable(Exception):
    """What an admin call needs cannot be reached (the registry): answered 503."""


class AdminBackend(Protocol):
    """What the admin API acts on: one router, or the cluster through its registry."""

    async def tunnels(self) -> list[dict[str, Any]]:
        """Every tunnel, as ``tunnel_json`` shapes it."""
        ...

    async def kick(self, name: str, reason: str) -> int:
        """Close the tunnels serving ``name``: how many (a cluster: how many routers hold it)."""
        ...

    async def blocks(self) -> list[Block]: ...

    async def block(self, block: Block) -> int:
        """Keep ``block`` (persisted) and close the tunnels it matches: how many."""
        ...

    async def unblock(self, kind: Kind, value: str) -> Block | None:
        """Remove a block; the one removed, or None if there was none."""
        ...

    async def drain(self) -> list[str]:
        """Start draining (see ``router.server.drain_router``): who drains."""
        ...


@dataclass(frozen=True)
class TunnelFacts:
    """One tunnel as the API shows it (made by the router that holds it)."""

    name: str
    owner: str
    peer: str
    transport: str
    since: float
    requests: int
    bytes_in: int
    bytes_out: int
    websockets_open: int
    last_activity: float | None
    router: str | None
    # Activity as idleness sees it (``router.activity``: a request or WebSocket traffic
    # above idle_min_bytes_per_minute; in a cluster the cluster-wide value as last read)
    # and whether the name is idle; None where the router keeps no activity.
    last_active: float | None = None
    idle: bool | None = None
    # A pool's member (``router.pool``): its member id and channels open to it; else None.
    pool_member: str | None = None
    outstanding: int | None = None

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


class AdminApi:
    """Answers admin requests (rules 1-4) from a backend."""

    def __init__(self, token: AdminToken, backend: AdminBackend) -> None:
        self._token = token
        self._backend = backend
        self._routes: dict[str, tuple[str, Callable[[AdminRequest], Awaitable[AdminReply]]]] = {
            "/api/tunnels": ("GET", self._tunnels),
            "/api/kick": ("POST", self._kick),
            "/api/blocks": ("GET", self._blocks),
            "/api/block": ("POST", self._block),
            "/api/unblock": ("POST", self._unblock),
            "/api/drain": ("POST", self._drain),
        }

    def __repr__(self) -> str:
        return f"<AdminApi {self._token!r} {self._backend!r}>"

    async def handle(self, request: AdminRequest) -> AdminReply:
        if request.path in _PAGE_FILES:
            if request.method not in ("GET", "HEAD"):
                return _error(405, "use GET")
            filename, content_type = _PAGE_FILES[request.path]
            return AdminReply(200, (_PAGE_DIR / filename).read_bytes(), content_type)
        route = self._routes.get(request.path)
        if route is None:
            return _error(404, f"no such admin path: {request.path[:100]}")
        if not self._token.accepts(request.headers.get("authorization")):
            log.warning(fields("admin_unauthorized", peer=request.peer, path=request.path))
            reply = _error(401, "a valid admin token is needed (Authorization: Bearer TOKEN)")
            return AdminReply(401, reply.body, headers=(("www-authenticate", "Bearer"),))
        method, answer = route
        if request.method != method:
            return _error(405, f"use {method}")
        try:
            return await answer(request)
        except _BadRequest as exc:
            return _error(400, str(exc))
        except AdminUnavailable as exc:
            log.warning(fields("admin_unavailable", path=request.path, error=str(exc)))
            return _error(503, str(exc))

    def _audit(self, request: AdminRequest, action: str, **values: Any) -> None:
        log.info(
            fields(
                "admin_action", action=action, **values, peer=request.peer,
                token=self._token.token_id,
            )
        )  # fmt: skip

    async def _tunnels(self, request: AdminRequest) -> AdminReply:
        tunnels = await self._backend.tunnels()
        tunnels.sort(key=lambda t: (t["name"], t["router"] or ""))
        return _json(200, {"tunnels": tunnels})

    async def _kick(self, request: AdminRequest) -> AdminReply:
        body = _body(request)
        name = body.get("name")
        if not isinstance(name, str) or not name:
            raise _BadRequest("name: the tunnel's name")
        self._audit(request, "kick", name=name)
        kicked = await self._backend.kick(name.lower(), "closed by the router's operator")
        if not kicked:
            return _error(404, f"no tunnel is called {name!r}")
        return _json(200, {"name": name.lower(), "kicked": kicked})

    async def _blocks(self, request: AdminRequest) -> AdminReply:
        blocks = await self._backend.blocks()
        return _json(200, {"blocks": [b.to_json() for b in blocks]})

    async def _block(self, request: AdminRequest) -> AdminReply:
        body = _body(request)
        kind, value = _kind_value(body)
        reason = body.get("reason", "")
        if not isinstance(reason, str):
            raise _BadRequest("reason: a string")
        try:
            block = Block.from_json(
                {"kind": kind, "value": value, "reason": reason, "by": self._who(request)}
            )
        except BadBlock as exc:
            raise _BadRequest(str(exc)) from None
        block = Block(block.kind, block.value, block.by, reason=block.reason)  # at: now
        self._audit(request, "block", kind=kind, value=value)
        kicked = await self._backend.block(block)
        return _json(200, {"block": block.to_json(), "kicked": kicked})

    async def _unblock(self, request: AdminRequest) -> AdminReply:
        kind, value = _kind_value(_body(request))
        self._audit(request, "unblock", kind=kind, value=value)
        removed = await self._backend.unblock(kind, value)
        if removed is None:
            return _error(404, f"no block on {kind} {value!r}")
        return _json(200, {"unblocked": removed.to_json()})

    async def _drain(self, request: AdminRequest) -> AdminReply:
        self._audit(request, "drain")
        return _json(200, {"draining": await self._backend.drain()})

    def _who(self, request: AdminRequest) -> str:
        return f"{request.peer} {self._token.token_id}"


class _BadRequest(Exception):
    pass


def _body(request: AdminRequest) -> dict[str, Any]:
    if not request.body:
        return {}
    try:
        body = json.loads(request.body)
    except (ValueError, UnicodeDecodeError):
        raise _BadRequest("the body is not JSON") from None
    if not isinstance(body, dict):
        raise _BadRequest("the body is a JSON object")
    return body


def _kind_value(body: dict[str, Any]) -> tuple[Kind, str]:
    try:
        return checked(body.get("kind"), body.get("value"))
    except BadBlock as exc:
        raise _BadRequest(str(exc)) from None


def _json(status: int, value: Any) -> AdminReply:
    return AdminReply(status, json.dumps(value, indent=1).encode() + b"\n")


def _error(status: int, message: str) -> AdminReply:
    return _json(status, {"error": message})
