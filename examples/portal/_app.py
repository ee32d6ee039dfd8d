"""The portal's HTTP API and page (Starlette, served by hypercorn's trio worker).

Contract (JSON unless said; errors are ``{"error": "..."}``):

* ``GET  /config.json`` — ``{"router": {"ssh": {"servers": [...], "host_keys": [...]}}}``
  (DIT4C's shape; ``host_keys`` pins the routers' SSH host keys).
* ``POST /instances`` (admin) ``{"owner", "id"?, "public_key"?, "key_type"?}`` → 201
  with ``id``, ``kid``, ``public_key``, ``uri_update_url`` and, when the portal
  made the key, ``private_key_pem`` (never stored here).
* ``GET  /instances/{id}/keys`` — JWKS, or authorized_keys lines with
  ``Accept: text/plain``: what the router authenticates the instance with.
* ``PUT  /instances/{id}/url`` — the public URL (text/plain) with
  ``Authorization: Bearer <JWT>`` signed by the instance key, ``iss`` = id.
  Accepted only when its host is exactly ``<id>.<domain>`` for one of the
  routers' domains, or when it is the URL a router's signed ``tunnel_up``
  event already gave for the instance; else 422 naming the rule. Accepting it
  registers its origin + ``/_hostmux/callback`` as the instance's only
  redirect URI. ``GET /instances/{id}/url`` — that URL (text/plain; 404 none yet).
* ``POST /instances/{id}/audit`` — the visitor audit of the instance's auth helper:
  ``{"v": 1, "instance", "batch", "records": [...]}`` with ``Authorization: Bearer
  <JWT>`` signed by the instance key, ``iss`` = id, and a ``batch_sha256`` claim (the
  hex SHA-256 of the body). ``instance`` must be the id of the URL. 200
  ``{"stored": n}``; a batch id seen before stores nothing (a retry after a lost
  answer). 401 unsigned or forged, 403 another instance's batch, 400 not a batch,
  413 over 1 MiB. The owner's page lists each visitor (``_audit``).
* ``GET  /.well-known/jwks.json`` — the portal's public signing key (revocations).
* ``POST /instances/{id}/certificate`` — an SSH user certificate, principal =
  id, from the portal's CA, ``{"certificate": LINE}``. The admin may ask for any
  key and lifetime (``{public_key?, valid_for_s?}``); the instance itself
  (``Authorization: Bearer <JWT>`` signed by its key, ``iss`` = id, as for its
  URL) may renew its own key's certificate while its policy allows renewal (else
  403), for the policy's lifetime. ``GET /ssh-ca.pub`` — the CA key.
* ``PUT /instances/{id}/certificate-policy`` (admin) ``{"renew": bool,
  "valid_for_s"?: N}``: the instance is bound to a job's lifetime — its keys URL
  lists no key from then on (only certificates open its tunnel), and whether it
  may renew them (a job that ends: ``renew`` false). Shown as
  ``certificate_policy`` in ``GET /instances/{id}``.
* ``POST /router-events`` — signed router events (see ``_events``): tunnel up/down,
  ``idle``/``active`` (the instance's state) and ``usage`` (summed per router);
  other kinds are answered 204 and ignored. A ``tunnel_up`` event's URL
  becomes the instance's URL (the router vouches for it). ``GET /admin/events``
  (admin): the last events whose signature verified (any kind), newest last.
* ``GET  /instances``, ``GET /instances/{id}`` (admin); ``PUT /admin/routers`` (admin):
  ``{"servers", "host_keys", "domains"?}``; ``GET /admin/stats`` (admin): request
  counts (``key_lookups``, ``events``, and per activity kind); ``GET /admin/activity``
  (admin): per instance, its idle state (``idle``/``active`` events) and its usage
  (``usage`` events summed over routers, and per router).
* The OAuth2 and sharing endpoints are in ``_login`` (``DELETE
  /instances/{id}/shares/{user}`` among them).
* ``GET  /`` — a page of instances and their live URLs; ``GET /healthz``.
"""

