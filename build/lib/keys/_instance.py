"""Instance key pairs: the identity a portal gives each instance.

One private key, exported in every form the DIT4C design uses: PKCS#1 PEM
(what the original listener read), PKCS#8 PEM, OpenSSH; and its public half
as an OpenSSH line (the router authenticates the instance with it) and as a
JWK whose ``kid`` is its RFC 7638 thumbprint (the portal verifies the
instance's signed URL updates with it).

Keys are ``cryptography``'s and everything JOSE is joserfc's: this module only
decides which keys are acceptable (RSA of 2048..8192 bits, or Ed25519) and
which JWK members are public, so a JWK that arrives with its private members
still yields only its public key.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from pathlib import Path
from typing import Literal, NoReturn

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, OKPKey, RSAKey, import_key

from ._errors import KeyFileError, KeysError
from ._files import read_key_file
from ._keypairs import MAX_RSA_BITS, MIN_RSA_BITS, fingerprint_of_public_line

# DIT4C generated 2048-4096 bit RSA instance keys; generation stays in that
# range, while loading accepts what _keypairs accepts (up to 8192 bits).
MIN_INSTANCE_RSA_BITS = 2048
MAX_INSTANCE_RSA_BITS = 4096

# The JWS algorithm each key type signs with. RS512 is what DIT4C's listener
# used. "EdDSA" (RFC 8037) rather than RFC 9864's "Ed25519": it is the name
# deployed JOSE libraries verify, and with an Ed25519 key it is unambiguous.
RSA_JWT_ALGORITHM = "RS512"
ED25519_JWT_ALGORITHM = "EdDSA"

# How an OpenSSH private key file begins; anything else is tried as PEM.
_OPENSSH_PRIVATE_HEADER = b"-----BEGIN OPENSSH PRIVATE KEY-----"

# The members RFC 7638 hashes for each key type, which are also all that a
# public key needs: a JWK's private members ("d", "p", ...) are never read.
_PUBLIC_MEMBERS: dict[str, tuple[str, ...]] = {
    "RSA": ("kty", "n", "e"),
    "EC": ("kty", "crv", "x", "y"),
    "OKP": ("kty", "crv", "x"),
}

# Foreign values echoed in an error message are cut to this many characters,
# so a hostile JWK cannot fill a log line.
_SHOWN_CHARS = 40

PrivateInstanceKey = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
PublicInstanceKey = rsa.RSAPublicKey | ed25519.Ed25519PublicKey


class InstanceKey:
    """An instance's private key (RSA or Ed25519) and its public forms.

    Immutable; equal when the keys are. ``repr`` shows the type and ``kid``
    only, so a key in a log line or a test failure leaks nothing.
    """

    __slots__ = ("_jose", "_jwk", "_key")

    _key: PrivateInstanceKey
    _jose: RSAKey | OKPKey  # joserfc's view of the same private key, for signing
    _jwk: dict[str, str]

    def __init__(self, key: PrivateInstanceKey) -> None:
        """Wrap a ``cryptography`` private key; raises :class:`KeysError` if unusable."""
        if not isinstance(key, PrivateInstanceKey):
            raise KeysError(f"instance keys are RSA or Ed25519, not {type(key).__name__}")
        _check_rsa_size(key)
        jose = (
            RSAKey.import_key(key) if isinstance(key, rsa.RSAPrivateKey) else OKPKey.import_key(key)
        )
        object.__setattr__(self, "_key", key)
        object.__setattr__(self, "_jose", jose)
        object.__setattr__(self, "_jwk", _public_jwk(jose))

    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise AttributeError(f"InstanceKey is immutable; cannot set {name}")

    def __delattr__(self, name: str) -> NoReturn:
        raise AttributeError(f"InstanceKey is immutable; cannot delete {name}")

    def __repr__(self) -> str:
        return f"<InstanceKey {self._jwk['kty']} kid={self.kid}>"

    def __eq__(self, other: object) -> bool:
        # The kid hashes the public key, which determines the private one.
        return isinstance(other, InstanceKey) and other.kid == self.kid

    def __hash__(self) -> int:
        return hash(self.kid)

    @classmethod
    def generate(
        cls, algorithm: Literal["rsa", "ed25519"] = "rsa", *, rsa_bits: int = 2048
    ) -> InstanceKey:
        """A new key; ``rsa_bits`` (2048..4096) applies to RSA only."""
        if algorithm == "ed25519":
            return cls(ed25519.Ed25519PrivateKey.generate())
        if algorithm != "rsa":
            raise KeysError(f"unknown key type {_shown(algorithm)}: use rsa or ed25519")
        if not MIN_INSTANCE_RSA_BITS <= rsa_bits <= MAX_INSTANCE_RSA_BITS:
            bounds = f"{MIN_INSTANCE_RSA_BITS}..{MAX_INSTANCE_RSA_BITS}"
            raise KeysError(f"RSA instance keys are {bounds} bits, not {rsa_bits}")
        return cls(rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits))

    @classmethod
    def from_private_bytes(cls, data: bytes, *, source: str = "key data") -> InstanceKey:
        """Parse an unencrypted PEM (PKCS#1 or PKCS#8) or OpenSSH private key.

        ``source`` names the data in the one-line :class:`KeyFileError` raised
        when it is not an RSA or Ed25519 private key.
        """
        key: object
        try:
            if data.lstrip().startswith(_OPENSSH_PRIVATE_HEADER):
                key = serialization.load_ssh_private_key(data, password=None)
            else:
                key = serialization.load_pem_private_key(data, password=None)
        except TypeError as exc:  # cryptography's way of saying "needs a password"
            raise KeyFileError(f"{source} is encrypted; instance keys are unencrypted") from exc
        except (ValueError, UnsupportedAlgorithm) as exc:
            reason = first_line(exc)
            raise KeyFileError(f"{source} is not a PEM or OpenSSH private key ({reason})") from exc
        if not isinstance(key, PrivateInstanceKey):
            kind = type(key).__name__.removeprefix("_")
            raise KeyFileError(f"{source} holds a {kind}; instance keys are RSA or Ed25519")
        try:
            return cls(key)
        except KeysError as exc:
            raise KeyFileError(f"{source}: {exc}") from exc

    @classmethod
    def load(cls, path: Path) -> InstanceKey:
        """Read an instance key file (any form ``from_private_bytes`` takes)."""
        return cls.from_private_bytes(read_key_file(path, "private key"), source=str(path))

    @property
    def kid(self) -> str:
        """The RFC 7638 SHA-256 thumbprint of the public key (base64url)."""
        return self._jwk["kid"]

    @property
    def jwt_algorithm(self) -> str:
        """``"RS512"`` for RSA, ``"EdDSA"`` for Ed25519."""
        return self._jwk["alg"]

    @property
    def fingerprint(self) -> str:
        """``SHA256:...`` of the public key, as ``ssh-keygen -l`` prints it."""
        return fingerprint_of_public_line(self.public_openssh())

    @property
    def private_key(self) -> PrivateInstanceKey:
        """The ``cryptography`` private key, for callers that sign by themselves."""
        return self._key

    @property
    def jose_key(self) -> RSAKey | OKPKey:
        """The same private key as a joserfc key object, for ``_jwt``."""
        return self._jose

    def private_pkcs1_pem(self) -> bytes:
        """``-----BEGIN RSA PRIVATE KEY-----``; RSA only (PKCS#1 has no Ed25519)."""
        if not isinstance(self._key, rsa.RSAPrivateKey):
            raise KeysError("PKCS#1 is for RSA keys; use PKCS#8 for Ed25519")
        return self._private_bytes(serialization.PrivateFormat.TraditionalOpenSSL)

    def private_pkcs8_pem(self) -> bytes:
        """``-----BEGIN PRIVATE KEY-----``, for RSA and Ed25519 alike."""
        return self._private_bytes(serialization.PrivateFormat.PKCS8)

    def private_openssh(self) -> bytes:
        """``-----BEGIN OPENSSH PRIVATE KEY-----``, as ``ssh -i`` reads it."""
        return self._private_bytes(serialization.PrivateFormat.OpenSSH)

    def public_openssh(self, comment: str = "") -> str:
        """One ``authorized_keys`` line, ``type base64 [comment]``, no newline."""
        if "\n" in comment or "\r" in comment:
            raise KeysError("a key comment must be a single line")
        comment = comment.strip()
        line = (
            self._key.public_key()
            .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
            .decode("ascii")
        )
        return f"{line} {comment}" if comment else line

    def public_pem(self) -> bytes:
        """``-----BEGIN PUBLIC KEY-----`` (SubjectPublicKeyInfo)."""
        return self._key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def public_jwk(self) -> dict[str, str]:
        """The public JWK with ``use``, ``alg`` and ``kid`` (a fresh copy)."""
        return dict(self._jwk)

    def _private_bytes(self, form: serialization.PrivateFormat) -> bytes:
        return self._key.private_bytes(
            serialization.Encoding.PEM, form, serialization.NoEncryption()
        )


def jwk_thumbprint(jwk: Mapping[str, object]) -> str:
    """The RFC 7638 SHA-256 thumbprint (base64url, unpadded) of a JWK's public key.

    RSA, EC and OKP keys; only the public members count, so a private JWK has
    the thumbprint of its public half. Symmetric (``oct``) keys are refused.
    Raises :class:`KeysError` for anything that is not a valid key.
    """
    return str(jose_public_key(jwk).thumbprint())


def openssh_public_from_jwk(jwk: Mapping[str, object]) -> str:
    """A public JWK (RSA, or OKP Ed25519) as an OpenSSH public key line.

    Private members are ignored. Raises :class:`KeysError` for other key types
    (EC, ``oct``, other curves) and for invalid or weak keys.
    """
    kty = jwk.get("kty")
    if not (kty == "RSA" or (kty == "OKP" and jwk.get("crv") == "Ed25519")):
        raise KeysError(f"unsupported JWK {_describe_type(jwk)}: RSA or OKP Ed25519")
    public = jose_public_key(jwk).get_op_key("verify")
    if not isinstance(public, PublicInstanceKey):  # unreachable after the check above
        raise KeysError(f"unsupported JWK {_describe_type(jwk)}: RSA or OKP Ed25519")
    line = public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return line.decode("ascii")


def public_jwk_from_openssh(line: str) -> dict[str, str]:
    """An OpenSSH public key line (RSA or Ed25519) as the JWK an instance key would have."""
    public = instance_public_key_from_openssh(line)
    if isinstance(public, rsa.RSAPublicKey):
        return _public_jwk(RSAKey.import_key(public))
    return _public_jwk(OKPKey.import_key(public))


def instance_public_key_from_openssh(line: str) -> PublicInstanceKey:
    """Parse ``type base64 [comment]``; raises :class:`KeysError` unless RSA or Ed25519.

    Certificates are refused: signing or registering one would silently use
    the key inside it and drop what the certificate said.
    """
    try:
        identity = serialization.load_ssh_public_identity(line.strip().encode())
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise KeysError(f"not an OpenSSH public key ({first_line(exc)})") from None
    if isinstance(identity, serialization.SSHCertificate):
        raise KeysError("that is an OpenSSH certificate, not a public key")
    if not isinstance(identity, PublicInstanceKey):
        raise KeysError(f"instance keys are RSA or Ed25519, not {type(identity).__name__}")
    _check_rsa_size(identity)
    return identity


def jose_public_key(jwk: Mapping[str, object]) -> RSAKey | ECKey | OKPKey:
    """The public part of a JWK as a joserfc key; raises :class:`KeysError` if invalid."""
    kty = jwk.get("kty")
    if kty == "oct":
        raise KeysError("a symmetric (oct) JWK has no public key")
    members = _PUBLIC_MEMBERS.get(kty) if isinstance(kty, str) else None
    if members is None:
        raise KeysError(f"unsupported JWK {_describe_type(jwk)}: RSA, EC or OKP")
    strings: dict[str, str] = {}
    for name in members:
        value = jwk.get(name)
        if not isinstance(value, str):
            raise KeysError(f"not a usable JWK: member {name!r} must be a string")
        strings[name] = value
    if kty == "RSA":
        _check_rsa_modulus(strings["n"])  # before joserfc warns about a weak key
    public: dict[str, str | list[str]] = dict(strings)
    try:
        if kty == "RSA":
            return import_key(public, "RSA")
        if kty == "EC":
            return import_key(public, "EC")
        return import_key(public, "OKP")
    except (JoseError, ValueError, TypeError, KeyError) as exc:
        raise KeysError(f"not a usable JWK ({first_line(exc)})") from None


def first_line(error: BaseException) -> str:
    """The first line of an exception's message, or its type when it has none."""
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def _public_jwk(jose: RSAKey | OKPKey) -> dict[str, str]:
    jwk = {name: str(value) for name, value in jose.as_dict(private=False).items()}
    is_rsa = jwk["kty"] == "RSA"
    jwk["use"] = "sig"
    jwk["alg"] = RSA_JWT_ALGORITHM if is_rsa else ED25519_JWT_ALGORITHM
    jwk["kid"] = str(jose.thumbprint())
    return jwk


def _check_rsa_size(key: object) -> None:
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        _check_rsa_bits(key.key_size)


def _check_rsa_modulus(n: str) -> None:
    # Only the length matters here; joserfc parses the key itself afterwards.
    try:
        padded = n + "=" * (-len(n) % 4)
        modulus = base64.b64decode(padded, altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise KeysError("not a usable JWK: 'n' is not base64url") from None
    _check_rsa_bits(int.from_bytes(modulus, "big").bit_length())


def _check_rsa_bits(bits: int) -> None:
    if not MIN_RSA_BITS <= bits <= MAX_RSA_BITS:
        raise KeysError(f"RSA keys must have {MIN_RSA_BITS}..{MAX_RSA_BITS} bits, not {bits}")


def _describe_type(jwk: Mapping[str, object]) -> str:
    kty, crv = jwk.get("kty"), jwk.get("crv")
    return f"kty {_shown(kty)}" + ("" if crv is None else f" crv {_shown(crv)}")


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 3] + "..."
