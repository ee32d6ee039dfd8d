"""Revoked sessions, kept across a restart in ``state_dir`` (a pure core, one file of I/O).

What is revoked, and until when:

1. A session id (``sid``): by the user's own logout. Kept until the session
   would have expired anyway (issued + ``session_lifetime_s``); after that its
   cookie no longer opens, so forgetting the id costs nothing.
2. Every session of a user issued at or before a moment: by the portal (its
   logout, or the user's removal from a shared instance). Kept for
   ``session_lifetime_s`` after that moment, for the same reason.
3. The ``jti`` of every revocation the portal sent, until its ``exp``: a
   replay inside that window is recognised; after it the token itself is
   refused as expired.

The file (``revocations.json``) is rewritten whole on each change: written to
a temporary file in the same directory, flushed to disk, then renamed over the
old one, so a crash leaves the old or the new file, never half of one. Entries
past their end are pruned before each write, which bounds the file by the
revocations of one session lifetime.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ._session import Session

FILE_NAME = "revocations.json"


@dataclass
class Revocations:
    """Revoked sids, revoked users (with the moment) and used revocation jtis."""

    session_lifetime_s: int
    sids: dict[str, int] = field(default_factory=dict)  # sid -> forget after (unix s)
    users: dict[str, int] = field(default_factory=dict)  # user -> revoked at or before (unix s)
    jtis: dict[str, int] = field(default_factory=dict)  # jti -> its exp (unix s)

    def __repr__(self) -> str:
        return f"<Revocations sids={len(self.sids)} users={len(self.users)} jtis={len(self.jtis)}>"

    def is_revoked(self, session: Session) -> bool:
        if session.sid in self.sids:
            return True
        before = self.users.get(session.user)
        return before is not None and session.issued_at <= before

    def revoke_session(self, session: Session) -> None:
        self.sids[session.sid] = session.issued_at + self.session_lifetime_s

    def revoke_user(self, user: str, at: int) -> None:
        self.users[user] = max(at, self.users.get(user, at))

    def use_jti(self, jti: str, exp: int) -> bool:
        """Record a revocation's ``jti``; False if it was seen before (a replay)."""
        if jti in self.jtis:
            return False
        self.jtis[jti] = exp
        return True

    def prune(self, now: int) -> None:
        """Forget what can no longer matter (see the module docstring)."""
        self.sids = {sid: end for sid, end in self.sids.items() if end >= now}
        lifetime = self.session_lifetime_s
        self.users = {user: at for user, at in self.users.items() if at + lifetime >= now}
        self.jtis = {jti: exp for jti, exp in self.jtis.items() if exp >= now}

    def to_json(self) -> str:
        return json.dumps({"version": 1, "sids": self.sids, "users": self.users,
                           "jtis": self.jtis}, separators=(",", ":"))  # fmt: skip

    @classmethod
    def from_json(cls, text: str, session_lifetime_s: int) -> Revocations:
        """Parsed from ``to_json``'s output; ValueError for anything else."""
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("version") != 1:
            raise ValueError("not a hostmux revocations file (version 1)")
        parts = [data.get(name) for name in ("sids", "users", "jtis")]
        for part in parts:
            if not isinstance(part, dict) or not all(
                isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
                for k, v in part.items()
            ):
                raise ValueError("entries must map strings to integer times")
        sids, users, jtis = parts
        assert isinstance(sids, dict) and isinstance(users, dict) and isinstance(jtis, dict)
        return cls(session_lifetime_s, dict(sids), dict(users), dict(jtis))


def load_revocations(state_dir: Path, session_lifetime_s: int) -> Revocations:
    """The saved revocations (none if the file does not exist yet).

    Raises OSError (unreadable) or ValueError (not ours): the helper refuses to
    start rather than forget revocations silently.
    """
    path = state_dir / FILE_NAME
    try:
        text = path.read_text()
    except FileNotFoundError:
        return Revocations(session_lifetime_s)
    try:
        return Revocations.from_json(text, session_lifetime_s)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def write_revocations(state_dir: Path, text: str) -> None:
    """Replace the file with ``text`` (``Revocations.to_json``) atomically: temporary
    file in the same directory, fsync, rename."""
    fd, temporary = tempfile.mkstemp(prefix=".revocations-", dir=state_dir)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(temporary, state_dir / FILE_NAME)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
