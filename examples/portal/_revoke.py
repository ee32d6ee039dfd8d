"""Pushing revocations to the instances' auth helpers, through the routers.

When a user logs out of the portal, or is removed from a shared instance, the
helpers concerned are told at once: ``POST <instance URL>/_hostmux/revoke``
with ``Authorization: Bearer <JWT>``, signed with the portal's key (published
at ``/.well-known/jwks.json``, which the helper fetches from the portal URL it
already trusts). Claims::

    iss "hostmux-portal", aud <instance id>, sub <user>, jti <random>,
    iat <now>, exp <now + 120>

meaning "every session of ``sub`` here issued at or before ``iat`` is over".
A push can be lost (the pod is restarting, a router is down): it is one try,
logged, and the helper's access re-check (every ``access_recheck_s``) is what
guarantees the user is out in time — the grant behind the session is already
deleted in the database.

``*.localhost`` URLs are reached on loopback (RFC 6761 6.3), as the listener
does, since no resolver is required to know those names.
"""

from __future__ import annotations

import secrets
import ssl
import sys
from pathlib import Path
from urllib.parse import urlsplit

import httpx

import keys

PORTAL_ISSUER = "hostmux-portal"
# Sent at once and retried by nobody: two minutes covers clock skew and a slow router.
REVOCATION_LIFETIME_S = 120
# One push: a router and a helper that are up answer within a second.
PUSH_TIMEOUT_S = 5.0
REVOKE_PATH = "/_hostmux/revoke"


def revocation_token(key: keys.InstanceKey, instance_id: str, user: str) -> str:
    claims = {"aud": instance_id, "sub": user, "jti": secrets.token_urlsafe(16)}
    return keys.sign_jwt(key, issuer=PORTAL_ISSUER, lifetime_s=REVOCATION_LIFETIME_S, claims=claims)


async def push_revocations(
    key: keys.InstanceKey, user: str, targets: list[tuple[str, str]], ca_file: Path | None
) -> None:
    """Tell each (instance id, published URL) in ``targets`` that ``user``'s sessions end.

    Error handling: each failure is one line on stderr; nothing is raised (the
    re-check covers a lost push).
    """
    verify: ssl.SSLContext | bool = True
    if ca_file is not None:
        try:
            verify = ssl.create_default_context(cafile=str(ca_file))
        except OSError as exc:
            print(f"portal: revocation push: CA file {ca_file}: {exc}", file=sys.stderr)
            return
    async with httpx.AsyncClient(timeout=PUSH_TIMEOUT_S, verify=verify) as client:
        for instance_id, url in targets:
            token = revocation_token(key, instance_id, user)
            try:
                response = await client.send(_revoke_request(client, url, token))
                outcome = str(response.status_code)
            except httpx.HTTPError as exc:
                outcome = f"failed ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
            print(f"portal: revocation_push instance={instance_id} user={user} "
                  f"status={outcome}", file=sys.stderr, flush=True)  # fmt: skip


def _revoke_request(client: httpx.AsyncClient, url: str, token: str) -> httpx.Request:
    parts = urlsplit(url)
    host = parts.hostname or ""
    headers = {"authorization": f"Bearer {token}"}
    if host == "localhost" or host.endswith(".localhost"):
        port = f":{parts.port}" if parts.port else ""
        return client.build_request(
            "POST", f"{parts.scheme}://127.0.0.1{port}{REVOKE_PATH}",
            headers={**headers, "host": parts.netloc},
            extensions={"sni_hostname": host} if parts.scheme == "https" else {},
        )  # fmt: skip
    return client.build_request("POST", f"{parts.scheme}://{parts.netloc}{REVOKE_PATH}",
                                headers=headers)  # fmt: skip
