"""SSH key pairs in OpenSSH formats: generate, write, load, fingerprint.

The router needs a host key, and clients and tests need user keys; both are
plain OpenSSH files so ``ssh``, ``ssh-keygen`` and asyncssh read them as-is.
Fingerprints are computed exactly as ``ssh-keygen -l`` shows them:
``SHA256:`` followed by the unpadded base64 of the SHA-256 of the public key
blob (the base64 field of the public key line, decoded).

Private keys are written unencrypted: a server must start unattended, and the
file mode (``0600`` in a ``0700`` directory) is the protection.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import itertools
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from ._errors import KeyFileError
from ._files import read_key_file, write_key_file

# 2048 is the smallest size OpenSSH and current guidance still accept; above
# 8192 key generation takes minutes and buys nothing.
MIN_RSA_BITS = 2048
MAX_RSA_BITS = 8192

# Private keys must be readable by their owner only; ssh refuses looser modes.
_PRIVATE_KEY_MODE = 0o600
# The public half is meant to be copied around.
_PUBLIC_KEY_MODE = 0o644

# Written into a generated host key's public line so an operator can tell it
# apart from user keys in a known_hosts file.
_HOST_KEY_COMMENT = "hostmux host key"

# Certificates are fingerprinted by ssh-keygen over the plain key inside them,
# not over the blob we would hash, so they are refused rather than mislabelled.
_CERTIFICATE_SUFFIX = "-cert-v01@openssh.com"

# How an OpenSSH private key file begins; anything else is tried as PEM.
_OPENSSH_PRIVATE_HEADER = b"-----BEGIN OPENSSH PRIVATE KEY-----"

# The private key types asyncssh and OpenSSH both accept for host and user keys.
_UsableKey = ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class KeyPair:
    """An unencrypted OpenSSH private key and its public key line."""

    private_openssh: bytes
    public_openssh: str  # "ssh-ed25519 AAAA... comment", no trailing newline
    fingerprint: str  # "SHA256:...", as `ssh-keygen -l` prints it

    def __repr__(self) -> str:
        # The default repr would print the private key into logs.
        key_type = self.public_openssh.split(" ", 1)[0]
        return f"KeyPair({key_type} {self.fingerprint})"


@dataclass(frozen=True)
class PublicKeyLine:
    """The key found in one authorized_keys, known_hosts or ``.pub`` line."""

    key_type: str  # "ssh-ed25519", "ssh-rsa", ...
    blob: bytes  # the decoded base64 field: what fingerprints hash
    comment: str

    @property
    def fingerprint(self) -> str:
        return _fingerprint_of_blob(self.blob)


def generate_keypair(
    algorithm: Literal["ed25519", "rsa"] = "ed25519",
    *,
    rsa_bits: int = 3072,
    comment: str = "",
) -> KeyPair:
    """Generate a new key pair; ``rsa_bits`` applies to RSA only.

    Raises ``ValueError`` for an unknown algorithm, an RSA size outside
    ``MIN_RSA_BITS..MAX_RSA_BITS`` or a comment containing a line break.
    """
    if "\n" in comment or "\r" in comment:
        raise ValueError("a key comment must be a single line")
    key: _UsableKey
    if algorithm == "ed25519":
        key = ed25519.Ed25519PrivateKey.generate()
    elif algorithm == "rsa":
        if not MIN_RSA_BITS <= rsa_bits <= MAX_RSA_BITS:
            raise ValueError(
                f"RSA key size must be {MIN_RSA_BITS}..{MAX_RSA_BITS} bits, not {rsa_bits}"
            )
        key = rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)
    else:
        raise ValueError(f"unknown key algorithm {algorithm!r}; use 'ed25519' or 'rsa'")
    return _keypair_from_key(key, _openssh_private_bytes(key), comment)


def write_keypair(pair: KeyPair, path: Path) -> None:
    """Write the private key to ``path`` (0600) and its public line to ``path.pub``.

    Existing files are replaced; missing parent directories are created 0700.
    Raises :class:`KeyFileError` if either file cannot be written.
    """
    write_key_file(path, pair.private_openssh, mode=_PRIVATE_KEY_MODE)
    write_key_file(_public_path(path), pair.public_openssh.encode() + b"\n", mode=_PUBLIC_KEY_MODE)


def load_keypair(path: Path) -> KeyPair:
    """Load an unencrypted private key in OpenSSH or PEM format.

    A PEM key is converted to the OpenSSH format. The comment is taken from
    ``path.pub`` when that file holds the same key, since OpenSSH private
    files keep it where ``cryptography`` cannot read it.
    Raises :class:`KeyFileError` naming the file and what is wrong with it.
    """
    data = read_key_file(path, "private key")
    is_openssh = data.lstrip().startswith(_OPENSSH_PRIVATE_HEADER)
    key = _parse_private_key(data, path, is_openssh=is_openssh)
    # An OpenSSH file is kept byte for byte: it may carry a comment we cannot read.
    private_openssh = data if is_openssh else _openssh_private_bytes(key)
    return _with_comment_from_public_file(_keypair_from_key(key, private_openssh, ""), path)


def load_or_create_host_key(path: Path) -> tuple[KeyPair, bool]:
    """Load the Ed25519 host key at ``path``, creating it if absent.

    Returns the key pair and whether it was created by this call. When two
    processes race to create it, both end up with the one that reached disk.
    """
    if path.exists():
        return load_keypair(path), False
    pair = generate_keypair("ed25519", comment=_HOST_KEY_COMMENT)
    if not write_key_file(path, pair.private_openssh, mode=_PRIVATE_KEY_MODE, replace=False):
        return load_keypair(path), False
    write_key_file(_public_path(path), pair.public_openssh.encode() + b"\n", mode=_PUBLIC_KEY_MODE)
    return pair, True


def fingerprint_of_public_line(line: str) -> str:
    """Return the ``SHA256:`` fingerprint of the key in one public key line.

    Accepts ``type base64 [comment]``, optionally preceded by authorized_keys
    options or known_hosts host patterns. Raises :class:`KeyFileError` if the
    line holds no public key.
    """
    return parse_public_line(line).fingerprint


def parse_public_line(line: str) -> PublicKeyLine:
    """Find the key in an authorized_keys, known_hosts or ``.pub`` line.

    The key is the first pair of words ``type base64`` whose decoded base64
    starts with ``type`` itself (every SSH key blob names its own type), so
    options and host patterns before it need no parser of their own. Key types
    this package cannot use (FIDO keys, for example) are still fingerprinted.
    """
    words = line.split()
    for index, (key_type, encoded) in enumerate(itertools.pairwise(words)):
        blob = _decode_blob(encoded)
        if blob is None or _blob_type(blob) != key_type:
            continue
        if key_type.endswith(_CERTIFICATE_SUFFIX):
            raise KeyFileError(f"{key_type} is a certificate, not a public key")
        return PublicKeyLine(key_type, blob, " ".join(words[index + 2 :]))
    shown = line.strip()
    shown = shown if len(shown) <= 40 else shown[:37] + "..."
    raise KeyFileError(f"no public key found in {shown!r}")


def iter_public_lines(text: str) -> Iterator[tuple[int, str]]:
    """Yield ``(line number, line)`` for each line of a key list worth parsing.

    Blank lines and ``#`` comments are skipped, as sshd skips them in
    authorized_keys and known_hosts.
    """
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            yield number, stripped


def _parse_private_key(data: bytes, path: Path, *, is_openssh: bool) -> _UsableKey:
    key: object
    try:
        if is_openssh:
            key = serialization.load_ssh_private_key(data, password=None)
        else:
            key = serialization.load_pem_private_key(data, password=None)
    except TypeError as error:  # cryptography's way of saying "needs a password"
        raise KeyFileError(
            f"private key {path} is encrypted; hostmux needs an unencrypted key"
        ) from error
    except (ValueError, UnsupportedAlgorithm) as error:
        raise KeyFileError(
            f"{path} is not an OpenSSH or PEM private key ({_first_line(error)})"
        ) from error
    if not isinstance(key, _UsableKey):
        raise KeyFileError(
            f"private key {path} is of type {type(key).__name__}; use Ed25519, RSA or ECDSA"
        )
    return key


def _keypair_from_key(key: _UsableKey, private_openssh: bytes, comment: str) -> KeyPair:
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    line = public.decode("ascii")
    if comment:
        line = f"{line} {comment}"
    return KeyPair(private_openssh, line, fingerprint_of_public_line(line))


def _openssh_private_bytes(key: _UsableKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )


def _with_comment_from_public_file(pair: KeyPair, path: Path) -> KeyPair:
    try:
        text = _public_path(path).read_text(encoding="utf-8")
        found = parse_public_line(text.strip())
    except (OSError, UnicodeDecodeError, KeyFileError):
        return pair  # the .pub file is a convenience; the private key is the truth
    if found.fingerprint != pair.fingerprint or not found.comment:
        return pair
    public = f"{pair.public_openssh} {found.comment}"
    return KeyPair(pair.private_openssh, public, pair.fingerprint)


def _public_path(path: Path) -> Path:
    return path.with_name(path.name + ".pub")


def _decode_blob(encoded: str) -> bytes | None:
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        return None


def _blob_type(blob: bytes) -> str | None:
    # An SSH key blob starts with its type as an SSH string: u32 length, bytes.
    if len(blob) < 4:
        return None
    (length,) = struct.unpack(">I", blob[:4])
    if length == 0 or length > 64 or len(blob) <= 4 + length:
        return None
    try:
        return blob[4 : 4 + length].decode("ascii")
    except UnicodeDecodeError:
        return None


def _fingerprint_of_blob(blob: bytes) -> str:
    digest = hashlib.sha256(blob).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
