"""Instance keys, JWKs, JWTs and the SSH certificate authority."""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import asyncssh
import pytest
from asyncssh.public_key import CERT_TYPE_USER

import keys

# RFC 7638 section 3.1: this RSA key's thumbprint is NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs.
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

RSA = keys.InstanceKey.generate("rsa")
ED = keys.InstanceKey.generate("ed25519")


def test_rfc7638_thumbprint() -> None:
    assert keys.jwk_thumbprint(RFC7638_KEY) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


@pytest.mark.parametrize("key", [RSA, ED], ids=["rsa", "ed25519"])
def test_exports_round_trip_to_the_same_kid(key: keys.InstanceKey) -> None:
    assert keys.InstanceKey.from_private_bytes(key.private_pkcs8_pem()).kid == key.kid
    assert keys.InstanceKey.from_private_bytes(key.private_openssh()).kid == key.kid
    assert keys.openssh_public_from_jwk(key.public_jwk()) == key.public_openssh()
    jwk = key.public_jwk()
    assert jwk["kid"] == key.kid == keys.jwk_thumbprint(jwk)
    assert "d" not in jwk  # public only
    assert key.fingerprint == keys.fingerprint_of_public_line(key.public_openssh())
    assert repr(key).startswith("<InstanceKey ")
    assert "PRIVATE" not in repr(key)


def test_pkcs1_is_for_rsa() -> None:
    pem = RSA.private_pkcs1_pem()
    assert pem.startswith(b"-----BEGIN RSA PRIVATE KEY-----")
    assert keys.InstanceKey.from_private_bytes(pem).kid == RSA.kid
    with pytest.raises(keys.KeysError):
        ED.private_pkcs1_pem()


@pytest.mark.parametrize("data", [b"", b"garbage", b"-----BEGIN OPENSSH PRIVATE KEY-----\nxx\n"])
def test_garbage_private_keys_are_refused(data: bytes) -> None:
    with pytest.raises(keys.KeyFileError):
        keys.InstanceKey.from_private_bytes(data)


def test_unsupported_jwks_are_refused() -> None:
    for jwk in ({"kty": "oct", "k": "c2VjcmV0"}, {"kty": "EC", "crv": "P-256"}, {}):
        with pytest.raises(keys.KeysError):
            keys.openssh_public_from_jwk(jwk)


@pytest.mark.parametrize(("key", "alg"), [(RSA, "RS512"), (ED, "Ed25519")], ids=["rsa", "ed"])
def test_jwt_sign_and_verify(key: keys.InstanceKey, alg: str) -> None:
    token = keys.sign_jwt(key, issuer="inst-1", claims={"url": "https://x"})
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    assert header == {"alg": alg, "kid": key.kid, "typ": "JWT"}
    claims = keys.verify_jwt(token, [key.public_jwk()], issuer="inst-1")
    assert claims["iss"] == "inst-1"
    assert claims["url"] == "https://x"
    assert claims["exp"] == claims["iat"] + 300  # type: ignore[operator]


def _refused(token: str, jwks: list[dict[str, str]] | None = None, **kwargs: object) -> str:
    with pytest.raises(keys.JwtError) as caught:
        keys.verify_jwt(token, jwks or [RSA.public_jwk()], issuer="inst-1", **kwargs)  # type: ignore[arg-type]
    return str(caught.value)


def _b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def test_jwt_refusals() -> None:
    now = int(time.time())
    good = keys.sign_jwt(RSA, issuer="inst-1")
    assert _refused(keys.sign_jwt(RSA, issuer="inst-2")) == "wrong issuer"
    assert _refused(keys.sign_jwt(RSA, issuer="inst-1", now=now - 1000)) == "token expired"
    assert _refused(keys.sign_jwt(RSA, issuer="inst-1", now=now + 1000)) == (
        "token issued in the future"
    )
    assert _refused(keys.sign_jwt(RSA, issuer="inst-1", lifetime_s=7200)) == (
        "token lifetime too long"
    )
    other = keys.InstanceKey.generate("rsa")
    forged = keys.sign_jwt(other, issuer="inst-1", kid=RSA.kid)
    assert _refused(forged) == "signature does not verify"
    head, _, signature = good.split(".")
    tampered = f"{head}.{_b64({'iss': 'inst-1', 'exp': now + 100, 'admin': True})}.{signature}"
    assert _refused(tampered) == "signature does not verify"
    assert _refused(keys.sign_jwt(other, issuer="inst-1")) == "unknown kid"
    assert _refused("garbage") == "not a JWT"
    none = f"{_b64({'alg': 'none', 'kid': RSA.kid})}.{_b64({'iss': 'inst-1'})}."
    assert "not accepted" in _refused(none)


