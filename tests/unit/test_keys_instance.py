"""Instance keys, JWKs, JWTs, the SSH certificate authority and their commands.

Everything here is synchronous and offline; ``ssh-keygen`` is run when it is
installed, to check that real OpenSSH reads our certificates, and those
assertions are skipped when it is not. Times are passed explicitly (``now``)
instead of waiting for the clock.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import asyncssh
import pytest
from asyncssh.public_key import CERT_TYPE_USER
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from joserfc import jwt as joserfc_jwt
from joserfc.jwk import RSAKey

import keys
from keys._cli import main

# RFC 7638 section 3.1: this RSA key's thumbprint is the value below.
RFC7638_KEY = {
    "kty": "RSA",
    "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSo"
    "c_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0"
    "_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4"
    "vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
    "e": "AQAB",
    "alg": "RS256",
    "kid": "2011-04-29",
}
RFC7638_THUMBPRINT = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"

# Generated once: RSA generation is the slow part of this module.
RSA = keys.InstanceKey.generate("rsa")
ED = keys.InstanceKey.generate("ed25519")
OTHER_RSA = keys.InstanceKey.generate("rsa")

# A fixed "now" for JWT tests, so no test depends on the wall clock.
T0 = 1_800_000_000

NEEDS_SSH_KEYGEN = pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="no ssh-keygen")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _part(value: object) -> str:
    return _b64(json.dumps(value).encode())


def _parts(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    head, body, _ = token.split(".")
    return (
        json.loads(base64.urlsafe_b64decode(head + "==")),
        json.loads(base64.urlsafe_b64decode(body + "==")),
    )


# --- instance keys and JWKs ---------------------------------------------------


def test_rfc7638_thumbprint() -> None:
    assert keys.jwk_thumbprint(RFC7638_KEY) == RFC7638_THUMBPRINT


def test_rfc7638_thumbprint_ignores_private_members() -> None:
    private = RSAKey.import_key(RSA.private_pkcs8_pem()).as_dict(private=True)
    assert "d" in private
    assert keys.jwk_thumbprint(private) == RSA.kid


@pytest.mark.parametrize("key", [RSA, ED], ids=["rsa", "ed25519"])
def test_public_jwk(key: keys.InstanceKey) -> None:
    jwk = key.public_jwk()
    if key is RSA:
        assert set(jwk) == {"kty", "n", "e", "use", "alg", "kid"}
        assert (jwk["kty"], jwk["alg"], key.jwt_algorithm) == ("RSA", "RS512", "RS512")
    else:
        assert set(jwk) == {"kty", "crv", "x", "use", "alg", "kid"}
        assert (jwk["kty"], jwk["crv"], jwk["alg"]) == ("OKP", "Ed25519", "EdDSA")
        assert key.jwt_algorithm == "EdDSA"
    assert jwk["use"] == "sig"
    assert jwk["kid"] == key.kid == keys.jwk_thumbprint(jwk)
    jwk["kid"] = "changed"
    assert key.public_jwk()["kid"] == key.kid  # a copy, not the key's own dict


@pytest.mark.parametrize("key", [RSA, ED], ids=["rsa", "ed25519"])
def test_jwk_to_openssh_round_trip(key: keys.InstanceKey) -> None:
    line = keys.openssh_public_from_jwk(key.public_jwk())
    assert line == key.public_openssh()
    assert keys.public_jwk_from_openssh(line) == key.public_jwk()
    assert keys.fingerprint_of_public_line(line) == key.fingerprint
    assert key.public_openssh("inst-1") == f"{line} inst-1"


@pytest.mark.parametrize("key", [RSA, ED], ids=["rsa", "ed25519"])
def test_exports_reload_to_the_same_kid(key: keys.InstanceKey, tmp_path: Path) -> None:
    exports = [key.private_pkcs8_pem(), key.private_openssh()]
    if key is RSA:
        exports.append(key.private_pkcs1_pem())
    for data in exports:
        reloaded = keys.InstanceKey.from_private_bytes(data)
        assert reloaded.kid == key.kid
        assert reloaded == key
    (tmp_path / "k.pem").write_bytes(key.private_pkcs8_pem())
    assert keys.InstanceKey.load(tmp_path / "k.pem").kid == key.kid
    public = serialization.load_pem_public_key(key.public_pem())
    assert (
        public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        == key.public_openssh().encode()
    )


def test_export_headers() -> None:
    assert RSA.private_pkcs1_pem().startswith(b"-----BEGIN RSA PRIVATE KEY-----")
    assert ED.private_pkcs8_pem().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert ED.private_openssh().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    assert RSA.public_pem().startswith(b"-----BEGIN PUBLIC KEY-----")
    with pytest.raises(keys.KeysError, match="PKCS#1"):
        ED.private_pkcs1_pem()


def test_instance_key_is_immutable_and_its_repr_is_safe() -> None:
    assert repr(RSA) == f"<InstanceKey RSA kid={RSA.kid}>"
    assert repr(ED) == f"<InstanceKey OKP kid={ED.kid}>"
    with pytest.raises(AttributeError):
        RSA._key = ED.private_key
    with pytest.raises(AttributeError):
        RSA.kid = "x"  # type: ignore[misc]
    assert RSA != OTHER_RSA
    assert len({RSA, ED, keys.InstanceKey.from_private_bytes(ED.private_openssh())}) == 2


def test_generate_checks_its_arguments() -> None:
    with pytest.raises(keys.KeysError, match=r"2048\.\.4096"):
        keys.InstanceKey.generate("rsa", rsa_bits=1024)
    with pytest.raises(keys.KeysError, match=r"2048\.\.4096"):
        keys.InstanceKey.generate("rsa", rsa_bits=8192)
    with pytest.raises(keys.KeysError, match="unknown key type"):
        keys.InstanceKey.generate("dsa")  # type: ignore[arg-type]


def _pem(key: Any, password: bytes | None = None) -> bytes:
    encryption: serialization.KeySerializationEncryption = (
        serialization.NoEncryption()
        if password is None
        else serialization.BestAvailableEncryption(password)
    )
    return bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    )


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "not a PEM or OpenSSH private key"),
        (b"garbage", "not a PEM or OpenSSH private key"),
        (b"-----BEGIN OPENSSH PRIVATE KEY-----\nxx\n", "not a PEM or OpenSSH private key"),
        (RSA.public_pem(), "not a PEM or OpenSSH private key"),
        (_pem(ec.generate_private_key(ec.SECP256R1())), "instance keys are RSA or Ed25519"),
        (_pem(rsa.generate_private_key(65537, 1024)), "2048..8192 bits"),
        (_pem(ED.private_key, b"secret"), "encrypted"),
    ],
    ids=["empty", "garbage", "bad-openssh", "public", "ec", "rsa-1024", "encrypted"],
)
def test_unusable_private_keys_are_refused(data: bytes, reason: str) -> None:
    with pytest.raises(keys.KeyFileError, match=reason) as caught:
        keys.InstanceKey.from_private_bytes(data, source="instance-key.pem")
    assert "\n" not in str(caught.value)
    assert str(caught.value).startswith("instance-key.pem")


def test_missing_key_file(tmp_path: Path) -> None:
    with pytest.raises(keys.KeyFileError, match="cannot read"):
        keys.InstanceKey.load(tmp_path / "absent.pem")


def test_private_members_of_a_jwk_are_ignored() -> None:
    private = RSAKey.import_key(RSA.private_pkcs8_pem()).as_dict(private=True)
    assert keys.openssh_public_from_jwk(private) == RSA.public_openssh()
    ed_private = {**ED.public_jwk(), "d": "AAAA"}  # not even a valid d: never read
    assert keys.openssh_public_from_jwk(ed_private) == ED.public_openssh()


EC_JWK = {
    "kty": "EC",
    "crv": "P-256",
    "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
    "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0",
}


@pytest.mark.parametrize(
    "jwk",
    [
        EC_JWK,
        {"kty": "oct", "k": "c2VjcmV0"},
        {"kty": "OKP", "crv": "X25519", "x": ED.public_jwk()["x"]},
        {"kty": "OKP", "crv": "Ed25519", "x": "AA"},
        {"kty": "RSA", "n": RFC7638_KEY["n"]},
        {"kty": "RSA", "n": 5, "e": "AQAB"},
        {"kty": "RSA", "n": "!!", "e": "AQAB"},
        {"kty": "RSA", "n": _b64(b"\xff" * 128), "e": "AQAB"},  # 1024 bits
        {"kty": ["RSA"]},
        {},
    ],
    ids=["ec", "oct", "x25519", "short-x", "no-e", "int-n", "bad-n", "rsa-1024", "list", "empty"],
)
def test_unusable_jwks_are_refused(jwk: dict[str, object]) -> None:
    with pytest.raises(keys.KeysError):
        keys.openssh_public_from_jwk(jwk)


def test_thumbprints_of_other_key_types() -> None:
    # RFC 7638 covers EC keys too; a symmetric key is refused, not hashed.
    assert len(keys.jwk_thumbprint(EC_JWK)) == 43
    with pytest.raises(keys.KeysError, match="symmetric"):
        keys.jwk_thumbprint({"kty": "oct", "k": "c2VjcmV0"})


def test_openssh_lines_that_are_not_instance_keys() -> None:
    ca = keys.SshCertificateAuthority.generate()
    certificate = ca.sign_user_key(
        ED.public_openssh(),
        principals=["inst-1"],
        key_id="k",
        valid_after=datetime.datetime.fromtimestamp(T0, datetime.UTC),
        valid_before=datetime.datetime.fromtimestamp(T0 + 60, datetime.UTC),
    )
    ecdsa = ec.generate_private_key(ec.SECP256R1()).public_key()
    ecdsa_line = ecdsa.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode()
    for line, reason in [
        (certificate, "certificate"),
        (ecdsa_line, "RSA or Ed25519"),
        ("ssh-ed25519 AAAA", "not an OpenSSH public key"),
        ("", "not an OpenSSH public key"),
    ]:
        with pytest.raises(keys.KeysError, match=reason):
            keys.public_jwk_from_openssh(line)


# --- JWTs -----------------------------------------------------------------------


@pytest.mark.parametrize(("key", "alg"), [(RSA, "RS512"), (ED, "EdDSA")], ids=["rsa", "ed25519"])
def test_jwt_sign_and_verify(key: keys.InstanceKey, alg: str) -> None:
    token = keys.sign_jwt(key, issuer="inst-1", claims={"url": "https://x"}, now=T0)
    header, body = _parts(token)
    assert header == {"alg": alg, "kid": key.kid, "typ": "JWT"}
    assert body == {"url": "https://x", "iss": "inst-1", "iat": T0, "exp": T0 + 300}
    jwks = [OTHER_RSA.public_jwk(), key.public_jwk()]
    claims = keys.verify_jwt(token, jwks, issuer="inst-1", now=T0 + 10)
    assert claims == body


def test_jwt_with_an_explicit_kid_and_lifetime() -> None:
    token = keys.sign_jwt(RSA, issuer="inst-1", kid="portal-kid", lifetime_s=60, now=T0)
    header, body = _parts(token)
    assert header["kid"] == "portal-kid"
    assert body["exp"] == T0 + 60
    jwk = {**RSA.public_jwk(), "kid": "portal-kid"}
    assert keys.verify_jwt(token, [jwk], issuer="inst-1", now=T0)["iss"] == "inst-1"


def test_jwt_without_kid_uses_the_only_key() -> None:
    signing = RSAKey.import_key(RSA.private_pkcs8_pem())
    claims = {"iss": "inst-1", "iat": T0, "exp": T0 + 60}
    token = joserfc_jwt.encode({"alg": "RS256"}, claims, signing, algorithms=["RS256"])
    assert keys.verify_jwt(token, [RSA.public_jwk()], issuer="inst-1", now=T0) == claims
    with pytest.raises(keys.JwtError, match="names no key"):
        keys.verify_jwt(token, [RSA.public_jwk(), ED.public_jwk()], issuer="inst-1", now=T0)


def test_sign_jwt_checks_its_arguments() -> None:
    with pytest.raises(keys.KeysError, match="lifetime"):
        keys.sign_jwt(RSA, issuer="inst-1", lifetime_s=0)
    with pytest.raises(keys.KeysError, match="exp"):
        keys.sign_jwt(RSA, issuer="inst-1", claims={"exp": T0 + 10**6})


def _refused(
    token: str, jwks: list[dict[str, str]] | None = None, *, now: int = T0, **limits: int
) -> str:
    with pytest.raises(keys.JwtError) as caught:
        keys.verify_jwt(
            token, [RSA.public_jwk()] if jwks is None else jwks, issuer="inst-1", now=now, **limits
        )
    return str(caught.value)


def _sign(key: keys.InstanceKey = RSA, **kwargs: Any) -> str:
    return keys.sign_jwt(key, **{"issuer": "inst-1", "now": T0, **kwargs})


def test_verify_checks_issuer_and_times() -> None:
    assert _refused(_sign(issuer="inst-2")) == "wrong issuer"
    # exp is T0 + 300; 30 s of leeway.
    keys.verify_jwt(_sign(), [RSA.public_jwk()], issuer="inst-1", now=T0 + 330)
    assert _refused(_sign(), now=T0 + 331) == "token expired"
    assert _refused(_sign(), now=T0 + 331, leeway_s=0) == "token expired"
    # iat in the future beyond the leeway.
    keys.verify_jwt(_sign(now=T0 + 30), [RSA.public_jwk()], issuer="inst-1", now=T0)
    assert _refused(_sign(now=T0 + 31)) == "token issued in the future"
    # Lifetime: exactly the maximum passes, one second more does not.
    keys.verify_jwt(_sign(lifetime_s=3600), [RSA.public_jwk()], issuer="inst-1", now=T0)
    assert _refused(_sign(lifetime_s=3601)) == "token lifetime too long"
    assert _refused(_sign(lifetime_s=120), max_lifetime_s=60) == "token lifetime too long"


def _rs256(claims: dict[str, object], key: keys.InstanceKey = RSA) -> str:
    signing = RSAKey.import_key(key.private_pkcs8_pem())
    header = {"alg": "RS256", "kid": key.kid}
    return joserfc_jwt.encode(header, claims, signing, algorithms=["RS256"])


def test_verify_checks_claims_it_did_not_sign_itself() -> None:
    assert _refused(_rs256({"iss": "inst-1", "iat": T0})) == "the token has no expiry (exp)"
    assert _refused(_rs256({"iss": "inst-1", "exp": "soon"})) == "invalid exp"
    assert _refused(_rs256({"iss": "inst-1", "exp": True})) == "invalid exp"
    assert _refused(_rs256({"iss": "inst-1", "exp": float("nan")})) == "invalid exp"
    assert _refused(_rs256({"iss": "inst-1", "exp": T0 + 60, "iat": float("-inf")})) == (
        "invalid iat"
    )
    assert _refused(_rs256({"iss": "inst-1", "exp": 10**400, "iat": 0.5})) == "invalid exp"
    assert _refused(_rs256({"iss": "inst-1", "exp": T0 + 60, "nbf": T0 + 31})) == (
        "token not yet valid"
    )
    # Without iat, the remaining lifetime is bounded instead.
    assert _refused(_rs256({"iss": "inst-1", "exp": T0 + 7200})) == "token lifetime too long"
    claims = {"iss": "inst-1", "exp": T0 + 60.5, "nbf": T0}
    assert keys.verify_jwt(_rs256(claims), [RSA.public_jwk()], issuer="inst-1", now=T0) == claims


def test_verify_refuses_forgeries() -> None:
    good = _sign()
    head, _, signature = good.split(".")
    tampered = f"{head}.{_part({'iss': 'inst-1', 'iat': T0, 'exp': T0 + 100, 'admin': True})}"
    assert _refused(f"{tampered}.{signature}") == "signature does not verify"
    forged = _sign(OTHER_RSA, kid=RSA.kid)
    assert _refused(forged) == "signature does not verify"
    assert _refused(_sign(OTHER_RSA)) == "unknown kid"
    assert _refused(_sign(ED)) == "unknown kid"
    assert _refused(good, []) == "unknown kid"


@pytest.mark.parametrize("key", [RSA, ED], ids=["rsa", "ed25519"])
def test_verify_refuses_alg_none(key: keys.InstanceKey) -> None:
    body = _part({"iss": "inst-1", "iat": T0, "exp": T0 + 60})
    for header in ({"alg": "none", "kid": key.kid}, {"alg": "none"}, {"alg": "None"}):
        token = f"{_part(header)}.{body}."
        assert _refused(token, [key.public_jwk()]) == "signing algorithm not accepted for this key"


@pytest.mark.parametrize("key", [RSA, ED], ids=["rsa", "ed25519"])
def test_verify_refuses_hmac_keyed_with_the_public_key(key: keys.InstanceKey) -> None:
    """The algorithm-confusion attack: HS256 keyed with what the verifier holds."""
    body = _part({"iss": "inst-1", "iat": T0, "exp": T0 + 60})
    secrets = [
        key.public_pem(),
        key.public_openssh().encode(),
        json.dumps(key.public_jwk()).encode(),
    ]
    for alg, digest in (("HS256", hashlib.sha256), ("HS512", hashlib.sha512)):
        head = _part({"alg": alg, "kid": key.kid, "typ": "JWT"})
        for secret in secrets:
            mac = hmac.new(secret, f"{head}.{body}".encode(), digest).digest()
            token = f"{head}.{body}.{_b64(mac)}"
            refusal = _refused(token, [key.public_jwk()])
            assert refusal == "signing algorithm not accepted for this key"


def test_verify_refuses_algorithms_that_do_not_fit_the_key() -> None:
    body = _part({"iss": "inst-1", "iat": T0, "exp": T0 + 60})
    for alg, key in [
        ("EdDSA", RSA),
        ("Ed25519", ED),
        ("RS512", ED),
        ("PS256", RSA),
        ("ES256", RSA),
    ]:
        token = f"{_part({'alg': alg, 'kid': key.kid})}.{body}.{_b64(b'x' * 64)}"
        assert _refused(token, [key.public_jwk()]) == "signing algorithm not accepted for this key"


def test_verify_refuses_unusable_keys() -> None:
    token = _sign()
    secret = {"kty": "oct", "k": _b64(RSA.public_pem()), "kid": RSA.kid}
    assert _refused(token, [secret]) == "signing algorithm not accepted for this key"
    broken = {"kty": "RSA", "n": "AA", "e": "AQAB", "kid": RSA.kid}
    assert _refused(token, [broken]) == "the key for this kid is not usable"


GARBAGE = [
    "",
    "garbage",
    ".",
    "..",
    "...",
    "a.b.c",
    "a.b.c.d.e",
    "é.é.é",
    "\x00.\x00.\x00",
    f"{_part([1, 2])}.{_part({})}.",
    f"{_part('x')}.{_part({})}.",
    f"{_part({'alg': 'RS512', 'kid': ['x']})}.{_part({})}.",
    f"{_part({'alg': ['RS512'], 'kid': RSA.kid})}.{_part({})}.",
    f"{_part({'alg': 'RS512', 'kid': RSA.kid})}.{_part([1])}.{_b64(b'x' * 256)}",
    f"{_part({'alg': 'RS512', 'kid': RSA.kid})}.{_b64(b'[' * 50_000)}.{_b64(b'x' * 256)}",
    f"{_part({'alg': 'RS512', 'kid': RSA.kid, 'crit': ['exp']})}.{_part({})}.",
    _b64(b"[" * 50_000) + ".e30.",
    "x" * 1_000_000,
]


@pytest.mark.parametrize("token", GARBAGE)
def test_garbage_tokens_raise_only_jwt_error(token: str) -> None:
    for jwks in ([RSA.public_jwk()], [RSA.public_jwk(), ED.public_jwk()], []):
        with pytest.raises(keys.JwtError):
            keys.verify_jwt(token, jwks, issuer="inst-1", now=T0)


def test_a_token_cut_anywhere_is_refused() -> None:
    token = _sign(ED)
    for end in range(len(token)):
        with pytest.raises(keys.JwtError):
            keys.verify_jwt(token[:end], [ED.public_jwk()], issuer="inst-1", now=T0)


# --- SSH certificates -------------------------------------------------------------


def _utc(seconds_from_now: float) -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=seconds_from_now)


def _ssh_keygen_listing(tmp_path: Path, line: str) -> str:
    path = tmp_path / "cert.pub"
    path.write_text(line + "\n")
    return subprocess.run(
        ["ssh-keygen", "-L", "-f", str(path)],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
        env={**os.environ, "TZ": "UTC"},
    ).stdout


@pytest.mark.parametrize(
    ("key", "cert_type"),
    [(ED, "ssh-ed25519-cert-v01@openssh.com"), (RSA, "ssh-rsa-cert-v01@openssh.com")],
    ids=["ed25519", "rsa"],
)
def test_ssh_certificate_for_an_instance(
    key: keys.InstanceKey, cert_type: str, tmp_path: Path
) -> None:
    ca = keys.SshCertificateAuthority.generate()
    valid_after = _utc(-60).replace(microsecond=0)
    valid_before = _utc(3600).replace(microsecond=0)
    line = ca.sign_user_key(
        key.public_openssh(),
        principals=["inst-1"],
        key_id="portal:inst-1",
        valid_after=valid_after,
        valid_before=valid_before,
        serial=42,
    )
    assert "\n" not in line
    assert line.startswith(cert_type + " ")
    assert line.endswith(" portal:inst-1")

    cert: Any = asyncssh.import_certificate(line)  # SSHOpenSSHCertificate: untyped attributes
    assert cert.principals == ["inst-1"]
    assert cert.options == {"permit-port-forwarding": True, "permit-pty": True}
    signer = cert.signing_key.export_public_key("openssh").decode().split()[:2]
    assert signer == ca.public_line.split()[:2]
    subject = cert.key.export_public_key("openssh").decode().split()[:2]
    assert subject == key.public_openssh().split()
    cert.validate(CERT_TYPE_USER, "inst-1")
    with pytest.raises(ValueError, match="principal"):
        cert.validate(CERT_TYPE_USER, "inst-2")

    if shutil.which("ssh-keygen"):
        listing = _ssh_keygen_listing(tmp_path, line)
        assert "Type: " + cert_type + " user certificate" in listing
        assert f"Signing CA: ED25519 {ca.fingerprint}" in listing
        assert 'Key ID: "portal:inst-1"' in listing
        assert "Serial: 42" in listing
        start = valid_after.strftime("%Y-%m-%dT%H:%M:%S")
        end = valid_before.strftime("%Y-%m-%dT%H:%M:%S")
        assert f"Valid: from {start} to {end}" in listing
        principals = listing.split("Principals:")[1].split("Critical Options:")[0]
        assert principals.split() == ["inst-1"]
        assert "Critical Options: (none)" in listing
        extensions = listing.split("Extensions:")[1].split()
        assert extensions == ["permit-port-forwarding", "permit-pty"]


def test_ssh_certificate_validity_is_respected() -> None:
    ca = keys.SshCertificateAuthority.generate()

    def certificate(after_s: float, before_s: float) -> Any:
        line = ca.sign_user_key(
            ED.public_openssh(),
            principals=["inst-1", "inst-1-admin"],
            key_id="k",
            valid_after=_utc(after_s),
            valid_before=_utc(before_s),
        )
        return asyncssh.import_certificate(line)

    certificate(-60, 60).validate(CERT_TYPE_USER, "inst-1-admin")
    with pytest.raises(ValueError, match="expired"):
        certificate(-3600, -60).validate(CERT_TYPE_USER, "inst-1")
    with pytest.raises(ValueError, match="not yet valid"):
        certificate(600, 3600).validate(CERT_TYPE_USER, "inst-1")


@NEEDS_SSH_KEYGEN
def test_ssh_keygen_signs_with_our_ca(tmp_path: Path) -> None:
    """The CA file is an ordinary OpenSSH key: ssh-keygen can sign with it too."""
    ca, _ = keys.load_or_create_ssh_ca(tmp_path / "ca")
    (tmp_path / "user.pub").write_text(ED.public_openssh() + "\n")
    subprocess.run(
        ["ssh-keygen", "-q", "-s", str(tmp_path / "ca"), "-I", "k", "-n", "inst-1",
         str(tmp_path / "user.pub")],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    cert: Any = asyncssh.import_certificate((tmp_path / "user-cert.pub").read_text())
    signer = cert.signing_key.export_public_key("openssh").decode().split()[1]
    assert signer == ca.public_line.split()[1]


def test_sign_user_key_checks_its_arguments() -> None:
    ca = keys.SshCertificateAuthority.generate()
    now, later = _utc(0), _utc(3600)
    good: dict[str, Any] = {
        "principals": ["inst-1"],
        "key_id": "k",
        "valid_after": now,
        "valid_before": later,
    }
    refusals: list[tuple[str, dict[str, Any]]] = [
        ("at least one principal", {"principals": []}),
        ("not one string", {"principals": "inst-1"}),
        ("commas or spaces", {"principals": ["a,b"]}),
        ("commas or spaces", {"principals": ["a b"]}),
        ("principal may not be empty", {"principals": [""]}),
        ("control characters", {"key_id": "k\nssh-rsa AAAA"}),
        ("key id may not be empty", {"key_id": ""}),
        ("after valid_after", {"valid_before": now}),
        ("timezone-aware", {"valid_after": datetime.datetime(2030, 1, 1)}),
        ("serial", {"serial": -1}),
        ("serial", {"serial": 2**64}),
        ("cannot sign", {"valid_after": datetime.datetime(1960, 1, 1, tzinfo=datetime.UTC)}),
    ]
    for reason, change in refusals:
        with pytest.raises(keys.KeysError, match=reason):
            ca.sign_user_key(ED.public_openssh(), **{**good, **change})
    with pytest.raises(keys.KeysError, match="not an OpenSSH public key"):
        ca.sign_user_key("not a key", **good)
    certificate = ca.sign_user_key(ED.public_openssh(), **good)
    with pytest.raises(keys.KeysError, match="certificate"):
        ca.sign_user_key(certificate, **good)


def test_ssh_ca_files(tmp_path: Path) -> None:
    path = tmp_path / "state" / "ssh-ca"
    ca, created = keys.load_or_create_ssh_ca(path)
    assert created
    assert path.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "state").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "state" / "ssh-ca.pub").read_text() == ca.public_line + "\n"
    assert ca.public_line.startswith("ssh-ed25519 AAAA")
    assert ca.public_line.endswith(" hostmux-portal-ca")
    assert ca.fingerprint == keys.fingerprint_of_public_line(ca.public_line)
    assert repr(ca) == f"<SshCertificateAuthority {ca.fingerprint}>"
    again, created_again = keys.load_or_create_ssh_ca(path)
    assert not created_again
    assert again.fingerprint == ca.fingerprint
    # A loser of the creation race writes nothing, not even the .pub file.
    rival = keys.SshCertificateAuthority.generate()
    assert not rival.save(path, replace=False)
    assert (tmp_path / "state" / "ssh-ca.pub").read_text() == ca.public_line + "\n"
    assert keys.SshCertificateAuthority.load(path).fingerprint == ca.fingerprint


def test_ssh_ca_refuses_other_key_files(tmp_path: Path) -> None:
    (tmp_path / "rsa").write_bytes(RSA.private_openssh())
    with pytest.raises(keys.KeyFileError, match="must be Ed25519"):
        keys.SshCertificateAuthority.load(tmp_path / "rsa")
    (tmp_path / "garbage").write_bytes(b"garbage")
    with pytest.raises(keys.KeyFileError, match="not an OpenSSH private key"):
        keys.SshCertificateAuthority.load(tmp_path / "garbage")
    with pytest.raises(keys.KeyFileError, match="cannot read"):
        keys.SshCertificateAuthority.load(tmp_path / "absent")


# --- hostmux-keys commands ----------------------------------------------------------


def _fails(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("hostmux-keys: error: ")
    assert captured.err.count("\n") == 1
    assert "Traceback" not in captured.err
    return captured.err


def test_cli_instance_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for algorithm, header in (("rsa", b"RSA PRIVATE KEY"), ("ed25519", b"BEGIN PRIVATE KEY")):
        directory = tmp_path / algorithm
        assert main(["instance-key", "-t", algorithm, str(directory)]) == 0
        pem = directory / "instance-key.pem"
        assert header in pem.read_bytes()
        assert pem.stat().st_mode & 0o777 == 0o600
        key = keys.InstanceKey.load(pem)
        assert capsys.readouterr().out.startswith(f"kid {key.kid}\n")
        assert (directory / "instance-key.pub").read_text() == key.public_openssh() + "\n"
        jwk = json.loads((directory / "instance-key.jwk.json").read_text())
        assert jwk == key.public_jwk()
    assert main(["instance-key", "-b", "3072", str(tmp_path / "big")]) == 0
    big = keys.InstanceKey.load(tmp_path / "big" / "instance-key.pem").private_key
    assert isinstance(big, rsa.RSAPrivateKey) and big.key_size == 3072
    capsys.readouterr()
    before = (tmp_path / "rsa" / "instance-key.pem").read_bytes()
    assert "already exists" in _fails(["instance-key", str(tmp_path / "rsa")], capsys)
    assert (tmp_path / "rsa" / "instance-key.pem").read_bytes() == before
    assert "-b applies" in _fails(["instance-key", "-t", "ed25519", "-b", "2048", "x"], capsys)
    assert "2048..4096" in _fails(["instance-key", "-b", "1024", str(tmp_path / "x")], capsys)
    _fails(["instance-key", "-t", "dsa", str(tmp_path / "x")], capsys)


def test_cli_jwt(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pem = tmp_path / "key.pem"
    pem.write_bytes(RSA.private_pkcs1_pem())
    assert main(["jwt", "--key", str(pem), "--iss", "inst-9", "--lifetime", "60"]) == 0
    token = capsys.readouterr().out.strip()
    claims = keys.verify_jwt(token, [RSA.public_jwk()], issuer="inst-9")
    assert claims["exp"] == claims["iat"] + 60  # type: ignore[operator]
    assert main(["jwt", "--key", str(pem), "--iss", "inst-9", "--kid", "k1"]) == 0
    assert _parts(capsys.readouterr().out.strip())[0]["kid"] == "k1"
    assert "cannot read" in _fails(["jwt", "--key", str(tmp_path / "no"), "--iss", "x"], capsys)
    (tmp_path / "bad.pem").write_bytes(b"garbage")
    _fails(["jwt", "--key", str(tmp_path / "bad.pem"), "--iss", "x"], capsys)
    _fails(["jwt", "--key", str(pem), "--iss", "x", "--lifetime", "0"], capsys)
    _fails(["jwt", "--key", str(pem)], capsys)


def test_cli_ssh_ca(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ca_path = tmp_path / "ca"
    assert main(["ssh-ca", "init", str(ca_path)]) == 0
    ca = keys.SshCertificateAuthority.load(ca_path)
    assert capsys.readouterr().out.startswith(ca.public_line + "\n")
    assert main(["ssh-ca", "init", str(ca_path)]) == 0  # existing: kept
    assert "existing" in capsys.readouterr().out
    assert keys.SshCertificateAuthority.load(ca_path).fingerprint == ca.fingerprint

    pub = tmp_path / "instance-key.pub"
    pub.write_text(RSA.public_openssh("inst-9") + "\n")
    sign = ["ssh-ca", "sign", "--ca", str(ca_path), "--principal", "inst-9"]
    argv = [*sign, "--principal", "inst-9b", "--key-id", "k", "--valid-for", "60", str(pub)]
    assert main(argv) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("ssh-rsa-cert-v01@openssh.com ")
    cert: Any = asyncssh.import_certificate(line)
    assert cert.principals == ["inst-9", "inst-9b"]
    cert.validate(CERT_TYPE_USER, "inst-9b")
    if shutil.which("ssh-keygen"):
        assert "inst-9b" in _ssh_keygen_listing(tmp_path, line)

    (tmp_path / "binary.pub").write_bytes(b"\xff\xfe\x00")
    for args, reason in [
        (["--valid-for", "0", str(pub)], "at least 1 second"),
        (["--valid-for", "-5", str(pub)], "at least 1 second"),
        (["--valid-for", str(10**20), str(pub)], "too far"),
        (["--valid-for", "60", str(tmp_path / "binary.pub")], "not an OpenSSH public key"),
        (["--valid-for", "60", str(ca_path)], "not an OpenSSH public key"),
        (["--valid-for", "60", str(tmp_path / "absent.pub")], "cannot read"),
    ]:
        assert reason in _fails([*sign, "--key-id", "k", *args], capsys)
    bad_ca = ["ssh-ca", "sign", "--ca", str(pub), "--principal", "p", "--key-id", "k"]
    _fails([*bad_ca, "--valid-for", "60", str(pub)], capsys)
    no_principal = ["ssh-ca", "sign", "--ca", str(ca_path), "--key-id", "k"]
    _fails([*no_principal, "--valid-for", "60", str(pub)], capsys)
    _fails(["ssh-ca", "sign", "--ca", str(ca_path), "--principal", "a,b", "--key-id", "k",
            "--valid-for", "60", str(pub)], capsys)  # fmt: skip
    _fails(["ssh-ca"], capsys)
