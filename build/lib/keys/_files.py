"""Reading and writing key material: whole files, final mode from birth.

Two rules keep secrets from leaking and readers from seeing half a file:

1. A file is written under a temporary name that is *created* with its final
   mode (``0600`` for private keys), so no other user can open it in the
   window between creating and tightening it, then renamed (or hard-linked,
   when an existing file must win) onto its real name in one step.
2. Directories this package creates are ``0700``: they hold private keys.

``OSError`` is translated to :class:`KeyFileError` here, once, so every caller
reports "cannot read/write <path>: <reason>" the same way.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from ._errors import KeyFileError

# Key files are a few KiB and authorized_keys files rarely exceed a few MiB;
# the cap stops an accidental `/dev/zero` or disk image from being slurped.
_MAX_FILE_BYTES = 16 * 1024 * 1024

# Directories that hold private keys must not be listable by other users.
_PRIVATE_DIR_MODE = 0o700


def read_key_file(path: Path, what: str) -> bytes:
    """Return the contents of ``path``; ``what`` names it in error messages."""
    try:
        with path.open("rb") as file:
            data = file.read(_MAX_FILE_BYTES + 1)
    except OSError as error:
        raise KeyFileError(f"cannot read {what} {path}: {_reason(error)}") from error
    if len(data) > _MAX_FILE_BYTES:
        raise KeyFileError(f"{what} {path} is larger than {_MAX_FILE_BYTES} bytes")
    return data


def write_key_file(path: Path, data: bytes, *, mode: int, replace: bool = True) -> bool:
    """Atomically write ``data`` to ``path``, created with ``mode``.

    With ``replace=False`` an existing ``path`` is left alone and ``False`` is
    returned, so two processes creating the same key agree on one winner.
    """
    try:
        _make_private_dirs(path.parent)
        temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
        descriptor = os.open(temporary, flags, mode)
    except OSError as error:
        raise KeyFileError(f"cannot write {path}: {_reason(error)}") from error
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        if replace:
            os.replace(temporary, path)
            return True
        try:
            os.link(temporary, path)  # unlike rename, link never clobbers
        except FileExistsError:
            return False
        return True
    except OSError as error:
        raise KeyFileError(f"cannot write {path}: {_reason(error)}") from error
    finally:
        temporary.unlink(missing_ok=True)


def _make_private_dirs(directory: Path) -> None:
    # Path.mkdir(parents=True) gives only the last directory the mode; every
    # directory created here may end up holding keys, so each gets 0700.
    missing: list[Path] = []
    while not directory.exists():
        missing.append(directory)
        if directory.parent == directory:
            break
        directory = directory.parent
    for created in reversed(missing):
        created.mkdir(mode=_PRIVATE_DIR_MODE, exist_ok=True)


def _reason(error: OSError) -> str:
    return error.strerror or str(error)
