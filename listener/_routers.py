"""Which routers a listener's HA connections dial, and which router each one reached (pure).

A listener that knows more than one router address holds ``ha_connections``
SSH connections at once, each carrying the same name, each to a *different*
router: the route registry keeps one tunnel per router for a name, and a
second tunnel of the same owner on the same router replaces the first. Rules:

1. Router addresses come from the routers given (``--router`` more than once),
   the portal's list, or the several DNS addresses of one name: each address a
   name resolves to is dialled as such, with the host key still checked
   against the name (``host_key_alias``), so DNS round robin spreads them.
2. ``ha_connections = 0`` (the default) means 2 when more than one address is
   known, else 1 (today's single connection, unchanged).
3. Each connection tries the addresses no other connection is using first
   (starting at a different one per connection), then the rest.
4. Before it claims the name, a connection learns the router's id
   (``tunnels --json``, ``router``) and *takes* that router for itself. If
   another connection of this listener holds it already (a balancer, or
   workers sharing a port, sent both to one router), it does not claim: it
   hangs up and redials with back-off. A router that gives no id (no
   registry, or older) is told apart by the address dialled.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from hostmux.config.layered import parse_host_port

# ``ha_connections = 0``: this many connections when more than one address is known
# (cloudflared's answer too: two places, so one can go without the name going).
AUTO_HA_CONNECTIONS = 2


@dataclass(frozen=True, slots=True)
class RouterAddress:
    """One address to dial: ``host:port`` as given, and the address connected to."""

    host: str  # as given: the host key is checked for this name
    port: int
    dial: str  # the address connected to (one of the name's DNS addresses, or ``host``)

    def __str__(self) -> str:
        given = f"{self.host}:{self.port}"
        return given if self.dial == self.host else f"{given}@{self.dial}"


def expand_addresses(
    servers: Sequence[str], resolved: Mapping[str, Sequence[str]]
) -> list[RouterAddress]:
    """``servers`` (``host:port``) as addresses to dial, one per DNS address, no duplicates.

    ``resolved`` maps a host to its addresses (getaddrinfo's order); a host it
    lacks (not resolved, or resolution failed) is dialled by name.
    """
    found: list[RouterAddress] = []
    seen: set[tuple[str, int]] = set()
    for server in servers:
        host, port = parse_host_port(server, "router")
        for dial in resolved.get(host) or [host]:
            if (dial, port) not in seen:
                seen.add((dial, port))
                found.append(RouterAddress(host=host, port=port, dial=dial))
    return found


def wanted_connections(setting: int, addresses: int) -> int:
    """How many connections to hold: ``setting``, or for 0 the automatic choice."""
    if setting > 0:
        return setting
    return AUTO_HA_CONNECTIONS if addresses > 1 else 1


def preference_order(
    candidates: Sequence[RouterAddress], in_use: set[RouterAddress], slot: int
) -> list[RouterAddress]:
    """The order connection ``slot`` tries ``candidates`` in: free ones first, from its own."""
    if not candidates:
        return []
    start = slot % len(candidates)
    rotated = [*candidates[start:], *candidates[:start]]
    return [c for c in rotated if c not in in_use] + [c for c in rotated if c in in_use]


def router_identity(router_id: str | None, address: RouterAddress) -> str:
    """What tells routers apart: the id a router gives, else the address dialled."""
    if router_id:
        return f"id:{router_id}"
    return f"address:{address.dial}:{address.port}"


@dataclass
class RouterHolds:
    """Which connection holds which router: at most one connection per router."""

    _by_slot: dict[int, str] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"<RouterHolds {self._by_slot}>"

    def take(self, slot: int, identity: str) -> int | None:
        """Give ``identity`` to ``slot``; if another connection has it, that one's slot."""
        for other, held in self._by_slot.items():
            if held == identity and other != slot:
                return other
        self._by_slot[slot] = identity
        return None

    def drop(self, slot: int) -> None:
        self._by_slot.pop(slot, None)
