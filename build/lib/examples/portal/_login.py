"""Portal users: password login, the OAuth2 endpoints the helpers use, sharing.

* ``GET/POST /login`` (``next`` must be a path on the portal), ``GET /logout``;
  the portal's own session is a signed, host-only cookie (Starlette's
  SessionMiddleware).
* ``GET /oauth/authorize`` — a logged-in user is sent straight back to the
  instance with a code (first-party: no consent page); others log in first.
* ``POST /oauth/token`` — code + PKCE verifier → short-lived access token.
* ``GET /instances/{id}/access`` — with that token: may its user use the instance?
* ``POST /instances/{id}/shares`` — the owner (or admin) shares with a user.

Passwords are hashed with scrypt (stdlib), compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import json
import secrets
from typing import Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from ._oauth import PortalAuthorizationServer, PortalRequest
from ._state import is_admin, state_of

# scrypt parameters: interactive-login cost (RFC 7914 suggests N=2^14 for that).
_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P)
    return f"scrypt${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}${salt.hex()}${digest.hex()}"


def check_password(password: str, stored: str | None) -> bool:
    try:
        scheme, n, r, p, salt, digest = (stored or "").split("$")
        if scheme != "scrypt":
            return False
        computed = hashlib.scrypt(
            password.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p)
        )
    except ValueError:
        hashlib.scrypt(b"", salt=b"0" * 16, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P)  # same cost
        return False
    return hmac.compare_digest(computed.hex(), digest)


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(
        "<!doctype html><html><head><meta charset=utf-8>"
        f"<title>{html.escape(title)}</title><style>body{{font-family:system-ui,sans-serif;"
        "max-width:50em;margin:2em auto;padding:0 1em}input{margin:.2em}table{border-collapse:"
        "collapse;width:100%}td,th{border-bottom:1px solid #ddd;padding:.4em;text-align:left}"
        f"</style></head><body>{body}</body></html>",
        status_code=status,
        headers={"cache-control": "no-store"},
    )


def _local_path(value: str | None) -> str:
    """``value`` if it is a path on the portal itself, else ``/`` (no open redirect)."""
    if not value or not value.startswith("/") or value.startswith(("//", "/\\")):
        return "/"
    return value


def current_user(request: Request) -> str | None:
    user = request.session.get("user")
    return user if isinstance(user, str) else None


async def login_form(request: Request) -> Response:
    next_path = html.escape(_local_path(request.query_params.get("next")), quote=True)
    error = request.query_params.get("error")
    message = "<p style=color:#b00>Wrong user name or password.</p>" if error else ""
    hidden = f'<input type=hidden name=next value="{next_path}">'
    return _page(
        "Log in",
        f"<h1>Log in to the portal</h1>{message}"
        f'<form method=post action="/login">{hidden}'
        "<label>User <input name=username id=username autocomplete=username></label><br>"
        "<label>Password <input name=password id=password type=password "
        "autocomplete=current-password></label><br>"
        "<button type=submit id=login>Log in</button></form>",
    )


async def login_submit(request: Request) -> Response:
    form = await request.form()
    user, password = str(form.get("username", "")), str(form.get("password", ""))
    next_path = _local_path(str(form.get("next", "/")))
    if not check_password(password, await state_of(request).db.password_hash(user)):
        return RedirectResponse(f"/login?error=1&next={quote(next_path)}", status_code=303)
    request.session.clear()
    request.session["user"] = user
    return RedirectResponse(next_path, status_code=303)


async def logout(request: Request) -> Response:
    request.session.clear()
    return _page("Logged out", '<h1>Logged out</h1><p><a href="/login">Log in again</a></p>')


def _oauth_request(request: Request, data: dict[str, str]) -> PortalRequest:
    return PortalRequest(request.method, str(request.url), dict(request.headers), data)


def _authlib_response(status: int, body: Any, headers: Any) -> Response:
    header_dict = dict(headers or [])
    if isinstance(body, dict):
        return JSONResponse(body, status_code=status, headers=header_dict)
    return Response(body or b"", status_code=status, headers=header_dict)


async def authorize(request: Request) -> Response:
    user = current_user(request)
    if user is None:
        here = request.url.path + ("?" + request.url.query if request.url.query else "")
        return RedirectResponse(f"/login?next={quote(here, safe='')}", status_code=303)
    server: PortalAuthorizationServer = state_of(request).oauth
    oauth_request = _oauth_request(request, dict(request.query_params))
    try:
        grant = server.get_consent_grant(oauth_request, end_user=user)
    except Exception as exc:  # authlib's OAuth2Error family: a bad client or redirect URI
        return _page("Login refused", f"<h1>Login refused</h1><p>{html.escape(str(exc))}</p>", 400)
    oauth_request.user = user
    return _authlib_response(*server.create_authorization_response(oauth_request, user, grant))


async def token(request: Request) -> Response:
    form = await request.form()
    data = {k: str(v) for k, v in form.items()}
    server: PortalAuthorizationServer = state_of(request).oauth
    server.store.expire()
    return _authlib_response(*server.create_token_response(_oauth_request(request, data)))


async def access(request: Request) -> Response:
    state = state_of(request)
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    grant = state.oauth.store.token(value.strip()) if scheme.lower() == "bearer" else None
    instance_id = request.path_params["id"]
    if grant is None or grant.client_id != instance_id:
        return JSONResponse({"error": "invalid or expired token"}, status_code=401)
    instance = await state.db.instance(instance_id)
    if instance is None:
        return JSONResponse({"error": "no such instance"}, status_code=404)
    allowed = grant.user == instance.owner or grant.user in await state.db.shared_with(instance_id)
    return JSONResponse({"user": grant.user, "allowed": allowed})


async def share(request: Request) -> Response:
    state = state_of(request)
    instance = await state.db.instance(request.path_params["id"])
    if instance is None:
        return JSONResponse({"error": "no such instance"}, status_code=404)
    user = current_user(request)
    if not (is_admin(request) or user == instance.owner):
        return JSONResponse({"error": "only the owner may share"}, status_code=403)
    if request.headers.get("content-type", "").startswith("application/json"):
        body = json.loads(await request.body() or b"{}")
        with_user = str(body.get("user", ""))
    else:
        with_user = str((await request.form()).get("user", ""))
    if not with_user:
        return JSONResponse({"error": "user is required"}, status_code=400)
    await state.db.ensure_user(with_user)
    await state.db.share(instance.id, with_user)
    if user is not None and not is_admin(request):
        return RedirectResponse("/", status_code=303)
    return Response(status_code=204)
