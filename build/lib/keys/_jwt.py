"""Signed JWTs for instance URL updates: sign with the instance key, verify with its JWK.

joserfc does the JOSE work (compact JWS, signatures); this module fixes the
policy, in this order:

1. The key is chosen by the header's ``kid`` among the instance's JWKs (with
   exactly one key and no ``kid``, that key).
2. Only asymmetric algorithms are accepted, and only the ones that fit the
   key: RS512 or RS256 for RSA, EdDSA for OKP Ed25519. So no ``none``, and no
   HMAC keyed with the public key (the classic algorithm-confusion attack).
3. The signature must verify.
4. ``iss`` must be the expected issuer; ``exp`` must be present and not past;
   ``iat`` and ``nbf`` not in the future; the token may not live longer than
   ``max_lifetime_s`` (``exp - iat``). Times allow ``leeway_s`` of clock skew
   and must be finite numbers.

Every failure is a :class:`JwtError` whose message is safe to send to the
client; garbage input raises nothing else.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

from joserfc import jwt
from joserfc.errors import BadSignatureError, JoseError
from joserfc.jwa import EdDSAAlgorithm
from joserfc.jws import JWSRegistry, extract_compact

from ._errors import KeysError
from ._instance import InstanceKey, jose_public_key

# Claims sign_jwt sets itself; a caller's `claims` may not override them.
_RESERVED_CLAIMS = frozenset({"iss", "iat", "exp"})

# 9999-12-31T23:59:59Z: no real token names a later time, and bounding times
# keeps arithmetic on them exact and free of overflow.
_LATEST_NUMERIC_DATE = 253_402_300_799


class JwtError(KeysError):
    """A token was refused; the message says why, in words safe to show."""


class _EdDSAWithoutWarning(EdDSAAlgorithm):
    # RFC 9864 deprecates "EdDSA" because the name does not say which curve,
    # and joserfc warns on every use. We accept it only with an Ed25519 key,
    # which settles the curve, so the warning would say nothing: silence it
    # here rather than with a process-wide (and thread-unsafe) warnings filter.
    security_warning = ""  # joserfc warns only when this is non-empty


class _Registry(JWSRegistry):
    """joserfc's JWS registry with the quiet EdDSA; allowed algorithms per instance."""

    algorithms = {**JWSRegistry.algorithms, "EdDSA": _EdDSAWithoutWarning()}


def sign_jwt(
    key: InstanceKey,
    *,
    issuer: str,
    kid: str | None = None,
    lifetime_s: int = 300,
    claims: Mapping[str, object] | None = None,
    now: int | None = None,
) -> str:
    """A compact JWS over ``iss``, ``iat``, ``exp`` (``iat + lifetime_s``) and ``claims``.

    The header is ``{"alg": key.jwt_algorithm, "kid": kid or key.kid,
    "typ": "JWT"}``. Raises :class:`KeysError` for a lifetime under one second
    or ``claims`` that try to set ``iss``, ``iat`` or ``exp``.
    """
    if lifetime_s < 1:
        raise KeysError(f"a token lifetime must be at least 1 second, not {lifetime_s}")
    extra = dict(claims or {})
    if clash := sorted(_RESERVED_CLAIMS & extra.keys()):
        raise KeysError(f"claims may not set {', '.join(clash)}: use the arguments")
    issued = int(time.time()) if now is None else now
    body = {**extra, "iss": issuer, "iat": issued, "exp": issued + lifetime_s}
    algorithm = key.jwt_algorithm
    header = {"alg": algorithm, "kid": kid or key.kid, "typ": "JWT"}
    return jwt.encode(header, body, key.jose_key, registry=_Registry(algorithms=[algorithm]))


def verify_jwt(
    token: str,
    jwks: Sequence[Mapping[str, object]],
    *,
    issuer: str,
    now: int | None = None,
    leeway_s: int = 30,
    max_lifetime_s: int = 3600,
) -> dict[str, object]:
    """The token's claims, if it is valid for ``issuer`` under one of ``jwks``.

    Raises :class:`JwtError` with a short reason otherwise (see the module
    docstring for the rules).
    """
    header = _unverified_header(token)
    jwk = _pick_key(header, jwks)
    algorithm = header.get("alg")
    if not isinstance(algorithm, str) or algorithm not in _algorithms_for(jwk):
        raise JwtError("signing algorithm not accepted for this key")
    try:
        public = jose_public_key(jwk)
    except KeysError:
        raise JwtError("the key for this kid is not usable") from None
    try:
        decoded = jwt.decode(token, public, registry=_Registry(algorithms=[algorithm]))
    except BadSignatureError:
        raise JwtError("signature does not verify") from None
    except (JoseError, ValueError, TypeError, RecursionError):
        raise JwtError("malformed token") from None
    claims = dict(decoded.claims)
    _check_claims(
        claims,
        issuer=issuer,
        now=int(time.time()) if now is None else now,
        leeway_s=leeway_s,
        max_lifetime_s=max_lifetime_s,
    )
    return claims


def _unverified_header(token: str) -> Mapping[str, object]:
    # Read before any key is chosen; nothing in it is trusted beyond choosing.
    try:
        header = extract_compact(token.encode("ascii")).protected
    except (JoseError, ValueError, TypeError, AttributeError, RecursionError):
        raise JwtError("not a JWT") from None
    if not isinstance(header, Mapping):
        raise JwtError("not a JWT")
    return header


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


def _algorithms_for(jwk: Mapping[str, object]) -> tuple[str, ...]:
    kty = jwk.get("kty")
    if kty == "RSA":
        return ("RS512", "RS256")  # RS512 is what we sign; RS256 what most clients do
    if kty == "OKP" and jwk.get("crv") == "Ed25519":
        return ("EdDSA",)
    return ()


def _check_claims(
    claims: Mapping[str, object], *, issuer: str, now: int, leeway_s: int, max_lifetime_s: int
) -> None:
    if claims.get("iss") != issuer:
        raise JwtError("wrong issuer")
    exp = _numeric_date(claims, "exp")
    iat = _numeric_date(claims, "iat")
    nbf = _numeric_date(claims, "nbf")
    if exp is None:
        raise JwtError("the token has no expiry (exp)")
    if exp + leeway_s < now:
        raise JwtError("token expired")
    if iat is not None and iat - leeway_s > now:
        raise JwtError("token issued in the future")
    if nbf is not None and nbf - leeway_s > now:
        raise JwtError("token not yet valid")
    # Without iat, the lifetime still left is the most we can bound.
    if exp - (now if iat is None else iat) > max_lifetime_s:
        raise JwtError("token lifetime too long")


def _numeric_date(claims: Mapping[str, object], name: str) -> float | None:
    # RFC 7519 NumericDate: a number of seconds, maybe fractional. NaN and
    # infinities (Python's json accepts them) would slip past every comparison,
    # and a huge int would overflow when mixed with a float.
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise JwtError(f"invalid {name}")
    # One range check, not math.isfinite (which overflows on a huge int): NaN
    # fails every comparison and the infinities are out of range.
    if not -_LATEST_NUMERIC_DATE <= value <= _LATEST_NUMERIC_DATE:
        raise JwtError(f"invalid {name}")
    return value