from __future__ import annotations

import datetime
import html
import json
import secrets
from typing import Any
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

import keys
from hostmux.names import InvalidName, check_name

from . import _routers
from ._audit import receive_audit, visitors_table
from ._body import body_at_most as _body_at_most
from ._db import Instance
from ._events import event_signature_ok
from ._login import (
    access,
    authorize,
    current_user,
    login_form,
    login_submit,
    logout,
    share,
    token,
    unshare,
)
from ._oauth import redirect_uri_for
from ._state import PortalState, admin_only, is_admin, state_of

# Certificates live as long as a job may: at most 30 days, at least a few seconds
# (a job that ends soon, or a test of one).
_MIN_CERT_S, _MAX_CERT_S = 5, 30 * 24 * 3600
# What an instance renews for when its policy names no lifetime.
_DEFAULT_CERT_S = 3600
# A certificate request is a public key line and a number.
_MAX_CERTIFICATE_REQUEST_BYTES = 16 * 1024
# The settings key of an instance's certificate policy.
_POLICY_PREFIX = "certificate_policy:"
# A public URL is short; anything longer is not one.
_MAX_URL_BYTES = 2048
# An event is a few short fields; the cap bounds what an unsigned sender can make us buffer.
_MAX_EVENT_BYTES = 16 * 1024
_ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"  # base32, lower case: DNS-safe
_USAGE_KEYS = ("requests", "bytes_in", "bytes_out", "connection_s", "websocket_s")


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _valid_label(text: str) -> bool:
    try:
        check_name(text)
    except InvalidName:
        return False
    return True


async def config_json(request: Request) -> Response:
    routers = await state_of(request).db.setting(_routers.SETTING, _routers.NONE)
    return JSONResponse({"router": {"ssh": routers}})


async def put_routers(request: Request) -> Response:
    if (refused := admin_only(request)) is not None:
        return refused
    try:
        body = await request.json()
        routers = _routers.router_settings(body)
    except ValueError as exc:  # json.JSONDecodeError is one too
        return _error(400, str(exc))
    db = state_of(request).db
    domains = routers.pop("domains")
    await db.set_setting(_routers.SETTING, routers)
    if "domains" in body:  # absent: the domains stay as they are
        await db.set_setting(_routers.DOMAINS_SETTING, domains)
    return Response(status_code=204)


async def create_instance(request: Request) -> Response:
    if (refused := admin_only(request)) is not None:
        return refused
    state = state_of(request)
    try:
        body = await request.json()
        owner = str(body["owner"])
    except (ValueError, KeyError, TypeError):
        return _error(400, "expected a JSON object with an owner")
    if not owner or len(owner) > 64:
        return _error(400, "owner: 1-64 characters")
    instance_id = str(
        body.get("id") or "i-" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(12))
    )
    if not _valid_label(instance_id):
        return _error(400, f"id {instance_id!r} is not a usable DNS label")
    created: dict[str, Any] = {}
    if body.get("public_key"):
        line = str(body["public_key"]).strip()
        try:
            jwk = keys.public_jwk_from_openssh(line)
        except keys.KeysError as exc:
            return _error(400, f"public_key: {exc}")
        public_key = line
    else:
        key_type = str(body.get("key_type", "rsa"))
        if key_type not in ("rsa", "ed25519"):
            return _error(400, "key_type: rsa or ed25519")
        key = keys.InstanceKey.generate(key_type)  # type: ignore[arg-type]
        jwk, public_key = key.public_jwk(), key.public_openssh()
        pem = key.private_pkcs1_pem() if key_type == "rsa" else key.private_pkcs8_pem()
        created["private_key_pem"] = pem.decode()
    if not await state.db.add_instance(instance_id, owner, public_key, jwk):
        return _error(409, f"instance {instance_id!r} exists")
    state.redirect_uris[instance_id] = None  # none until it publishes its URL
    base = state.public_url or str(request.base_url).rstrip("/")
    return JSONResponse(
        {
            "id": instance_id,
            "owner": owner,
            "kid": jwk["kid"],
            "public_key": public_key,
            "uri_update_url": f"{base}/instances/{instance_id}/url",
            **created,
        },
        status_code=201,
    )


