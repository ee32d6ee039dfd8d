"""Portal users: password login, the OAuth2 endpoints the helpers use, sharing.

* ``GET/POST /login`` (``next`` must be a path on the portal), ``GET /logout``;
  the portal's own session is a signed, host-only cookie (Starlette's
  SessionMiddleware). Logging out also deletes the user's grants and pushes a
  revocation to every instance the user may use (``_revoke``).
* ``GET /oauth/authorize`` — a logged-in user is sent straight back to the
  instance with a code (first-party: no consent page); others log in first.
  A ``redirect_uri`` other than the instance's registered one is refused with
  a page that says so, and nobody is redirected anywhere.
* ``POST /oauth/token`` — code + PKCE verifier → access token (the grant,
  stored hashed, ``GRANT_LIFETIME_S``).
* ``GET /instances/{id}/access`` — with that token: may its user use the
  instance? (the helper asks again every ``access_recheck_s``).
* ``POST /instances/{id}/shares`` — the owner (or admin) shares with a user;
  ``DELETE /instances/{id}/shares/{user}`` removes the share, deletes that
  user's grants for the instance and pushes a revocation to it.

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

from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from ._oauth import PortalAuthorizationServer, PortalRequest
from ._revoke import push_revocations
from ._state import PortalState, is_admin, state_of

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
    user = current_user(request)
    request.session.clear()
    page = _page("Logged out", '<h1>Logged out</h1><p><a href="/login">Log in again</a></p>')
    if user is None:
        return page
    state = state_of(request)
    await state.db.revoke_grants(user)
    targets = [(i.id, i.url) for i in await state.db.instances_for(user) if i.url]
    page.background = _push(state, user, targets)
    return page


def _push(state: PortalState, user: str, targets: list[tuple[str, str]]) -> BackgroundTask:
    """The revocation pushes, run after the response is sent (``_revoke``)."""
    return BackgroundTask(push_revocations, state.signing_key, user, targets, state.router_ca_file)


def grant_hash(token_value: str) -> str:
    """Grants are stored as SHA-256 digests: a leaked database holds no usable token."""
    return hashlib.sha256(token_value.encode()).hexdigest()


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
    state = state_of(request)
    server: PortalAuthorizationServer = state.oauth
    oauth_request = _oauth_request(request, dict(request.query_params))
    if (refused := _redirect_uri_refusal(state, request)) is not None:
        return _page("Login refused", f"<h1>Login refused</h1><p>{html.escape(refused)}</p>", 400)
    try:
        grant = server.get_consent_grant(oauth_request, end_user=user)
    except Exception as exc:  # authlib's OAuth2Error family: a bad client or redirect URI
        return _page("Login refused", f"<h1>Login refused</h1><p>{html.escape(str(exc))}</p>", 400)
    oauth_request.user = user
    return _authlib_response(*server.create_authorization_response(oauth_request, user, grant))


def _redirect_uri_refusal(state: PortalState, request: Request) -> str | None:
    """Why this authorize request's ``redirect_uri`` is refused (None: it is the one).

    RFC 9700 2.1: exact string comparison with the registered URI. Unknown
    clients are left to authlib's own error.
    """
    instance_id = request.query_params.get("client_id", "")
    if instance_id not in state.redirect_uris:
        return None
    registered = state.redirect_uris[instance_id]
    asked = request.query_params.get("redirect_uri", "")
    if registered is None:
        return (f"instance {instance_id} has not published its URL yet, so it has no "
                "redirect URI; try again once it is running")  # fmt: skip
    if asked != registered:
        return (f"redirect_uri {asked!r} is not the one registered for instance {instance_id} "
                f"({registered!r}); redirect URIs must match exactly")  # fmt: skip
    return None


async def token(request: Request) -> Response:
    form = await request.form()
    data = {k: str(v) for k, v in form.items()}
    state = state_of(request)
    server: PortalAuthorizationServer = state.oauth
    server.store.expire()
    status, body, headers = server.create_token_response(_oauth_request(request, data))
    if status == 200 and isinstance(body, dict):
        # The grant goes to the database (hashed) so that a restart keeps it.
        issued = server.store.tokens.pop(str(body.get("access_token")), None)
        if issued is not None:
            await state.db.add_grant(
                grant_hash(body["access_token"]), issued.user, issued.client_id, issued.expires
            )
    return _authlib_response(status, body, headers)


async def access(request: Request) -> Response:
    state = state_of(request)
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    grant = await state.db.grant(grant_hash(value.strip())) if scheme.lower() == "bearer" else None
    instance_id = request.path_params["id"]
    if grant is None or grant[1] != instance_id:
        return JSONResponse({"error": "invalid or expired token"}, status_code=401)
    user = grant[0]
    instance = await state.db.instance(instance_id)
    if instance is None:
        return JSONResponse({"error": "no such instance"}, status_code=404)
    allowed = user == instance.owner or user in await state.db.shared_with(instance_id)
    return JSONResponse({"user": user, "allowed": allowed})


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


async def unshare(request: Request) -> Response:
    """``DELETE /instances/{id}/shares/{user}``: the user is out of the instance.

    The share goes, the user's grants for the instance are deleted (the next
    access re-check fails) and a revocation is pushed to the instance's helper.
    """
    state = state_of(request)
    instance = await state.db.instance(request.path_params["id"])
    if instance is None:
        return JSONResponse({"error": "no such instance"}, status_code=404)
    if not (is_admin(request) or current_user(request) == instance.owner):
        return JSONResponse({"error": "only the owner may unshare"}, status_code=403)
    user = request.path_params["user"]
    if not await state.db.unshare(instance.id, user):
        return JSONResponse({"error": f"not shared with {user}"}, status_code=404)
    await state.db.revoke_grants(user, instance.id)
    targets = [(instance.id, instance.url)] if instance.url else []
    return Response(status_code=204, background=_push(state, user, targets))
