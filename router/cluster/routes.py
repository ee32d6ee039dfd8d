"""The route cache: which router holds a name, as the registry said (pure, no I/O).

Rules:

1. An entry is the registry's ``Route`` for a name (owner, generation,
   holders), or ``None`` for a name the registry does not know (a negative
   entry). Entries are filled by look-ups and bounded (least recently used
   out first), so a flood of random names costs memory once.
2. Every ``Invalidation`` drops its name (the registry publishes each change
   of a name's holders, a claim of a free name included).
3. Entries are *trusted* only while the invalidation subscription is up: a
   message missed while it was down could leave any entry stale. When it goes
   down, negative entries are dropped and positive ones are kept only as a
   fallback for when the registry cannot be reached (fail static); every
   request looks the name up afresh. When it is up again, the cache starts
   empty (what happened meanwhile is unknown).
4. A look-up that raced an invalidation is not stored (``ticket``): it may
   have read the registry before the change.

A stale entry can still be used between a change and its message; the holder
re-checks owner and generation and answers "moved" (``wire``), so it is
never served by the wrong tunnel.
"""

from __future__ import annotations

from collections import OrderedDict

from router.registry.model import Route

# Reason: ~100 bytes an entry, so at most a few MiB, and far more names than one
# cluster serves at once; random-name floods only churn the oldest entries.
MAX_ENTRIES = 65_536


class RouteCache:
    """name -> ``Route`` (held or reserved) or ``None`` (unknown), least recently used out."""

    __slots__ = ("_entries", "_max", "_ticket", "trusted")

    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        self._entries: OrderedDict[str, Route | None] = OrderedDict()
        self._max = max_entries
        self._ticket = 0  # bumped by every drop: look-ups older than a drop are not stored
        self.trusted = False  # the invalidation subscription is up (rule 3)

    def __repr__(self) -> str:
        return f"<RouteCache entries={len(self._entries)} trusted={self.trusted}>"

    def __len__(self) -> int:
        return len(self._entries)

    def ticket(self) -> int:
        """Take before a look-up; hand to ``put`` with its answer (rule 4)."""
        return self._ticket

    def get(self, name: str) -> tuple[bool, Route | None]:
        """(found, entry): an entry only while trusted; (False, None) is a miss."""
        if not self.trusted or name not in self._entries:
            return False, None
        self._entries.move_to_end(name)
        return True, self._entries[name]

    def fallback(self, name: str) -> Route | None:
        """The last route known for ``name``, trusted or not: for when the registry
        cannot be reached (the holder still checks owner and generation)."""
        return self._entries.get(name)

    def put(self, name: str, route: Route | None, ticket: int) -> None:
        """Store a look-up's answer, unless an invalidation came since ``ticket``."""
        if ticket != self._ticket:
            return
        if route is None and not self.trusted:
            return  # negative entries only while the subscription is up (rule 3)
        self._entries[name] = route
        self._entries.move_to_end(name)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def drop(self, name: str) -> None:
        self._ticket += 1
        self._entries.pop(name, None)

    def subscribed(self) -> None:
        """The subscription is up: start empty and trust what is stored from now on."""
        self._ticket += 1
        self._entries.clear()
        self.trusted = True

    def unsubscribed(self) -> None:
        """The subscription is down: keep only positive entries, as a fallback."""
        self._ticket += 1
        self.trusted = False
        for name in [name for name, route in self._entries.items() if route is None]:
            del self._entries[name]
