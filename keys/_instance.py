"""Instance key pairs: the identity a portal gives each instance.

One private key, exported in every form the DIT4C design uses: PKCS#1 PEM
(what the original listener read), PKCS#8 PEM, OpenSSH; and its public half
as an OpenSSH line (the router authenticates the instance with it) and as a
JWK whose ``kid`` is its RFC 7638 thumbprint (the portal verifies the
instance's signed URL updates with it). JOSE is joserfc's; keys are
cryptography's.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from joserfc.errors import JoseError
from joserfc.jwk import OKPKey, RSAKey

from ._errors import KeyFileError, KeysError
from ._files import read_key_file
from ._keypairs import fingerprint_of_public_line

# DIT4C used 2048-4096 bit RSA instance keys; smaller is weak, larger slow.
MIN_INSTANCE_RSA_BITS = 2048
MAX_INSTANCE_RSA_BITS = 4096

_PrivateKey = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


class InstanceKey:
    """An instance's private key (RSA or Ed25519) and its public forms."""

    __slots__ = ("_jwk", "_key")

    def __init__(self, key: _PrivateKey) -> None:
        self._key = key
        self._jwk = _public_jwk(key.public_key())

    def __repr__(self) -> str:
        return f"<InstanceKey {self.jwt_algorithm} kid={self.kid}>"

    @classmethod
    def generate(
        cls, algorithm: Literal["rsa", "ed25519"] = "rsa", *, rsa_bits: int = 2048
    ) -> InstanceKey:
        if algorithm == "ed25519":
            return cls(ed25519.Ed25519PrivateKey.generate())
        if algorithm != "rsa":
            raise KeysError(f"unknown key type {algorithm!r}: use rsa or ed25519")
        if not MIN_INSTANCE_RSA_BITS <= rsa_bits <= MAX_INSTANCE_RSA_BITS:
            bounds = f"{MIN_INSTANCE_RSA_BITS}-{MAX_INSTANCE_RSA_BITS}"
            raise KeysError(f"RSA instance keys are {bounds} bits")
        return cls(rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits))

    @classmethod
    def from_private_bytes(cls, data: bytes, *, source: str = "key") -> InstanceKey:
        """PEM (PKCS#1 or PKCS#8) or OpenSSH; RSA or Ed25519 only."""
        key: object
        try:
            if data.lstrip().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----"):
                key = serialization.load_ssh_private_key(data, password=None)
            else:
                key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise KeyFileError(f"{source}: not a usable private key ({_first_line(exc)})") from None
        if not isinstance(key, rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey):
            raise KeyFileError(f"{source}: instance keys are RSA or Ed25519")
        return cls(key)

    @classmethod
    def load(cls, path: Path) -> InstanceKey:
        return cls.from_private_bytes(read_key_file(path, "private key"), source=str(path))

    @property
    def kid(self) -> str:
        return self._jwk["kid"]

    @property
    def jwt_algorithm(self) -> str:
        return self._jwk["alg"]

    @property
    def fingerprint(self) -> str:
        return fingerprint_of_public_line(self.public_openssh())

    @property
    def private_key(self) -> _PrivateKey:
        return self._key

    def private_pkcs1_pem(self) -> bytes:
        if not isinstance(self._key, rsa.RSAPrivateKey):
            raise KeysError("PKCS#1 is for RSA keys; use PKCS#8 for Ed25519")
        return self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )

    def private_pkcs8_pem(self) -> bytes:
        return self._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )  # fmt: skip

    def private_openssh(self) -> bytes:
        return self._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )  # fmt: skip

    def public_openssh(self, comment: str = "") -> str:
        line = (
            self._key.public_key()
            .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
            .decode()
        )
        return f"{line} {comment}".strip()

    def public_pem(self) -> bytes:
        return self._key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def public_jwk(self) -> dict[str, str]:
        return dict(self._jwk)


def public_jwk_from_openssh(line: str) -> dict[str, str]:
    """An OpenSSH public key line (RSA or Ed25519) as the JWK an instance key would have."""
    try:
        public = serialization.load_ssh_public_key(line.strip().encode())
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise KeysError(f"not an OpenSSH public key ({_first_line(exc)})") from None
    if not isinstance(public, rsa.RSAPublicKey | ed25519.Ed25519PublicKey):
        raise KeysError("instance keys are RSA or Ed25519")
    return _public_jwk(public)


def _public_jwk(public: rsa.RSAPublicKey | ed25519.Ed25519PublicKey) -> dict[str, str]:
    jwk: dict[str, str]
    if isinstance(public, rsa.RSAPublicKey):
        jwk = dict(RSAKey.import_key(public).as_dict(private=False))  # type: ignore[arg-type]
        jwk["alg"] = "RS512"  # what DIT4C's listener signed with
    else:
        jwk = dict(OKPKey.import_key(public).as_dict(private=False))  # type: ignore[arg-type]
        jwk["alg"] = "Ed25519"  # RFC 9864's name for EdDSA over Ed25519
    jwk["use"] = "sig"
    jwk["kid"] = jwk_thumbprint(jwk)
    return jwk


def jwk_thumbprint(jwk: Mapping[str, object]) -> str:
    """The RFC 7638 SHA-256 thumbprint (base64url, unpadded) of a public JWK."""
    try:
        return str(_import_public_jwk(jwk).thumbprint())
    except (JoseError, ValueError, TypeError, KeyError) as exc:
        raise KeysError(f"not a usable JWK ({_first_line(exc)})") from None


def openssh_public_from_jwk(jwk: Mapping[str, object]) -> str:
    """A public JWK (RSA, or OKP Ed25519) as an OpenSSH public key line."""
    try:
        key = _import_public_jwk(jwk).get_op_key("verify")
    except (JoseError, ValueError, TypeError, KeyError) as exc:
        raise KeysError(f"not a usable JWK ({_first_line(exc)})") from None
    if not isinstance(key, rsa.RSAPublicKey | ed25519.Ed25519PublicKey):
        raise KeysError("only RSA and Ed25519 JWKs name SSH keys")
    return key.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode()


def _import_public_jwk(jwk: Mapping[str, object]) -> RSAKey | OKPKey:
    kty = jwk.get("kty")
    public = {k: v for k, v in jwk.items() if k in _PUBLIC_MEMBERS.get(str(kty), ())}
    if kty == "RSA":
        return RSAKey.import_key(public)  # type: ignore[arg-type]
    if kty == "OKP" and jwk.get("crv") == "Ed25519":
        return OKPKey.import_key(public)  # type: ignore[arg-type]
    raise KeysError(f"unsupported JWK type {kty!r} (RSA or OKP Ed25519)")


# The members RFC 7638 hashes, which are also all that a public key needs.
_PUBLIC_MEMBERS = {"RSA": ("kty", "n", "e"), "OKP": ("kty", "crv", "x")}


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