async def instance_keys(request: Request) -> Response:
    state = state_of(request)
    state.counts["key_lookups"] += 1
    instance = await state.db.instance(request.path_params["id"])
    if instance is None:
        return _error(404, "no such instance")
    # Bound to a job's lifetime: only its certificates open a tunnel (none listed here).
    job_bound = await _certificate_policy(state, instance.id) is not None
    if "text/plain" in request.headers.get("accept", "") and "json" not in request.headers.get(
        "accept", ""
    ):
        return PlainTextResponse("" if job_bound else instance.public_key + "\n")
    listed = [] if job_bound else [instance.jwk]
    return Response(json.dumps({"keys": listed}), media_type="application/jwk-set+json")


async def _certificate_policy(state: PortalState, instance_id: str) -> dict[str, Any] | None:
    policy = await state.db.setting(_POLICY_PREFIX + instance_id, None)
    return policy if isinstance(policy, dict) else None


async def put_certificate_policy(request: Request) -> Response:
    if (refused := admin_only(request)) is not None:
        return refused
    state = state_of(request)
    instance = await state.db.instance(request.path_params["id"])
    if instance is None:
        return _error(404, "no such instance")
    try:
        body = await request.json()
        if not isinstance(body, dict) or not isinstance(body.get("renew"), bool):
            raise TypeError("renew")
        valid_for = int(body.get("valid_for_s", _DEFAULT_CERT_S))
    except (ValueError, TypeError, OverflowError):
        return _error(400, "expected {renew: true|false, valid_for_s?}")
    if not _MIN_CERT_S <= valid_for <= _MAX_CERT_S:
        return _error(400, f"valid_for_s: {_MIN_CERT_S}..{_MAX_CERT_S}")
    policy = {"renew": body["renew"], "valid_for_s": valid_for}
    await state.db.set_setting(_POLICY_PREFIX + instance.id, policy)
    return JSONResponse(policy)


async def update_url(request: Request) -> Response:
    state = state_of(request)
    instance_id = request.path_params["id"]
    instance = await state.db.instance(instance_id)
    if instance is None:
        return _error(404, "no such instance")
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        return _error(401, "a Bearer JWT signed by the instance key is required")
    try:
        keys.verify_jwt(token.strip(), [instance.jwk], issuer=instance_id)
    except keys.JwtError as exc:
        return _error(401, str(exc))
    body = await _body_at_most(request, _MAX_URL_BYTES)
    if body is None:
        return _error(422, "URL too long")
    url = body.decode("utf-8", "replace").strip().rstrip("/")
    domains: list[str] = await state.db.setting(_routers.DOMAINS_SETTING, [])
    vouched = instance.url is not None and url == instance.url  # from a signed tunnel_up
    if not (vouched or _routers.is_instance_url(url, instance_id, domains)):
        shown = ", ".join(domains) or "none configured"
        rule = f"http(s)://{instance_id}.<domain>[:port] for a router domain ({shown})"
        return _error(422, f"the URL must be {rule}, or the URL a router reported for it")
    await _register_url(state, instance_id, url)
    return Response(status_code=204)


async def _register_url(state: PortalState, instance_id: str, url: str) -> None:
    """Record the instance's URL and make its origin + callback the only redirect URI."""
    await state.db.set_url(instance_id, url)
    state.redirect_uris[instance_id] = redirect_uri_for(url)


async def published_url(request: Request) -> Response:
    instance = await state_of(request).db.instance(request.path_params["id"])
    if instance is None or not instance.url:
        return _error(404, "no URL published for this instance")
    return PlainTextResponse(instance.url + "\n")


