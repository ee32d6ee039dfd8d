"""An OpenSSH certificate authority: the portal signs instance keys, the router checks offline.

A user certificate binds an instance's public key to the principal = instance
id for the life of the job (``valid_before``). The router trusts the CA's
public key and needs no portal round trip to authenticate a certificate.
Certificates carry only the extensions a tunnel needs (``permit-port-
forwarding``, ``permit-pty``): no agent, X11 or user-rc. Signing is
cryptography's ``SSHCertificateBuilder``.
"""

from __future__ import annotations

import datetime
import secrets
from collections.abc import Sequence
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import SSHCertificateBuilder, SSHCertificateType

from ._errors import KeyFileError, KeysError
from ._files import read_key_file, write_key_file
from ._keypairs import fingerprint_of_public_line

_CA_COMMENT = "hostmux-portal-ca"
# What a tunnel client needs from its session: forwards, and a pty for ssh's default.
_EXTENSIONS = (b"permit-port-forwarding", b"permit-pty")


class SshCertificateAuthority:
    """An Ed25519 CA key that signs OpenSSH user certificates."""

    __slots__ = ("_key",)

    def __init__(self, key: ed25519.Ed25519PrivateKey) -> None:
        self._key = key

    def __repr__(self) -> str:
        return f"<SshCertificateAuthority {self.fingerprint}>"

    @classmethod
    def generate(cls) -> SshCertificateAuthority:
        return cls(ed25519.Ed25519PrivateKey.generate())

    @classmethod
    def load(cls, path: Path) -> SshCertificateAuthority:
        data = read_key_file(path, "SSH CA key")
        try:
            key = serialization.load_ssh_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise KeyFileError(f"{path}: not an OpenSSH private key ({exc})") from None
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise KeyFileError(f"{path}: the SSH CA key must be Ed25519")
        return cls(key)

    def save(self, path: Path, *, replace: bool = True) -> bool:
        private = self._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )  # fmt: skip
        written = write_key_file(path, private, mode=0o600, replace=replace)
        public_path = path.with_name(path.name + ".pub")
        write_key_file(public_path, (self.public_line + "\n").encode(), mode=0o644)
        return written

    @property
    def public_line(self) -> str:
        line = (
            self._key.public_key()
            .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
            .decode()
        )
        return f"{line} {_CA_COMMENT}"

    @property
    def fingerprint(self) -> str:
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
        """One OpenSSH user-certificate line for ``public_line``."""
        if not principals:
            raise KeysError("a certificate needs at least one principal")
        if valid_before <= valid_after:
            raise KeysError("valid_before must be after valid_after")
        try:
            subject = serialization.load_ssh_public_key(public_line.strip().encode())
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise KeysError(f"not an OpenSSH public key ({exc})") from None
        builder = (
            SSHCertificateBuilder()
            .public_key(subject)  # type: ignore[arg-type]
            .serial(serial if serial is not None else secrets.randbits(63))
            .type(SSHCertificateType.USER)
            .key_id(key_id.encode())
            .valid_principals([p.encode() for p in principals])
            .valid_after(int(valid_after.timestamp()))
            .valid_before(int(valid_before.timestamp()))
        )
        for extension in _EXTENSIONS:
            builder = builder.add_extension(extension, b"")
        certificate = builder.sign(self._key)
        return certificate.public_bytes().decode() + f" {key_id}"


def load_or_create_ssh_ca(path: Path) -> tuple[SshCertificateAuthority, bool]:
    if path.exists():
        return SshCertificateAuthority.load(path), False
    ca = SshCertificateAuthority.generate()
    if ca.save(path, replace=False):
        return ca, True
    return SshCertificateAuthority.load(path), False  # another process won the race
