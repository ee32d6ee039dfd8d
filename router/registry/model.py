r"""What a cluster member asks the route registry, and what it answers.

The registry extends ``router.routing``'s four rules from one process to many
routers (see that module for rules 1-4); the additions:

5. A name's *owner* may hold it through one tunnel per router (HA: a listener's
   connections to two routers both serve the name). A claim by the owner on a
   router that has no tunnel for the name *joins*; on a router that has one it
   *replaces* it (rule 2, per router).
6. Every tunnel's hold is a *lease* with an expiry on the registry's clock,
   renewed by its router well before it runs out. A lapsed lease counts as a
   release at the moment it lapsed, so a router that died without a word
   leaves the name RESERVED for its owner (rule 3), never held by a ghost.
7. Every change of a name's holders takes a new *generation* from one counter
   that never goes back (a fencing token): a request routed by a cached
   generation that no longer matches must be routed again.
8. Two claims of a free name by two owners at the same instant, on any two
   routers, give it to exactly one (each claim is one atomic step).

Exceptions::

    RegistryError            anything the registry could not do
    ├── RegistryUnavailable  the store cannot be reached (the router fails static)
    ├── NameTaken            held or reserved by another owner (also routing.NameTaken)
    └── LeaseLost            this router's lease went to a newer connection
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol

from router import routing
from router.routing import NameState

# Reason: the default; a dead router's names move within this many seconds.
DEFAULT_LEASE_TTL_S = 15.0
# Reason: the cluster's keys and pub/sub channel; several clusters may share one Redis.
DEFAULT_PREFIX = "hostmux:"
# Reason: bounds ids that become Redis keys and log fields; far above any real id.
MAX_ID_CHARS = 200


class RegistryError(Exception):
    """The registry could not do what was asked."""


class RegistryUnavailable(RegistryError):
    """The store behind the registry cannot be reached (or did not answer in time)."""


class NameTaken(RegistryError, routing.NameTaken):
    """The name is held or reserved by another owner; says which, never who."""

    def __init__(self, name: str, state: NameState) -> None:
        super().__init__(name)
        self.name = name
        self.state = state

    def __str__(self) -> str:
        return f"the name {self.name!r} is {self.state.value} by another key"


class LeaseLost(RegistryError):
    """This router's tunnel for the name was replaced by a newer connection."""

    def __init__(self, name: str, connection_id: str) -> None:
        super().__init__(name, connection_id)
        self.name = name
        self.connection_id = connection_id

    def __str__(self) -> str:
        return f"the lease on {self.name!r} of connection {self.connection_id!r} was replaced"


class ClaimKind(enum.Enum):
    NEW = "new"  # the name was free, or reserved for this owner
    JOINED = "joined"  # other routers hold it for this owner; this router adds a tunnel
    REPLACED = "replaced"  # this router's older tunnel for the name gave way (close it)
    KEPT = "kept"  # the same connection asked again: lease extended, nothing changed


@dataclass(frozen=True, slots=True)
class Claim:
    """A successful claim (or renewal): the fencing token and what changed."""

    name: str
    generation: int
    kind: ClaimKind
    replaced_connection: str | None = None  # set when kind is REPLACED


@dataclass(frozen=True, slots=True)
class Lease:
    """What a router holds for one of its tunnels (the router id is the caller's)."""

    name: str
    owner: str
    connection_id: str


@dataclass(frozen=True, slots=True)
class Holder:
    """One tunnel serving a name: the router it is on, its connection there, its lease."""

    router_id: str
    connection_id: str
    lease_expires: float  # seconds, on the registry's clock


@dataclass(frozen=True, slots=True)
class Route:
    """A name as the registry sees it now (never FREE: a free name looks up to None)."""

    name: str
    owner: str
    generation: int
    holders: tuple[Holder, ...]  # sorted by router id; empty while RESERVED
    reserved_until: float | None  # seconds on the registry's clock; None while HELD

    @property
    def state(self) -> NameState:
        return NameState.HELD if self.holders else NameState.RESERVED

    def holder_on(self, router_id: str) -> Holder | None:
        return next((h for h in self.holders if h.router_id == router_id), None)


@dataclass(frozen=True, slots=True)
class Renewal:
    """The outcome of renewing a router's leases: kept (maybe re-claimed) and lost."""

    kept: tuple[Claim, ...]
    lost: tuple[RegistryError, ...]  # NameTaken or LeaseLost, one per lost lease


@dataclass(frozen=True, slots=True)
class Invalidation:
    """A name's holders changed: drop it from route caches (generation is the new one)."""

    name: str
    generation: int


class RouteRegistry(Protocol):
    """What a router needs from the registry; every call is one atomic step.

    Error handling: every call may raise RegistryUnavailable (the router keeps
    serving what it holds, claims nothing new) or RegistryError.
    """

    @property
    def lease_ttl_s(self) -> float: ...

    async def claim(self, name: str, owner: str, router_id: str, connection_id: str) -> Claim:
        """Serve ``name`` by this connection; raises NameTaken for another owner's name."""
        ...

    async def renew(self, name: str, owner: str, router_id: str, connection_id: str) -> Claim:
        """Extend the lease, or claim again if it lapsed; NameTaken or LeaseLost if gone."""
        ...

    async def renew_all(self, router_id: str, leases: Sequence[Lease]) -> Renewal:
        """``renew`` for each lease of this router, answering which were lost."""
        ...

    async def release(
        self, name: str, router_id: str, connection_id: str, *, reserve: bool = True
    ) -> bool:
        """Drop this connection's hold (False if it no longer held the name).

        ``reserve`` False: the job ended (its certificate expired), so a name left
        with no holder is freed at once instead of reserved for its owner."""
        ...

    async def release_router(self, router_id: str) -> int:
        """Drop every hold of this router (SIGTERM); returns how many names it held."""
        ...

    async def lookup(self, name: str) -> Route | None:
        """The name's owner, generation and live holders; None if it is free."""
        ...

    async def advertise(self, router_id: str, address: str, ttl_s: float) -> None:
        """Publish where peers reach this router's cluster link (HOST:PORT) for ``ttl_s``."""
        ...

    async def peer_address(self, router_id: str) -> str | None:
        """Where ``router_id``'s cluster link listens, if it advertised it and it has not lapsed."""
        ...

    async def ping(self) -> None:
        """Ask the registry for nothing but an answer (RegistryUnavailable without one)."""
        ...

    def invalidations(self) -> AbstractAsyncContextManager[AsyncIterator[Invalidation]]:
        """Subscribe to changes; subscribed once entered. A lost subscription raises
        RegistryUnavailable from the iterator: drop the whole route cache then."""
        ...

    async def aclose(self) -> None: ...


def check_id(what: str, value: str) -> str:
    """A router, connection or owner id as the registry stores it: printable, no space."""
    if not value or len(value) > MAX_ID_CHARS or not value.isprintable() or " " in value:
        raise ValueError(f"{what} must be 1-{MAX_ID_CHARS} printable characters without spaces")
    return value
