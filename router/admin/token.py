"""The admin API's bearer token: read from ``admin_token_file``, or made once in state_dir.

Rules:

1. A token is at least ``MIN_TOKEN_CHARS`` printable characters without
   spaces (the file's one line; surrounding whitespace ignored).
2. With no ``admin_token_file`` the token is ``STATE_DIR/admin_token``: read
   when it exists, else created with 32 random bytes, mode 0600 (created
   exclusively, so two processes starting at once agree on one token).
3. Tokens are compared in constant time (``hmac.compare_digest``).
4. Log lines name a token by its id, never by its value: the file's path and
   the first 8 hex digits of its SHA-256.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from hostmux.config.layered import ConfigError

# Reason: a guessable token would be the whole admin API's password; 16 is far from that.
MIN_TOKEN_CHARS = 16


@dataclass(frozen=True)
class AdminToken:
    value: str
    path: Path

    def __repr__(self) -> str:  # never the value
        return f"<AdminToken {self.token_id}>"

    @property
    def token_id(self) -> str:
        """How log lines name it (rule 4)."""
        digest = hashlib.sha256(self.value.encode()).hexdigest()[:8]
        return f"{self.path}#{digest}"

    def accepts(self, authorization: str | None) -> bool:
        """Whether an ``Authorization`` header value carries this token (rule 3)."""
        if authorization is None:
            return False
        scheme, _, given = authorization.strip().partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(given.strip().encode(), self.value.encode())


def load_token(path: Path, *, create: bool) -> tuple[AdminToken, bool]:
    """The token in ``path`` and whether it was made now; ``create``: make it when missing
    (rule 2). A ConfigError says what is wrong with the file."""
    if create:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        except OSError as exc:
            raise ConfigError(f"admin token {path}: cannot create: {exc.strerror}") from None
        else:
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_urlsafe(32) + "\n")
            return AdminToken(read_token(path), path), True
    return AdminToken(read_token(path), path), False


def read_token(path: Path) -> str:
    try:
        value = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise ConfigError(f"admin_token_file: {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(f"admin_token_file: {path}: cannot read: {reason}") from None
    if len(value) < MIN_TOKEN_CHARS or not value.isprintable() or " " in value:
        raise ConfigError(
            f"admin_token_file: {path}: the token must be one line of at least "
            f"{MIN_TOKEN_CHARS} printable characters without spaces"
        )
    return value