async def jwks(request: Request) -> Response:
    key = state_of(request).signing_key.public_jwk()
    return Response(json.dumps({"keys": [key]}), media_type="application/jwk-set+json")


async def sign_certificate(request: Request) -> Response:
    """A certificate for the admin (any key, any lifetime in range), or a renewal for the
    instance itself (its own key, the policy's lifetime, only while renewal is allowed)."""
    state = state_of(request)
    instance = await state.db.instance(request.path_params["id"])
    if instance is None:
        return _error(404, "no such instance")
    raw = await _body_at_most(request, _MAX_CERTIFICATE_REQUEST_BYTES)
    if raw is None:
        return _error(413, "certificate request too large")
    try:
        body = json.loads(raw) if raw else {}
        if not isinstance(body, dict):
            raise TypeError("not an object")
        valid_for = int(body.get("valid_for_s", _DEFAULT_CERT_S))
        public_line = str(body.get("public_key") or instance.public_key)
    except (ValueError, TypeError, OverflowError):  # OverflowError: int(1e999)
        return _error(400, "expected {public_key?, valid_for_s?}")
    if not is_admin(request):
        refused = await _instance_renewal_refused(request, state, instance, public_line)
        if refused is not None:
            return refused
        policy = await _certificate_policy(state, instance.id) or {}
        valid_for = int(policy.get("valid_for_s", _DEFAULT_CERT_S))
    if not _MIN_CERT_S <= valid_for <= _MAX_CERT_S:
        return _error(400, f"valid_for_s: {_MIN_CERT_S}..{_MAX_CERT_S}")
    now = datetime.datetime.now(datetime.UTC)
    try:
        certificate = state.ca.sign_user_key(
            public_line,
            principals=[instance.id],
            key_id=f"portal:{instance.id}",
            valid_after=now - datetime.timedelta(seconds=60),
            valid_before=now + datetime.timedelta(seconds=valid_for),
        )
    except keys.KeysError as exc:
        return _error(400, str(exc))
    state.counts["certificates"] += 1
    return JSONResponse({"certificate": certificate})


