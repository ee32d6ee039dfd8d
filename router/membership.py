"""This router's part in a cluster: its tunnels' leases in the route registry.

Used only when ``registry`` is set; without it the router never imports this
module's registry side and its names live in ``router.routing`` alone.

Rules (issue 17, step 2):

1. A forward is claimed in the registry first (owner, this router's id, the
   tunnel's lease id), then in the local route table. The registry's refusal
   is the client's refusal; an unreachable registry refuses too (ownership is
   never guessed).
2. Releases go to the registry in the background, never blocking an SSH
   callback; a failed one is logged (the lease then lapses by itself).
3. Every ``lease_ttl_s / 3`` the leases of the tunnels this router serves are
   renewed (``LeaseKeeper``); one reported lost closes its tunnel at once. A
   router serving no tunnel pings the registry instead, so whether the
   registry answers is always current (``/readyz``, ``hostmux_degraded``).
4. Fail static: while the registry cannot be reached, held tunnels keep
   serving for at most ``name_reservation_s``, then are closed: within that
   window no other key can claim their names (rule 3 of ``router.routing``),
   so no name is ever served to two owners.
5. On SIGTERM every lease of this router is released at once
   (``release_router``), so names move now, not at lease expiry.

Route look-ups for requests stay local: this router serves only its own
tunnels (a name held only on another router looks unknown or offline here).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import NoReturn

from hostmux.log import fields
from router.registry.model import (
    Lease,
    LeaseLost,
    NameTaken,
    RegistryError,
    RegistryUnavailable,
    RouteRegistry,
)
from router.registry.renewal import RENEWALS_PER_TTL, LeaseKeeper
from router.tunnels import PASSTHROUGH_OWNER_MARK, OtherKind, Tunnel, TunnelHub

log = logging.getLogger("hostmux.cluster")

# Reason: what a client is told while the registry cannot say who owns a name.
UNREACHABLE = "the route registry is unreachable: try again"
# Reason: SIGTERM's release must not hold up the drain when Redis is gone.
RELEASE_ROUTER_TIMEOUT_S = 3.0


class Membership:
    """The registry, this router's id, and the leases of the tunnels it serves."""

    def __init__(
        self,
        registry: RouteRegistry,
        hub: TunnelHub,
        *,
        reservation_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry
        self._hub = hub
        self._reservation_s = reservation_s
        self._clock = clock
        # Set once the SSH address is bound (the default id); claims wait for it.
        self.router_id: str | None = None
        self._leaving = False  # SIGTERM: no new claims
        self._background: set[asyncio.Task[None]] = set()
        self.keeper: LeaseKeeper | None = None
        # HOST:PORT where peers reach this router's cluster link (published each round).
        self.advertise_address: str | None = None

    def __repr__(self) -> str:
        return f"<Membership router={self.router_id!r} {self.registry!r} keeper={self.keeper!r}>"

    async def claim(self, tunnel: Tunnel) -> None:
        """Claim ``tunnel.name`` in the registry; NameTaken or RegistryUnavailable if not."""
        if self.router_id is None or self._leaving:
            raise RegistryUnavailable("this router is starting or stopping")
        if self.keeper is not None and self.keeper.unavailable_since is not None:
            # After an outage this router's leases are re-asserted before it claims
            # more, so a name it still serves is not handed to someone else first.
            await self.keeper.renew_once()
            if self.keeper.unavailable_since is not None:
                raise RegistryUnavailable("still unreachable")
        registry, name = self.registry, tunnel.name
        try:
            claim = await registry.claim(
                name, tunnel.registry_owner, self.router_id, tunnel.lease_id
            )
        except NameTaken:
            await self._say_if_other_kind(tunnel)
            raise
        except RegistryUnavailable:
            if self.keeper is not None and self.keeper.unavailable_since is None:
                # The outage starts now: the next claim re-asserts this router's leases
                # first, and the fail-static clock runs from here.
                self.keeper.unavailable_since = self._clock()
            raise
        tunnel.generation = claim.generation
        log.info(
            fields(
                "registry_claim", name=tunnel.name, kind=claim.kind.value,
                generation=claim.generation, router=self.router_id,
            )
        )  # fmt: skip

    async def _say_if_other_kind(self, tunnel: Tunnel) -> None:
        """Raise OtherKind if the registry refused ``tunnel`` because its own key holds the
        name as the other kind (HTTP or TLS passthrough: another registry owner)."""
        other = tunnel.owner if tunnel.passthrough else tunnel.owner + PASSTHROUGH_OWNER_MARK
        try:
            route = await self.registry.lookup(tunnel.name)
        except RegistryError:
            return  # the registry's own refusal stands
        if route is not None and route.owner == other:
            kind = "an HTTP name" if tunnel.passthrough else "a TLS passthrough name"
            raise OtherKind(
                f"the name {tunnel.name!r} is {route.state.value} by this key as {kind} in "
                "the cluster: a name is one kind at a time (free it, and wait out its "
                "reservation, to switch)"
            )

    def release(self, tunnel: Tunnel, *, reserve: bool = True) -> None:
        """Release ``tunnel``'s lease in the background (errors are logged); ``reserve``
        False: the job ended, the registry frees the name if no router holds it."""
        if self.router_id is None:
            return
        releasing = self._release(tunnel, self.router_id, reserve)
        task = asyncio.get_running_loop().create_task(releasing)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _release(self, tunnel: Tunnel, router_id: str, reserve: bool) -> None:
        try:
            released = await self.registry.release(
                tunnel.name, router_id, tunnel.lease_id, reserve=reserve
            )
        except RegistryError as error:
            log.warning(fields("registry_release_failed", name=tunnel.name, error=str(error)))
        else:
            log.info(fields("registry_released_tunnel", name=tunnel.name, held=released))

    def leases(self) -> list[Lease]:
        return [
            Lease(name=name, owner=tunnel.registry_owner, connection_id=tunnel.lease_id)
            for name, tunnel in self._hub.held_all()
        ]

    def lease_lost(self, error: RegistryError) -> None:
        """The registry says another owner or connection has the name now: close it here."""
        if not isinstance(error, NameTaken | LeaseLost):
            return
        found = self._hub.lookup_any(error.name)
        if found is None:
            return
        if isinstance(error, LeaseLost) and found.lease_id != error.connection_id:
            return  # a newer tunnel on this router holds it now
        for tunnel in self._hub.members_of(found):  # a pool's members share its lease
            self._close(tunnel, f"lease lost: {error}")

    def _close(self, tunnel: Tunnel, reason: str) -> None:
        log.warning(fields("tunnel_closed", name=tunnel.name, peer=tunnel.peer, reason=reason))
        if tunnel.close is not None:
            tunnel.close(reason)
        else:
            self._hub.release(tunnel)

    async def run(self) -> NoReturn:
        """Renew every ``lease_ttl_s / 3``; fail static for at most ``name_reservation_s``.

        Resource handling: holds nothing between rounds; cancel it to stop.
        Error handling: an unreachable registry is noted and retried next round.
        """
        assert self.router_id is not None
        self.keeper = LeaseKeeper(
            self.registry, self.router_id, self.leases, self.lease_lost, clock=self._clock
        )
        interval_s = self.registry.lease_ttl_s / RENEWALS_PER_TTL
        while True:
            try:
                await self.keeper.renew_once()
            except RegistryError as error:
                log.error(fields("lease_renewal_failed", error=str(error)))
            await self._advertise()
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                # redis-py may swallow a cancellation that lands while it connects
                # (seen: a worker stopped at start-up kept renewing for ever); the
                # task's cancel count still says a stop was asked for.
                raise asyncio.CancelledError
            self._fail_static()
            await asyncio.sleep(interval_s)  # the renewal period, not a synchronisation

    async def _advertise(self) -> None:
        """Publish this router's link address for a lease's time (renewed each round)."""
        if self.advertise_address is None or self.router_id is None:
            return
        registry = self.registry
        try:
            await registry.advertise(self.router_id, self.advertise_address, registry.lease_ttl_s)
        except RegistryError as error:
            log.warning(fields("registry_advertise_failed", error=str(error)))

    def _fail_static(self) -> None:
        since = self.keeper.unavailable_since if self.keeper is not None else None
        if since is None or self._clock() - since < self._reservation_s:
            return
        for tunnel in self._hub.tunnels():
            self._close(tunnel, "the route registry was unreachable for name_reservation_s")

    async def leave(self) -> None:
        """SIGTERM: refuse new claims and release every lease of this router at once."""
        self._leaving = True
        if self.router_id is None:
            return
        try:
            async with asyncio.timeout(RELEASE_ROUTER_TIMEOUT_S):
                count = await self.registry.release_router(self.router_id)
        except (RegistryError, TimeoutError) as error:
            log.warning(fields("registry_release_router_failed", error=str(error) or "timeout"))
        else:
            log.info(fields("registry_released", router=self.router_id, names=count))

    async def aclose(self) -> None:
        for task in list(self._background):
            task.cancel()
        await self.registry.aclose()
