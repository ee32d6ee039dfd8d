"""An OpenSSH certificate authority: the portal signs instance keys, the router checks offline.

A user certificate binds an instance's public key to the principal = instance
id for the life of the job (``valid_before``). The router trusts the CA's
public key and needs no portal round trip to authenticate a certificate.
Certificates carry only the extensions a tunnel needs (``permit-port-
forwarding``, ``permit-pty``) and no critical options: no agent or X11
forwarding, no ``~/.ssh/rc``. Signing is ``cryptography``'s
``SSHCertificateBuilder``; the CA key is Ed25519, stored as an OpenSSH
private key file (``0600``) with its public line beside it in ``PATH.pub``.
"""

from __future__ import annotations

import datetime
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import SSHCertificateBuilder, SSHCertificateType

from ._errors import KeyFileError, KeysError
from ._files import read_key_file, write_key_file
from ._instance import first_line, instance_public_key_from_openssh
from ._keypairs import fingerprint_of_public_line

# Written after the CA's public key so an operator recognises it in a
# TrustedUserCAKeys file or a router config.
_CA_COMMENT = "hostmux-portal-ca"

# What a tunnel client needs from its session: forwards, and a pty because
# plain `ssh` asks for one. Agent, X11 and user-rc are deliberately absent.
_EXTENSIONS = (b"permit-port-forwarding", b"permit-pty")

# The CA's private key is a secret; its public line is meant to be copied.
_PRIVATE_KEY_MODE = 0o600
_PUBLIC_KEY_MODE = 0o644

# Serials are u64 in the certificate format; random 63-bit ones never collide
# in practice and stay positive in tools that print them as signed numbers.
_MAX_SERIAL = 2**64 - 1
_RANDOM_SERIAL_BITS = 63

# valid_before of a certificate that never expires (OpenSSH's "forever").
FOREVER = 2**64 - 1


class SshCertificateAuthority:
    """An Ed25519 CA key that signs OpenSSH user certificates."""

    __slots__ = ("_key",)

    def __init__(self, key: ed25519.Ed25519PrivateKey) -> None:
        self._key = key

    def __repr__(self) -> str:
        return f"<SshCertificateAuthority {self.fingerprint}>"

    @classmethod
    def generate(cls) -> SshCertificateAuthority:
        """A new CA with a fresh Ed25519 key."""
        return cls(ed25519.Ed25519PrivateKey.generate())

    @classmethod
    def load(cls, path: Path) -> SshCertificateAuthority:
        """Read the CA's OpenSSH private key file; raises :class:`KeyFileError`."""
        data = read_key_file(path, "SSH CA key")
        try:
            key = serialization.load_ssh_private_key(data, password=None)
        except TypeError as exc:  # cryptography's way of saying "needs a password"
            raise KeyFileError(f"SSH CA key {path} is encrypted; it must not be") from exc
        except (ValueError, UnsupportedAlgorithm) as exc:
            reason = first_line(exc)
            raise KeyFileError(f"{path} is not an OpenSSH private key ({reason})") from exc
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise KeyFileError(f"SSH CA key {path} must be Ed25519")
        return cls(key)

    def save(self, path: Path, *, replace: bool = True) -> bool:
        """Write the private key to ``path`` (0600) and the public line to ``path.pub``.

        With ``replace=False`` an existing ``path`` is kept, nothing is written
        and ``False`` is returned, so a lost creation race leaves the winner's
        files consistent. Raises :class:`KeyFileError` if writing fails.
        """
        private = self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
        if not write_key_file(path, private, mode=_PRIVATE_KEY_MODE, replace=replace):
            return False
        public_path = path.with_name(path.name + ".pub")
        write_key_file(public_path, (self.public_line + "\n").encode(), mode=_PUBLIC_KEY_MODE)
        return True

    @property
    def public_line(self) -> str:
        """``ssh-ed25519 AAAA... hostmux-portal-ca``: what the router trusts."""
        line = (
            self._key.public_key()
            .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
            .decode("ascii")
        )
        return f"{line} {_CA_COMMENT}"

    @property
    def fingerprint(self) -> str:
        """``SHA256:...`` of the CA public key, as ``ssh-keygen -l`` prints it."""
        return fingerprint_of_public_line(self.public_line)

    def sign_user_key(
        self,
        public_line: str,
        *,
        principals: Sequence[str],
        key_id: str,
        valid_after: datetime.datetime,
        valid_before: datetime.datetime,
        serial: int | None = None,
    ) -> str:
        """One OpenSSH user-certificate line for the RSA or Ed25519 key in ``public_line``.

        ``valid_after``/``valid_before`` must be timezone-aware (a naive time
        would be read in the host's zone). The line ends with ``key_id`` as its
        comment; ``serial`` defaults to a random one. Raises :class:`KeysError`
        for a key that is not RSA or Ed25519 (or is a certificate), no or
        malformed principals, an empty key id, an empty validity window or a
        serial out of range.
        """
        subject = instance_public_key_from_openssh(public_line)
        _check_principals(principals)
        _check_text("key id", key_id)
        after, before = _timestamp(valid_after), _timestamp(valid_before)
        if before <= after:
            raise KeysError("valid_before must be after valid_after")
        if serial is None:
            serial = secrets.randbits(_RANDOM_SERIAL_BITS)
        if not 0 <= serial <= _MAX_SERIAL:
            raise KeysError(f"a certificate serial is 0..{_MAX_SERIAL}, not {serial}")
        try:
            builder = (
                SSHCertificateBuilder()
                .public_key(subject)
                .serial(serial)
                .type(SSHCertificateType.USER)
                .key_id(key_id.encode())
                .valid_principals([principal.encode() for principal in principals])
                .valid_after(after)
                .valid_before(before)
            )
            for extension in _EXTENSIONS:
                builder = builder.add_extension(extension, b"")
            certificate = builder.sign(self._key)
        except ValueError as exc:  # the builder's own range checks, e.g. times before 1970
            raise KeysError(f"cannot sign the certificate ({first_line(exc)})") from exc
        return f"{certificate.public_bytes().decode('ascii')} {key_id}"


