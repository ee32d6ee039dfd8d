"""Revocations the portal pushes: a JWT in ``POST /_hostmux/revoke`` (pure checks).

The portal signs with its own key (EdDSA or RS512), whose public half it
publishes at ``{portal}/.well-known/jwks.json``; the helper already trusts
``portal_url`` for logins, so it trusts the keys found there. The token says::

    {"iss": "hostmux-portal", "aud": "<instance id>", "sub": "<user>",
     "jti": "<random>", "iat": <unix s>, "exp": <iat + at most 300>}

and means: every session of ``sub`` on instance ``aud`` issued at or before
``iat`` is revoked. The rules, checked in this order:

1. Signature, algorithm and times as ``keys.verify_jwt`` checks them (issuer,
   ``exp`` present and not past, a lifetime of at most ``MAX_LIFETIME_S``).
2. ``aud`` is this instance: a revocation for a sibling cannot be replayed here.
3. ``sub`` and ``jti`` are non-empty strings; a ``jti`` already used is a
   replay (``Revocations.use_jti``); past ``exp`` the token is refused anyway.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import keys

PORTAL_ISSUER = "hostmux-portal"
# A pushed revocation is delivered at once or retried soon: five minutes is plenty.
MAX_LIFETIME_S = 300


class RevocationRefused(Exception):
    """The token is not a revocation for this instance; the message says why."""


@dataclass(frozen=True)
class Revocation:
    user: str
    at: int  # sessions issued at or before this moment are revoked
    jti: str
    exp: int


def read_revocation(
    token: str, jwks: Sequence[Mapping[str, object]], instance: str, *, now: int | None = None
) -> Revocation:
    try:
        claims = keys.verify_jwt(
            token, jwks, issuer=PORTAL_ISSUER, now=now, max_lifetime_s=MAX_LIFETIME_S
        )
    except keys.JwtError as exc:
        raise RevocationRefused(str(exc)) from None
    if claims.get("aud") != instance:
        raise RevocationRefused("the token is for another instance (aud)")
    user, jti, iat, exp = (claims.get(n) for n in ("sub", "jti", "iat", "exp"))
    if not isinstance(user, str) or not user or not isinstance(jti, str) or not jti:
        raise RevocationRefused("the token names no user (sub) or has no jti")
    if not isinstance(iat, int) or not isinstance(exp, int):
        raise RevocationRefused("iat and exp must be integers")
    return Revocation(user=user, at=iat, jti=jti, exp=exp)
