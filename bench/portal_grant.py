"""The example portal behind the auth-helper row, and a real grant from it.

The auth helper re-asks its portal ``GET /instances/{id}/access`` with a
session's grant (the portal's OAuth access token for that login) on the
session's first request and then every ``access_recheck_s``; a session with no
grant, or one the portal does not know, is sent to login. So the row runs the
helper as users do: against the real example portal (``python -m
examples.portal serve``), with a session cookie sealed around a grant that
portal issued. The grant is obtained the documented way, with httpx:

1. as the admin, ``POST /instances`` creates the instance, owned by the bench user;
2. ``PUT /instances/{id}/url`` publishes its URL (a JWT signed with the
   instance key, as the listener does), which registers its redirect URI;
3. the bench user logs in (``POST /login``), authorizes the instance
   (``GET /oauth/authorize``, PKCE S256) and exchanges the code
   (``POST /oauth/token``) for the access token;
4. ``GET /instances/{id}/access`` with it must say ``allowed``, else the row
   fails here with one line rather than as 30 s of 302s and 502s under load.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
from processes import Proc, Processes

# The portal answers a handful of small requests on loopback; this bounds a stuck one.
PORTAL_CALL_TIMEOUT_S = 10.0
# The portal hashes passwords with scrypt and opens its database before listening.
PORTAL_START_TIMEOUT_S = 30.0
# Random secrets (admin token, password, PKCE verifier, state) carry this many bytes.
SECRET_BYTES = 32


@dataclass(frozen=True)
class Portal:
    """A started example portal: its process, base URL and admin token."""

    proc: Proc
    url: str
    admin_token: str


def start_portal(
    procs: Processes, state_dir: Path, port: int, code: Path, *, user: str, password: str,
    router_domain: str,
) -> Portal:  # fmt: skip
    """The example portal on 127.0.0.1:``port`` with ``user``, instances under ``router_domain``."""
    admin_token = secrets.token_urlsafe(SECRET_BYTES)
    proc = procs.spawn(
        "portal",
        [
            sys.executable, "-m", "examples.portal", "serve", "--host", "127.0.0.1",
            "--port", port, "--state-dir", state_dir, "--user", f"{user}:{password}",
            "--router-domain", router_domain,
        ],
        # The admin token through the environment keeps it out of the process list.
        env={**os.environ, "HOSTMUX_PORTAL_ADMIN_TOKEN": admin_token},
        cwd=code,
        wait_for=[port],
        timeout_s=PORTAL_START_TIMEOUT_S,
    )  # fmt: skip
    return Portal(proc, f"http://127.0.0.1:{port}", admin_token)


def _pkce() -> tuple[str, str]:
    """A PKCE verifier and its S256 challenge (RFC 7636 4.1-4.2)."""
    verifier = secrets.token_urlsafe(SECRET_BYTES)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _expect(response: httpx.Response, status: int, step: str) -> httpx.Response:
    if response.status_code != status:
        raise RuntimeError(
            f"portal: {step}: HTTP {response.status_code} (expected {status}): "
            f"{response.text[:200]}"
        )
    return response


def instance_grant(
    portal: Portal, instance_id: str, instance_url: str, *, user: str, password: str
) -> str:
    """Create ``instance_id`` for ``user``, publish ``instance_url``, log in: the grant.

    Runs the product's own ``keys`` (imported here, from the code under test).
    """
    import keys

    admin = {"authorization": f"Bearer {portal.admin_token}"}
    with httpx.Client(base_url=portal.url, timeout=PORTAL_CALL_TIMEOUT_S) as client:
        created = _expect(
            client.post("/instances", json={"owner": user, "id": instance_id}, headers=admin),
            201, "create the instance",
        ).json()  # fmt: skip
        key = keys.InstanceKey.from_private_bytes(created["private_key_pem"].encode())
        jwt = keys.sign_jwt(key, issuer=instance_id)
        _expect(
            client.put(f"/instances/{instance_id}/url", content=instance_url,
                       headers={"authorization": f"Bearer {jwt}"}),
            204, "publish the instance URL",
        )  # fmt: skip
        _expect(
            client.post("/login", data={"username": user, "password": password, "next": "/"}),
            303, "log in",
        )  # fmt: skip
        verifier, challenge = _pkce()
        state = secrets.token_urlsafe(SECRET_BYTES)
        redirect_uri = instance_url.rstrip("/") + "/_hostmux/callback"
        authorized = _expect(
            client.get("/oauth/authorize", params={
                "response_type": "code", "client_id": instance_id, "redirect_uri": redirect_uri,
                "state": state, "code_challenge": challenge, "code_challenge_method": "S256",
                "scope": "openid",
            }),
            302, "authorize",
        )  # fmt: skip
        answer = parse_qs(urlsplit(authorized.headers["location"]).query)
        if answer.get("state") != [state] or "code" not in answer:
            raise RuntimeError(f"portal: authorize: unexpected redirect {authorized.headers}")
        token = _expect(
            client.post("/oauth/token", data={
                "grant_type": "authorization_code", "code": answer["code"][0],
                "client_id": instance_id, "redirect_uri": redirect_uri, "code_verifier": verifier,
            }),
            200, "exchange the code",
        ).json()["access_token"]  # fmt: skip
        access = _expect(
            client.get(f"/instances/{instance_id}/access",
                       headers={"authorization": f"Bearer {token}"}),
            200, "check access",
        ).json()  # fmt: skip
    if access != {"user": user, "allowed": True}:
        raise RuntimeError(f"portal: the grant is not allowed on {instance_id}: {access}")
    return str(token)