@dataclass(frozen=True, slots=True)
class CertificateValidity:
    """When an OpenSSH certificate is valid: Unix seconds; ``valid_before`` None: forever."""

    valid_after: int
    valid_before: int | None
    key_id: str
    principals: tuple[str, ...]

    def renew_at(self, fraction: float) -> float | None:
        """The Unix time ``fraction`` of the lifetime has passed (None: it never expires)."""
        if self.valid_before is None:
            return None
        return self.valid_after + (self.valid_before - self.valid_after) * fraction


def certificate_validity(line: str | bytes) -> CertificateValidity:
    """The validity of the OpenSSH certificate in ``line`` (``TYPE BASE64 [comment]``).

    Raises :class:`KeysError` for anything that is not an OpenSSH certificate.
    """
    data = line.encode() if isinstance(line, str) else line
    try:
        certificate = serialization.load_ssh_public_identity(data.strip())
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise KeysError(f"not an OpenSSH certificate ({first_line(exc)})") from None
    if not isinstance(certificate, serialization.SSHCertificate):
        raise KeysError("a public key, not an OpenSSH certificate")
    before = certificate.valid_before
    return CertificateValidity(
        valid_after=certificate.valid_after,
        valid_before=None if before >= FOREVER else before,
        key_id=certificate.key_id.decode("utf-8", "replace"),
        principals=tuple(p.decode("utf-8", "replace") for p in certificate.valid_principals),
    )


def load_or_create_ssh_ca(path: Path) -> tuple[SshCertificateAuthority, bool]:
    """Load the CA at ``path``, creating it (and ``path.pub``) if absent.

    Returns the CA and whether this call created it. When two processes race
    to create it, both end up with the one that reached disk first.
    """
    if path.exists():
        return SshCertificateAuthority.load(path), False
    ca = SshCertificateAuthority.generate()
    if ca.save(path, replace=False):
        return ca, True
    return SshCertificateAuthority.load(path), False  # another process won the race


def _check_principals(principals: Sequence[str]) -> None:
    if isinstance(principals, str):  # "inst-1" would otherwise be six principals
        raise KeysError("principals must be a list of names, not one string")
    if not principals:
        raise KeysError("a certificate needs at least one principal")
    for principal in principals:
        # sshd reads principal lists as comma-separated, whitespace-free names.
        _check_text("principal", principal)
        if "," in principal or any(char.isspace() for char in principal):
            raise KeysError(f"principal {principal!r} may not contain commas or spaces")


def _check_text(what: str, value: str) -> None:
    if not value:
        raise KeysError(f"the {what} may not be empty")
    if not value.isprintable():
        raise KeysError(f"the {what} may not contain control characters")


def _timestamp(moment: datetime.datetime) -> int:
    if moment.utcoffset() is None:
        raise KeysError("certificate validity times must be timezone-aware")
    return int(moment.timestamp())
