r"""The route table: which tunnel serves which name, and who owns each name.

Rules this module enforces (pure: no I/O, the clock is injected):

1. A name is *held* by one live tunnel at a time and *owned* by the key
   (fingerprint) that claimed it.
2. The owner may claim its name again at any time: the new tunnel replaces the
   old one at once (a reconnect must not wait for the old, perhaps half-dead,
   connection to time out).
3. Another owner is refused while the name is held — and for
   ``reservation_s`` after the holder went away, so a name cannot be taken over
   in the moment between a disconnect and the owner's reconnect.
4. Releasing is by tunnel, not by name: a replaced tunnel closing late must not
   remove its successor.
5. A tunnel whose job is over (its certificate expired) is released without
   the reservation: the name is free at once (``reserve=False``).

Lifecycle of a name::

    FREE --claim--> HELD --release--> RESERVED --(reservation_s)--> FREE
                     ^  \--claim by owner (replace)--/      |
                     \------------claim by owner-------------/
    HELD --release(reserve=False): the job ended--> FREE
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


class NameState(enum.Enum):
    FREE = "free"
    HELD = "held"
    RESERVED = "reserved"


class NameTaken(Exception):
    """The name is held or reserved by another key."""


@dataclass(slots=True)
class _Entry(Generic[T]):
    owner: str
    tunnel: T | None  # None while RESERVED
    reserved_until: float = 0.0


@dataclass(frozen=True, slots=True)
class Offline:
    """Lookup result for a name whose tunnel went away recently (answered with 502, or
    in portal mode the holding page for an instance the portal knows)."""

    name: str


class RouteTable(Generic[T]):
    """Names → tunnels, with ownership and a reconnect reservation."""

    def __init__(
        self, *, reservation_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._entries: dict[str, _Entry[T]] = {}
        self._reservation_s = reservation_s
        self._clock = clock

    def __repr__(self) -> str:
        held = sum(1 for e in self._entries.values() if e.tunnel is not None)
        return f"<RouteTable held={held} reserved={len(self._entries) - held}>"

    def state(self, name: str) -> NameState:
        entry = self._live_entry(name)
        if entry is None:
            return NameState.FREE
        return NameState.HELD if entry.tunnel is not None else NameState.RESERVED

    def claim(self, name: str, owner: str, tunnel: T) -> T | None:
        """Make ``tunnel`` serve ``name``; return the tunnel it replaced, if any.

        Raises NameTaken if another owner holds or reserves the name.
        """
        entry = self._live_entry(name)
        if entry is not None and entry.owner != owner:
            raise NameTaken(name)
        replaced = entry.tunnel if entry is not None else None
        self._entries[name] = _Entry(owner=owner, tunnel=tunnel)
        return replaced

    def release(self, name: str, tunnel: T, *, reserve: bool = True) -> bool:
        """Stop ``tunnel`` serving ``name`` (no-op if it was already replaced); the name
        stays reserved for its owner unless ``reserve`` is False (rule 5)."""
        entry = self._entries.get(name)
        if entry is None or entry.tunnel is not tunnel:
            return False
        if reserve and self._reservation_s > 0:
            entry.tunnel = None
            entry.reserved_until = self._clock() + self._reservation_s
        else:
            del self._entries[name]
        return True

    def lookup(self, name: str) -> T | Offline | None:
        """The tunnel serving ``name``; Offline if it went away recently; None if unknown."""
        entry = self._live_entry(name)
        if entry is None:
            return None
        return entry.tunnel if entry.tunnel is not None else Offline(name)

    def owner(self, name: str) -> str | None:
        """The key owning ``name`` (held or reserved), None if it is free."""
        entry = self._live_entry(name)
        return entry.owner if entry is not None else None

    def owned_by(self, owner: str) -> list[str]:
        """The names ``owner`` holds or still reserves."""
        return [name for name in list(self._entries) if self.owner(name) == owner]

    def held(self) -> Iterator[tuple[str, T]]:
        for name, entry in self._entries.items():
            if entry.tunnel is not None:
                yield name, entry.tunnel

    def sweep(self) -> int:
        """Forget reservations that ran out; returns how many (bounds memory)."""
        now = self._clock()
        expired = [
            name
            for name, entry in self._entries.items()
            if entry.tunnel is None and entry.reserved_until <= now
        ]
        for name in expired:
            del self._entries[name]
        return len(expired)

    def _live_entry(self, name: str) -> _Entry[T] | None:
        entry = self._entries.get(name)
        if entry is not None and entry.tunnel is None and entry.reserved_until <= self._clock():
            del self._entries[name]
            return None
        return entry
