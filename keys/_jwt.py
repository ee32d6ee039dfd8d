"""Signed JWTs for instance URL updates: sign with the instance key, verify with its JWK.

joserfc does the JOSE work; this module fixes the policy:

1. Only asymmetric algorithms are accepted (RS512, RS256, Ed25519 and its
   older name EdDSA, which RFC 9864 deprecates; we sign Ed25519 keys with the
   new name and still accept the old) and the algorithm must fit the key
   type: no ``none``, no HMAC with a public key as the secret (the classic
   confusion attack).
2. The key is chosen by the header's ``kid`` among the instance's JWKs (with
   exactly one key and no ``kid``, that key).
3. ``iss`` must be the expected issuer; ``exp`` must be present and not past;
   ``iat`` not in the future; a token may not live longer than
   ``max_lifetime_s`` (all with ``leeway_s`` for clock skew).

Every failure is a ``JwtError`` whose message is safe to send to the client.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping, Sequence

from joserfc import jwt
from joserfc.errors import JoseError, SecurityWarning
from joserfc.jwk import OKPKey, RSAKey
from joserfc.jws import extract_compact

from ._errors import KeysError
from ._instance import InstanceKey, _import_public_jwk

_ALGORITHMS_FOR_KEY = {"RSA": ("RS512", "RS256"), "OKP": ("Ed25519", "EdDSA")}


class JwtError(KeysError):
    """A token was refused; the message says why, in words safe to show."""


def sign_jwt(
    key: InstanceKey,
    *,
    issuer: str,
    kid: str | None = None,
    lifetime_s: int = 300,
    claims: Mapping[str, object] | None = None,
    now: int | None = None,
) -> str:
    issued = int(time.time()) if now is None else now
    body: dict[str, object] = {**(claims or {}), "iss": issuer, "iat": issued,
                               "exp": issued + lifetime_s}  # fmt: skip
    header = {"alg": key.jwt_algorithm, "kid": kid or key.kid, "typ": "JWT"}
    signing_key: RSAKey | OKPKey
    if key.jwt_algorithm == "Ed25519":
        signing_key = OKPKey.import_key(key.private_key)  # type: ignore[arg-type]
    else:
        signing_key = RSAKey.import_key(key.private_key)  # type: ignore[arg-type]
    return jwt.encode(header, body, signing_key, algorithms=[key.jwt_algorithm])


def verify_jwt(
    token: str,
    jwks: Sequence[Mapping[str, object]],
    *,
    issuer: str,
    now: int | None = None,
    leeway_s: int = 30,
    max_lifetime_s: int = 3600,
) -> dict[str, object]:
    """The token's claims, if it is valid for ``issuer`` under one of ``jwks``."""
    try:
        header = extract_compact(token.encode("ascii")).protected
    except (JoseError, ValueError, UnicodeError, TypeError):
        raise JwtError("not a JWT") from None
    jwk = _pick_key(header, jwks)
    algorithm = header.get("alg")
    kty = str(jwk.get("kty"))
    if algorithm not in _ALGORITHMS_FOR_KEY.get(kty, ()):
        raise JwtError(f"algorithm {algorithm!r} is not accepted for this key")
    try:
        key = _import_public_jwk(jwk)
        with warnings.catch_warnings():
            # joserfc warns that "EdDSA" is deprecated (RFC 9864); older
            # clients still send it, and it names the same Ed25519 signature.
            warnings.simplefilter("ignore", SecurityWarning)
            decoded = jwt.decode(token, key, algorithms=[str(algorithm)])
    except KeysError:
        raise JwtError("the instance key is not usable") from None
    except (JoseError, ValueError, TypeError):
        raise JwtError("signature does not verify") from None
    claims = dict(decoded.claims)
    _check_claims(claims, issuer=issuer, now=int(time.time()) if now is None else now,
                  leeway_s=leeway_s, max_lifetime_s=max_lifetime_s)  # fmt: skip
    return claims


def _pick_key(
    header: Mapping[str, object], jwks: Sequence[Mapping[str, object]]
) -> Mapping[str, object]:
    kid = header.get("kid")
    if kid is None:
        if len(jwks) == 1:
            return jwks[0]
        raise JwtError("the token names no key (kid)")
    for jwk in jwks:
        if jwk.get("kid") == kid:
            return jwk
    raise JwtError("unknown kid")


def _check_claims(
    claims: Mapping[str, object], *, issuer: str, now: int, leeway_s: int, max_lifetime_s: int
) -> None:
    if claims.get("iss") != issuer:
        raise JwtError("wrong issuer")
    exp, iat = claims.get("exp"), claims.get("iat")
    if not isinstance(exp, int) or isinstance(exp, bool):
        raise JwtError("the token has no expiry")
    if exp + leeway_s < now:
        raise JwtError("token expired")
    if iat is not None:
        if not isinstance(iat, int) or isinstance(iat, bool):
            raise JwtError("invalid iat")
        if iat - leeway_s > now:
            raise JwtError("token issued in the future")
        if exp - iat > max_lifetime_s:
            raise JwtError("token lifetime too long")
    elif exp - now > max_lifetime_s:
        raise JwtError("token lifetime too long")