def test_hmac_with_the_public_key_as_secret_is_refused() -> None:
    """The algorithm-confusion attack: HS256 keyed with the (public) JWK."""
    now = int(time.time())
    head = _b64({"alg": "HS256", "kid": RSA.kid, "typ": "JWT"})
    body = _b64({"iss": "inst-1", "iat": now, "exp": now + 60})
    secret = RSA.public_pem()
    mac = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    token = f"{head}.{body}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"
    assert "not accepted" in _refused(token)


def test_ssh_certificate_for_an_instance(tmp_path: Path) -> None:
    ca, created = keys.load_or_create_ssh_ca(tmp_path / "ca")
    assert created
    again, created_again = keys.load_or_create_ssh_ca(tmp_path / "ca")
    assert not created_again
    assert again.fingerprint == ca.fingerprint
    now = datetime.datetime.now(datetime.UTC)
    line = ca.sign_user_key(
        RSA.public_openssh(),
        principals=["inst-1"],
        key_id="portal:inst-1",
        valid_after=now - datetime.timedelta(minutes=1),
        valid_before=now + datetime.timedelta(hours=1),
    )
    assert line.startswith("ssh-rsa-cert-v01@openssh.com ")
    cert: Any = asyncssh.import_certificate(line)  # SSHOpenSSHCertificate: untyped attributes
    assert cert.principals == ["inst-1"]
    cert.validate(CERT_TYPE_USER, "inst-1")
    with pytest.raises(ValueError, match="principal"):
        cert.validate(CERT_TYPE_USER, "inst-2")
    if shutil.which("ssh-keygen"):
        path = tmp_path / "cert.pub"
        path.write_text(line + "\n")
        listing = subprocess.run(
            ["ssh-keygen", "-L", "-f", str(path)], capture_output=True, text=True, check=True
        ).stdout
        assert "inst-1" in listing
        assert 'Key ID: "portal:inst-1"' in listing
        assert "permit-port-forwarding" in listing
        assert "permit-agent-forwarding" not in listing


def test_ssh_certificate_arguments_are_checked() -> None:
    ca = keys.SshCertificateAuthority.generate()
    now = datetime.datetime.now(datetime.UTC)
    later = now + datetime.timedelta(hours=1)
    with pytest.raises(keys.KeysError):
        ca.sign_user_key(
            ED.public_openssh(), principals=[], key_id="x", valid_after=now, valid_before=later
        )
    with pytest.raises(keys.KeysError):
        ca.sign_user_key(
            "not a key", principals=["a"], key_id="x", valid_after=now, valid_before=later
        )


def test_cli_instance_key_jwt_and_ssh_ca(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from keys._cli import main

    assert main(["instance-key", "-t", "ed25519", str(tmp_path / "inst")]) == 0
    key = keys.InstanceKey.load(tmp_path / "inst" / "instance-key.pem")
    jwk = json.loads((tmp_path / "inst" / "instance-key.jwk.json").read_text())
    assert jwk == key.public_jwk()
    assert main(["instance-key", str(tmp_path / "inst")]) == 2  # never overwrites
    capsys.readouterr()
    pem = str(tmp_path / "inst" / "instance-key.pem")
    assert main(["jwt", "--key", pem, "--iss", "inst-9"]) == 0
    token = capsys.readouterr().out.strip()
    assert keys.verify_jwt(token, [key.public_jwk()], issuer="inst-9")["iss"] == "inst-9"
    assert main(["ssh-ca", "init", str(tmp_path / "ca")]) == 0
    pub = str(tmp_path / "inst" / "instance-key.pub")
    capsys.readouterr()
    args = ["ssh-ca", "sign", "--ca", str(tmp_path / "ca"), "--principal", "inst-9"]
    assert main([*args, "--key-id", "k", "--valid-for", "60", pub]) == 0
    assert capsys.readouterr().out.startswith("ssh-ed25519-cert-v01@openssh.com ")
    assert main(["jwt", "--key", str(tmp_path / "missing"), "--iss", "x"]) == 2
    assert "Traceback" not in capsys.readouterr().err