async def _instance_renewal_refused(
    request: Request, state: PortalState, instance: Instance, public_line: str
) -> Response | None:
    """Why the instance may not have this certificate now (a response), or None."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        return _error(401, "the admin token or a Bearer JWT signed by the instance key")
    try:
        keys.verify_jwt(token.strip(), [instance.jwk], issuer=instance.id)
    except keys.JwtError as exc:
        return _error(401, str(exc))
    try:
        same_key = keys.fingerprint_of_public_line(public_line) == keys.fingerprint_of_public_line(
            instance.public_key
        )
    except keys.KeysError as exc:
        return _error(400, f"public_key: {exc}")
    if not same_key:
        return _error(403, "an instance may renew only its own key's certificate")
    policy = await _certificate_policy(state, instance.id)
    if policy is None or not policy.get("renew"):
        return _error(403, "renewal is not allowed for this instance (its job is ending)")
    return None


async def ssh_ca_public(request: Request) -> Response:
    return PlainTextResponse(state_of(request).ca.public_line + "\n")


async def router_events(request: Request) -> Response:
    state = state_of(request)
    state.counts["events"] += 1
    body = await _body_at_most(request, _MAX_EVENT_BYTES)
    if body is None:
        return _error(413, "event too large")
    if not event_signature_ok(
        state.events_secret, body, request.headers.get("x-hostmux-signature")
    ):
        return _error(401, "bad or missing X-Hostmux-Signature")
    try:
        event = json.loads(body)
        kind, name = str(event["event"]), str(event["name"])
        # Version 1 puts each kind's fields under "data"; older routers sent them flat.
        data = event["data"] if event.get("v") == 1 else event
        if not isinstance(data, dict):
            raise TypeError("data is not an object")
        # In a cluster each router says its id: the name is up while any holds it.
        router = str(data.get("router_id") or event.get("router", ""))
        since = float(event.get("ts", 0))
        url = str(data.get("url") or "").rstrip("/")
    except (ValueError, KeyError, TypeError, AttributeError):
        return _error(400, "expected {v, event, name, router, ts, data}")
    state.events.append(event)  # signed and well formed: kept for GET /admin/events
    if kind in ("idle", "active", "usage"):
        return await _activity_event(state, kind, name, router, since, data)
    if kind not in ("tunnel_up", "tunnel_down"):
        # The contract: 2xx for kinds this portal does not know, so the router moves on.
        return Response(status_code=204)
    if await state.db.instance(name) is not None:
        await state.db.set_tunnel(name, "up" if kind == "tunnel_up" else "down", router, since)
        # The router names the URL it serves the instance at, under the events secret:
        # that URL is the instance's (host exactly <name>.<the router's domain>).
        host = urlsplit(url).hostname or ""
        domain = host.split(".", 1)[1] if "." in host else ""
        if kind == "tunnel_up" and _routers.is_instance_url(url, name, [domain]):
            await _register_url(state, name, url)
    return Response(status_code=204)


async def _activity_event(
    state: PortalState, kind: str, name: str, router: str, since: float, data: dict[str, Any]
) -> Response:
    """``idle`` / ``active``: the instance's state now; ``usage``: one router's interval,
    summed (the contract: each router counts what it relayed, the portal adds them up)."""
    try:
        if kind == "usage":
            counts = {key: float(data[key]) for key in _USAGE_KEYS}
            if min(counts.values()) < 0:
                raise ValueError("negative usage")
        else:
            last = data.get("last_activity")
            last_activity = None if last is None else float(last)
    except (KeyError, TypeError, ValueError):
        return _error(400, f"a {kind} event's data is not usable")
    state.counts[kind] = state.counts.get(kind, 0) + 1
    if await state.db.instance(name) is None:
        return Response(status_code=204)  # not one of ours: nothing to keep
    if kind == "usage":
        await state.db.add_usage(name, router, counts)
    else:
        await state.db.set_activity(name, kind, since, last_activity, router)
    return Response(status_code=204)


async def activity(request: Request) -> Response:
    if (refused := admin_only(request)) is not None:
        return refused
    return JSONResponse(await state_of(request).db.activity())


async def stats(request: Request) -> Response:
    if (refused := admin_only(request)) is not None:
        return refused
    return JSONResponse(state_of(request).counts)


async def received_events(request: Request) -> Response:
    if (refused := admin_only(request)) is not None:
        return refused
    return JSONResponse(list(state_of(request).events))


async def list_instances(request: Request) -> Response:
    if (refused := admin_only(request)) is not None:
        return refused
    return JSONResponse([i.public_view() for i in await state_of(request).db.instances()])


async def get_instance(request: Request) -> Response:
    if (refused := admin_only(request)) is not None:
        return refused
    instance = await state_of(request).db.instance(request.path_params["id"])
    if instance is None:
        return _error(404, "no such instance")
    view = instance.public_view()
    view["certificate_policy"] = await _certificate_policy(state_of(request), instance.id)
    return JSONResponse(view)


async def home(request: Request) -> Response:
    user = current_user(request)
    if user is None:
        body = (
            '<h1>hostmux portal</h1><p><a href="/login" id=login-link>Log in</a> '
            "to see your instances.</p>"
        )
        return HTMLResponse(_html_page(body), headers={"cache-control": "no-store"})
    rows = []
    visitors = []
    db = state_of(request).db
    activities = await db.activity()
    for instance in await db.instances_for(user):
        url = html.escape(instance.url or "")
        link = (
            f'<a href="{url}" class=instance-url>{url}</a>' if instance.url else "<em>not yet</em>"
        )
        tunnel = html.escape(instance.tunnel_state or "unknown")
        seen = activities.get(instance.id, {})
        idle = html.escape(seen.get("activity", {}).get("state", "-"))
        used = seen.get("usage")
        usage = (
            f"{used['requests']} requests, {used['bytes_in'] + used['bytes_out']} bytes, "
            f"{used['websocket_s']:.0f} s WebSocket"
            if used
            else "-"
        )
        sharing = ""
        if instance.owner == user and await db.shared_with(instance.id):
            visitors.append(visitors_table(instance.id, await db.visitors(instance.id)))
        if instance.owner == user:
            sharing = (
                f'<form method=post action="/instances/{html.escape(instance.id)}/shares">'
                '<input name=user placeholder="user name" size=10>'
                "<button>share</button></form>"
            )
        rows.append(
            f"<tr><td><code>{html.escape(instance.id)}</code></td>"
            f"<td>{html.escape(instance.owner)}</td><td>{link}</td><td>{tunnel}</td>"
            f"<td class=activity>{idle}</td><td class=usage>{html.escape(usage)}</td>"
            f"<td>{sharing}</td></tr>"
        )
    body = (
        f"<h1>Your instances</h1><p>Logged in as <b id=user>{html.escape(user)}</b> &middot; "
        '<a href="/logout">log out</a></p><table><tr><th>instance</th><th>owner</th>'
        "<th>URL</th><th>tunnel</th><th>activity</th><th>usage</th><th></th></tr>"
        + "".join(rows)
        + "</table>"
        + "".join(visitors)
    )
    return HTMLResponse(_html_page(body), headers={"cache-control": "no-store"})


def _html_page(body: str) -> str:
    return (
        "<!doctype html><html><head><meta charset=utf-8><title>hostmux portal</title>"
        "<style>body{font-family:system-ui,sans-serif;max-width:60em;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;width:100%}td,th{border-bottom:1px solid #ddd;"
        "padding:.4em;text-align:left}form{margin:0}</style></head><body>" + body + "</body></html>"
    )


async def healthz(request: Request) -> Response:
    return PlainTextResponse("ok")


def build_app(state: PortalState, session_secret: str) -> Starlette:
    app = Starlette(
        middleware=[
            # The portal's own login: a signed, host-only cookie (never sent to instances).
            Middleware(
                SessionMiddleware,
                secret_key=session_secret,
                session_cookie="hostmux_portal",
                same_site="lax",
                max_age=12 * 3600,
            ),
        ],
        routes=[
            Route("/login", login_form, methods=["GET"]),
            Route("/login", login_submit, methods=["POST"]),
            Route("/logout", logout),
            Route("/oauth/authorize", authorize),
            Route("/oauth/token", token, methods=["POST"]),
            Route("/instances/{id}/access", access),
            Route("/instances/{id}/shares", share, methods=["POST"]),
            Route("/instances/{id}/shares/{user}", unshare, methods=["DELETE"]),
            Route("/instances/{id}/url", published_url, methods=["GET"]),
            Route("/.well-known/jwks.json", jwks, methods=["GET"]),
            Route("/", home),
            Route("/healthz", healthz),
            Route("/config.json", config_json),
            Route("/ssh-ca.pub", ssh_ca_public),
            Route("/admin/routers", put_routers, methods=["PUT"]),
            Route("/admin/stats", stats, methods=["GET"]),
            Route("/admin/activity", activity, methods=["GET"]),
            Route("/admin/events", received_events, methods=["GET"]),
            Route("/instances", create_instance, methods=["POST"]),
            Route("/instances", list_instances, methods=["GET"]),
            Route("/instances/{id}", get_instance, methods=["GET"]),
            Route("/instances/{id}/keys", instance_keys, methods=["GET"]),
            Route("/instances/{id}/url", update_url, methods=["PUT"]),
            Route("/instances/{id}/certificate", sign_certificate, methods=["POST"]),
            Route("/instances/{id}/audit", receive_audit, methods=["POST"]),
            Route("/instances/{id}/certificate-policy", put_certificate_policy, methods=["PUT"]),
            Route("/router-events", router_events, methods=["POST"]),
        ],
    )
    app.state.portal = state
    return app
