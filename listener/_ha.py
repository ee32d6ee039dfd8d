"""HA connections: ``ha_connections`` SSH connections, each to a different router, one name.

Used when the listener holds more than one connection (``listener._routers``
says how many and which routers); with one, ``Listener.run`` is today's loop.

Each connection (a *slot*) runs today's loop on its own: pick a router, hold
the tunnel until it drops, back off (its own ``Backoff``), again. What they
share, and the rules for it:

1. The name: while no connection has been given one (a random name, or the
   instance id the router picks), one connection at a time asks; once known,
   every connection asks for that name (rule 5 of the registry lets one owner
   hold a name through one tunnel per router).
2. Routers: before claiming, a connection learns which router it reached and
   takes it (``RouterHolds``); one that reached a router another connection
   holds hangs up before claiming anything and redials with back-off.
3. The name is up while any connection holds it: the URL is printed and
   published when the first connection comes up after none was (as a
   reconnect does today), ``tunnel_down`` is logged only when the last one
   goes, and one line says when fewer connections than wanted are up.
4. The URL check runs over one connection that is up; if that one drops
   before the check passed, it starts again over another.
5. Certificates: the process renews once (``Listener.renewer``); then each
   connection made with an older certificate opens a new one to the same
   router (the same router id, or it is not a swap), claims the name with the
   new certificate (the router moves the name to it: same owner, same pool
   member id), takes its place, and lets the old one go after ``SWAP_GRACE_S``
   (or at its certificate's end, whichever comes first). A swap that fails
   leaves the old connection serving until its certificate ends; then the slot
   redials as after any drop. The name stays up throughout: no line for it.

Each connection's requests run on its own SSH channels, so losing one loses
nothing in flight on the others.

Resource handling: ``run`` owns every slot's ``TunnelSession`` (one at a time
per slot, and the ones it swapped away from until they are let go) and the
check and publication tasks, all in one TaskGroup ended by ``stop``. Error
handling: as today's loop, every failure is logged and retried with back-off.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hostmux.log import fields

from ._portal import PortalError
from ._proxy import proxy_for
from ._reconnect import Backoff, unless_stopped
from ._routers import (
    RouterAddress,
    RouterHolds,
    expand_addresses,
    preference_order,
    router_identity,
)
from ._ssh_client import Forward, HostKeyRejected, TunnelError, TunnelSession

if TYPE_CHECKING:
    from ._run import Listener

# After a swap (rule 5), how long the old connection keeps the requests it was carrying.
SWAP_GRACE_S = 10.0

log = logging.getLogger("hostmux.listener")


@dataclass
class _Up:
    """One connection that holds the name."""

    session: TunnelSession
    forward: Forward
    address: RouterAddress


class HaConnections:
    """``wanted`` connections to different routers carrying one listener's name."""

    def __init__(self, listener: Listener, wanted: int) -> None:
        self._listener = listener
        self._config = listener._config
        self._stop = listener._stop
        self._wanted = wanted
        self._holds = RouterHolds()
        self._up: dict[int, _Up] = {}
        self._dialling: dict[int, RouterAddress] = {}
        self._naming = asyncio.Lock()  # rule 1: one connection at a time asks for a new name
        self._checked = asyncio.Event()
        self._check: tuple[int, asyncio.Task[None]] | None = None
        self._publication: asyncio.Task[None] | None = None
        self._tasks: asyncio.TaskGroup | None = None

    def __repr__(self) -> str:
        return f"<HaConnections up={sorted(self._up)} wanted={self._wanted} {self._holds!r}>"

    async def run(self) -> None:
        log.info(fields("ha_connections", wanted=self._wanted))
        async with asyncio.TaskGroup() as tg:
            self._tasks = tg
            for slot in range(self._wanted):
                tg.create_task(self._slot(slot))
            await self._stop.wait()
            self._cancel_announcements()
        self._tasks = None

    async def _slot(self, slot: int) -> None:
        """One connection's life: today's loop, with its own back-off."""
        backoff = Backoff(cap_s=self._config.backoff_max_s)
        transport = "wss" if self._config.transport == "wss" else "ssh"
        while not self._stop.is_set():
            try:
                candidates, pins = await self._candidates(transport)
            except PortalError as exc:
                log.warning(fields("portal_unavailable", conn=slot, reason=str(exc)))
            else:
                in_use = {a for s, a in self._dialling.items() if s != slot}
                for address in preference_order(candidates, in_use, slot):
                    self._dialling[slot] = address
                    up_s, transport = await self._try_router(slot, address, pins, transport)
                    if up_s is not None:
                        backoff.connection_lasted(up_s)
                    if up_s is not None or self._stop.is_set():
                        break
            if self._stop.is_set():
                break
            delay = backoff.next_delay()
            log.info(fields("reconnect_wait", conn=slot, seconds=round(delay, 2)))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._stop.wait()
        self._dialling.pop(slot, None)

    async def _candidates(self, transport: str) -> tuple[list[RouterAddress], tuple[str, ...]]:
        servers, pins = await self._listener._routers()
        if transport != "ssh":
            return expand_addresses(servers, {}), pins  # the WebSocket URL says where
        resolved = await resolve_hosts(servers, timeout_s=self._config.connect_timeout_s)
        return expand_addresses(servers, resolved), pins

    async def _try_router(
        self, slot: int, address: RouterAddress, pins: tuple[str, ...], transport: str
    ) -> tuple[float | None, str]:
        """Hold the name through ``address`` until it drops: (seconds up or None, transport)."""
        listener = self._listener
        dial = address.dial if address.dial != address.host else ""
        spec = listener.spec_for(address.host, address.port, pins, transport, dial)
        where = {"conn": slot, "router": str(address)}
        async with TunnelSession(spec) as session:
            try:
                connected = await unless_stopped(self._connect(session), self._stop)
            except TunnelError as exc:
                listener.counts.connects_failed += 1
                level = logging.ERROR if isinstance(exc, HostKeyRejected) else logging.WARNING
                log.log(level, fields("tunnel_failed", **where, reason=str(exc)))
                if self._config.transport == "auto" and not isinstance(exc, HostKeyRejected):
                    transport = "wss" if transport == "ssh" else "ssh"
                    log.info(fields("transport_switch", conn=slot, to=transport))
                return None, transport
            if connected is None:
                return None, transport
            router_id = connected
            other = self._holds.take(slot, router_identity(router_id or None, address))
            if other is not None:
                log.info(
                    fields(
                        "same_router", **where, router_id=router_id or None, held_by=other,
                        action="redial",
                    )
                )  # fmt: skip
                return None, transport
            try:
                forward = await unless_stopped(self._claim(session), self._stop)
            except TunnelError as exc:
                listener.counts.connects_failed += 1
                log.warning(fields("tunnel_failed", **where, router_id=router_id or None,
                                   reason=str(exc)))  # fmt: skip
                self._holds.drop(slot)
                return None, transport
            if forward is None:
                self._holds.drop(slot)
                return None, transport
            up_since = time.monotonic()  # from the claim: a slow connect is no tunnel that lasted
            up = _Up(session, forward, address)
            retiring: list[TunnelSession] = []
            try:
                self._came_up(slot, up, transport)
                await unless_stopped(self._hold(slot, up, pins, router_id, retiring), self._stop)
            finally:
                self._went_down(slot)
                for held in (*retiring, up.session):  # (closing twice is harmless)
                    await held.aclose()
        return time.monotonic() - up_since, transport

    async def _hold(
        self, slot: int, up: _Up, pins: tuple[str, ...], router_id: str,
        retiring: list[TunnelSession],
    ) -> None:  # fmt: skip
        """Until the slot's connection ends, swapping it at each renewal (rule 5).

        ``up`` is replaced in place by each swap; the connections swapped away from
        are added to ``retiring`` (the caller closes whichever are left).
        """
        generation = up.session.spec.certificate_generation
        async with asyncio.TaskGroup() as letting_go:
            lets_go: list[asyncio.Task[None]] = []
            try:
                while await self._renewed_before_closed(up.session, generation):
                    renewer = self._listener.renewer
                    assert renewer is not None
                    generation = renewer.generation
                    successor = await self._successor(slot, up, pins, router_id)
                    if successor is None:
                        continue  # the old one serves on; swap again at the next renewal
                    old, up.session = up.session, successor
                    retiring.append(old)
                    log.info(
                        fields(
                            "tunnel_swapped", name=up.forward.name, conn=slot,
                            router=str(up.address), router_id=router_id or None,
                            reason="certificate renewed",
                        )
                    )  # fmt: skip
                    lets_go.append(letting_go.create_task(_let_go(old, retiring)))
            finally:
                for task in lets_go:
                    task.cancel()

    async def _renewed_before_closed(self, session: TunnelSession, generation: int) -> bool:
        """Wait until ``session`` ends (False) or a certificate newer than ``generation`` is
        written while it holds the name (True)."""
        renewer = self._listener.renewer
        if renewer is None:
            await session.wait_closed()
            return False
        closed = asyncio.create_task(session.wait_closed())
        renewed = asyncio.create_task(renewer.newer_than(generation))
        try:
            done, _ = await asyncio.wait({closed, renewed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (closed, renewed):
                task.cancel()
            await asyncio.gather(closed, renewed, return_exceptions=True)
        return closed not in done and renewed in done and renewed.result()

    async def _successor(
        self, slot: int, up: _Up, pins: tuple[str, ...], router_id: str
    ) -> TunnelSession | None:
        """A new connection to ``up``'s router holding its name with the newest certificate,
        or None (logged) when it could not be made."""
        spec = up.session.spec
        successor = TunnelSession(
            self._listener.spec_for(spec.host, spec.port, pins, spec.transport, spec.dial_host)
        )
        try:
            reached = await self._connect(successor)
            if reached != router_id:  # an address that leads to several routers
                raise TunnelError(f"reached router {reached or '?'}, not {router_id}")
            await successor.forward(up.forward.name)
        except TunnelError as exc:
            await successor.aclose()
            log.warning(
                fields("tunnel_swap_failed", name=up.forward.name, conn=slot,
                       router=str(up.address), reason=str(exc))
            )  # fmt: skip
            return None
        return successor

    async def _connect(self, session: TunnelSession) -> str:
        """Connect; the router's id ("" when it gives none)."""
        await session.connect()
        return await session.router_id() or ""

    async def _claim(self, session: TunnelSession) -> Forward:
        listener = self._listener
        if listener._name:
            return await session.forward(listener._name)
        async with self._naming:  # rule 1: the first to get a name gives it to the others
            forward = await session.forward(listener._name)
            listener._name = forward.name
            return forward

    def _came_up(self, slot: int, up: _Up, transport: str) -> None:
        listener, forward = self._listener, up.forward
        first = not self._up
        self._up[slot] = up
        listener.counts.came_up()
        log.info(
            fields(
                "tunnel_up", name=forward.name, url=forward.url, conn=slot,
                router=str(up.address), router_id=forward.router_id,
                target=self._config.target, transport=transport, up=len(self._up),
                wanted=self._wanted, pool_member=listener.pool_member or None,
            )
        )  # fmt: skip
        if first:
            if forward.url != listener._last_url:
                print(forward.url, flush=True)  # stdout: the URL, for scripts
                listener._last_url = forward.url
            self._announce(forward)
        if self._check is None and self._config.check_url and not self._checked.is_set():
            self._start_check(slot)
        self._say_count()

    def _went_down(self, slot: int) -> None:
        self._holds.drop(slot)
        up = self._up.pop(slot, None)
        if up is not None:
            self._listener.counts.went_down()
        if up is None or self._stop.is_set():
            return
        where = {"conn": slot, "router": str(up.address), "router_id": up.forward.router_id}
        if not self._up:
            log.warning(fields("tunnel_down", name=up.forward.name, **where))
            self._cancel_announcements()
            return
        log.warning(fields("connection_down", name=up.forward.name, **where, up=len(self._up)))
        if self._check is not None and self._check[0] == slot:
            # The check ran through the router that went: start it again through another.
            self._check[1].cancel()
            self._check = None
            if not self._checked.is_set():
                self._start_check(next(iter(self._up)))
        self._say_count()

    def _say_count(self) -> None:
        """One line per change while fewer connections than wanted hold the name."""
        count = len(self._up)
        if count < self._wanted:
            log.warning(fields("connections_short", up=count, wanted=self._wanted))
        else:
            log.info(fields("connections_full", up=count, wanted=self._wanted))

    def _announce(self, forward: Forward) -> None:
        """Rule 3: the name came up after none held it: publish it, as a reconnect does."""
        assert self._tasks is not None
        self._checked = asyncio.Event()
        if self._listener._key is not None and self._config.uri_update_url:
            self._publication = self._tasks.create_task(
                self._listener._publish(forward, self._checked, asyncio.Event())
            )

    def _start_check(self, slot: int) -> None:
        assert self._tasks is not None
        up = self._up[slot]
        advice = self._listener._advise(up.session, up.forward, up.address.dial, self._checked)
        self._check = (slot, self._tasks.create_task(advice))

    def _cancel_announcements(self) -> None:
        if self._check is not None:
            self._check[1].cancel()
            self._check = None
        if self._publication is not None:
            self._publication.cancel()
            self._publication = None


async def _let_go(session: TunnelSession, retiring: list[TunnelSession]) -> None:
    """Close a connection swapped away from after ``SWAP_GRACE_S`` (its requests finish)."""
    await asyncio.sleep(SWAP_GRACE_S)  # a bounded drain, not a synchronisation
    await session.aclose()
    retiring.remove(session)


async def resolve_hosts(servers: Sequence[str], *, timeout_s: float) -> dict[str, list[str]]:
    """Each named router host's addresses (getaddrinfo's order); literals and failures left out.

    A host behind an HTTP proxy is left to the proxy, as the connection will be.
    """
    from hostmux.config.layered import parse_host_port

    loop = asyncio.get_running_loop()
    found: dict[str, list[str]] = {}
    for server in servers:
        host, port = parse_host_port(server, "router")
        if host in found or _is_literal(host) or proxy_for(host) is not None:
            continue
        try:
            async with asyncio.timeout(timeout_s):
                infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, TimeoutError) as exc:
            log.info(fields("router_unresolved", router=server, reason=str(exc) or "timeout"))
            continue
        addresses = [str(info[4][0]) for info in infos]
        found[host] = list(dict.fromkeys(addresses))
    return found


def _is_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
