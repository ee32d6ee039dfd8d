"""The listener's life: pick a router, hold the tunnel, publish the URL, for ever.

Each round: the routers to try (given, or the portal's list ranked by
latency, with the portal's host-key pins), then each router in turn until one
grants the forward. While the tunnel is up: check that the public URL answers
through the router (advice only: a failing check is logged and retried, never
a reason to drop a tunnel the router granted), and publish it to the portal
(signed) once the check passed or ``url_check_max_wait_s`` ran out. When the
tunnel drops, or no router would have it: a jittered back-off, then a new
round — asking for the same name again (also a random one the router gave).

With a portal certificate (``certificate_file``) and a renewal URL, the hold
also renews it before it expires (``_certificate``): with the new certificate a
second connection to the same router claims the same name — the router moves
the name to it at once (same owner) — and only then is the old connection let
go, after ``SWAP_GRACE_S`` for the requests it was carrying (no gap). The URL
is not checked or published again for a swap: it did not change.

That is one connection (``ha_connections`` 1, or 0 with one router address).
With more, ``HaConnections`` (``_ha.py``) runs this loop once per connection,
each to a different router, all carrying the same name. Either way one
``Renewer`` renews the certificate for the whole process, and each connection
swaps when a newer certificate is written (rule 5 of ``_certificate``).

Resource handling: ``run_listener`` owns one ``TunnelSession`` at a time (two
during a swap) and the renewal task, and closes them on SIGTERM/SIGINT (or when
``stop`` is set) before returning.
Error handling: every failure to connect, check or publish is logged and
retried; only bad configuration ends the process (before this runs).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import signal
import ssl
import time
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from hostmux.config.layered import parse_host_port
from hostmux.log import fields

from ._certificate import Renewer, renew
from ._config import DEFAULT_ROUTER, ListenerConfig
from ._dial import rank_by_latency
from ._ha import HaConnections, resolve_hosts
from ._metrics import ListenerCounts
from ._portal import PortalError, fetch_router_list, publish_url
from ._reconnect import Backoff, unless_stopped
from ._routers import expand_addresses, wanted_connections
from ._ssh_client import Forward, HostKeyRejected, TunnelError, TunnelSession, TunnelSpec
from ._url_check import prepare_trust, watch_public_url

if TYPE_CHECKING:
    import keys
    from hostmux.ops_server import OpsServer

log = logging.getLogger("hostmux.listener")

# How long auto mode waits for plain SSH before trying SSH over WebSocket.
AUTO_SSH_TIMEOUT_S = 5.0
# After a certificate swap, how long the old connection keeps the requests it was
# carrying (new ones already go through the new connection); the router ends it at
# its certificate's expiry anyway.
SWAP_GRACE_S = 10.0


class Listener:
    """One listener process's state across reconnects."""

    def __init__(self, config: ListenerConfig, stop: asyncio.Event) -> None:
        self._config = config
        self._stop = stop
        # After the first success: the name (or "tcp:PORT") we were given.
        self._name = config.forward_name
        self._last_url: str | None = None
        self._key = _instance_key(config)
        # One pool member per process: the same id on every router it holds the name through.
        self.pool_member = secrets.token_hex(8) if config.pool else ""
        # auto starts with SSH and keeps whichever transport last worked.
        self._transport = "wss" if config.transport == "wss" else "ssh"
        self.counts = ListenerCounts()  # for metrics_listen
        # One renewal per certificate for the process, whatever the connections (None: none).
        self.renewer: Renewer | None = None
        if config.renewal_url and config.certificate_file is not None and self._key is not None:
            self.renewer = Renewer(config.certificate_file, self._renew, stop)

    def __repr__(self) -> str:
        return f"<Listener name={self._name!r} url={self._last_url!r}>"

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            renewing = tg.create_task(self.renewer.run()) if self.renewer is not None else None
            try:
                await self._run_connections()
            finally:
                if renewing is not None:
                    renewing.cancel()

    async def _run_connections(self) -> None:
        wanted = await self._wanted_connections()
        self.counts.wanted = wanted
        if wanted > 1:
            await HaConnections(self, wanted).run()
        elif wanted == 1:
            await self._run_one()

    async def _wanted_connections(self) -> int:
        """``ha_connections``, or for 0 (auto): 2 when more than one router address is known.

        0 when stopped before the portal said which routers there are.
        """
        config = self._config
        if config.ha_connections > 0:
            return config.ha_connections
        backoff = Backoff(cap_s=config.backoff_max_s)
        while not self._stop.is_set():
            try:
                servers, _ = await self._routers()
            except PortalError as exc:
                log.warning(fields("portal_unavailable", reason=str(exc)))
            else:
                if len(servers) > 1 or config.transport != "ssh":
                    return wanted_connections(0, len(servers))
                resolved = await resolve_hosts(servers, timeout_s=config.connect_timeout_s)
                return wanted_connections(0, len(expand_addresses(servers, resolved)))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(backoff.next_delay()):
                    await self._stop.wait()
        return 0

    async def _run_one(self) -> None:
        """One connection (``ha_connections`` 1): the loop of the module's docstring."""
        backoff = Backoff(cap_s=self._config.backoff_max_s)
        while not self._stop.is_set():
            try:
                servers, pins = await self._routers()
            except PortalError as exc:
                log.warning(fields("portal_unavailable", reason=str(exc)))
            else:
                for server in servers:
                    up_s = await self._try_router(server, pins)
                    if up_s is not None:
                        backoff.connection_lasted(up_s)
                    if up_s is not None or self._stop.is_set():
                        break  # after a tunnel was up: re-rank before the next round
            if self._stop.is_set():
                break
            delay = backoff.next_delay()
            log.info(fields("reconnect_wait", seconds=round(delay, 2)))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._stop.wait()

    async def _routers(self) -> tuple[list[str], tuple[str, ...]]:
        config = self._config
        pins = tuple(config.host_key_fingerprint)
        if config.router:
            return list(config.router), pins
        if not config.portal_url:
            return [DEFAULT_ROUTER], pins
        listed = await fetch_router_list(config.portal_url, timeout_s=config.connect_timeout_s)
        ranked = await rank_by_latency(listed.servers)
        log.info(fields("routers_ranked", order=",".join(ranked)))
        return ranked, pins + listed.host_key_fingerprints

    async def _try_router(self, server: str, pins: tuple[str, ...]) -> float | None:
        """Hold a tunnel through ``server`` until it drops; how long it was up (None: never)."""
        config = self._config
        host, port = parse_host_port(server, "router")
        await self.renew_if_expired()
        spec = self.spec_for(host, port, pins, self._transport)
        async with TunnelSession(spec) as first:
            session = first
            try:
                forward = await unless_stopped(session.open(self._name), self._stop)
            except TunnelError as exc:
                self.counts.connects_failed += 1
                level = logging.ERROR if isinstance(exc, HostKeyRejected) else logging.WARNING
                log.log(level, fields("tunnel_failed", router=server, reason=str(exc)))
                if config.transport == "auto" and not isinstance(exc, HostKeyRejected):
                    # auto: SSH first; when it cannot connect, WebSocket — and back.
                    self._transport = "wss" if self._transport == "ssh" else "ssh"
                    log.info(fields("transport_switch", to=self._transport))
                return None
            if forward is None:
                return None
            up_since = time.monotonic()  # from the grant: a slow connect is no tunnel that lasted
            self._name = forward.name
            log.info(fields("tunnel_up", name=forward.name, url=forward.url, router=server,
                            target=config.target, transport=self._transport,
                            pool_member=self.pool_member or None))  # fmt: skip
            if forward.url != self._last_url:
                print(forward.url, flush=True)  # stdout: the URL, for scripts
                self._last_url = forward.url
            self.counts.came_up()
            retiring: TunnelSession | None = None
            try:
                while True:
                    successor = await self._hold(session, forward, host, retiring, pins)
                    if successor is None:
                        break
                    log.info(fields("tunnel_swapped", name=forward.name, router=server,
                                    reason="certificate renewed"))  # fmt: skip
                    if retiring is not None:  # swapped again within its grace
                        await retiring.aclose()
                    retiring, session = session, successor
            finally:
                self.counts.went_down()
                for held in (retiring, session):  # (closing twice is harmless)
                    if held is not None:
                        await held.aclose()
            up_s = time.monotonic() - up_since
            if not self._stop.is_set():
                log.warning(fields("tunnel_down", name=forward.name, router=server,
                                   up_s=round(up_s, 1)))  # fmt: skip
        return up_s

    def spec_for(
        self, host: str, port: int, pins: tuple[str, ...], transport: str, dial_host: str = ""
    ) -> TunnelSpec:
        """What one connection to ``host:port`` (at ``dial_host``, if given) is made of."""
        config = self._config
        target_host, target_port = config.target_address
        return TunnelSpec(
            host=host, port=port, user=config.user, identity_file=config.identity_file,
            known_hosts=config.known_hosts_path, fingerprints=pins, name=self._name,
            target_host=target_host, target_port=target_port,
            keepalive_interval_s=config.keepalive_interval_s,
            connect_timeout_s=self._connect_timeout_s(transport),
            transport=transport, wss_url=config.wss_url,
            wss_headers=tuple(tuple(h.split(":", 1)) for h in config.wss_header),  # type: ignore[misc]
            ca_file=config.router_ca_file, dial_host=dial_host,
            pool_member=self.pool_member,
            certificate_file=config.certificate_file,
            certificate_generation=self.renewer.generation if self.renewer is not None else 0,
            tls_passthrough=config.tls_passthrough,
        )  # fmt: skip

    def _connect_timeout_s(self, transport: str) -> float:
        # auto mode gives plain SSH only a short try before it falls back to WSS:
        # a firewall that drops packets would otherwise cost the whole timeout.
        if self._config.transport == "auto" and transport == "ssh":
            return min(self._config.connect_timeout_s, AUTO_SSH_TIMEOUT_S)
        return self._config.connect_timeout_s

    async def _hold(
        self,
        session: TunnelSession,
        forward: Forward,
        router_host: str,
        retiring: TunnelSession | None = None,
        pins: tuple[str, ...] = (),
    ) -> TunnelSession | None:
        """Until the tunnel ends: the URL check and the publication run beside it.

        Neither ever closes the tunnel: the router granted it, so it works
        whatever a check from inside this pod finds. With a certificate to renew,
        the renewal runs beside them too: it returns the connection that took the
        name over (the caller swaps to it; ``retiring`` is the one it replaced).
        """
        ended = asyncio.Event()
        checked = asyncio.Event()
        successor: list[TunnelSession] = []

        async def until(awaitable: Coroutine[Any, Any, object]) -> None:
            await awaitable
            ended.set()

        async def renewal() -> None:
            renewed = await self._renewed_session(session, forward, pins)
            if renewed is not None:
                successor.append(renewed)
                ended.set()

        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(until(session.wait_closed())),
                     tg.create_task(until(self._stop.wait()))]  # fmt: skip
            if retiring is None:  # a swap keeps the URL: no new check or publication
                if self._config.check_url:
                    tasks.append(
                        tg.create_task(self._advise(session, forward, router_host, checked))
                    )
                if self._key is not None and self._config.uri_update_url:
                    tasks.append(tg.create_task(self._publish(forward, checked, ended)))
            else:
                tasks.append(tg.create_task(_close_after(retiring, SWAP_GRACE_S)))
            if self.renewer is not None:
                tasks.append(tg.create_task(renewal()))
            await ended.wait()
            for task in tasks:
                task.cancel()
        return successor[0] if successor and not self._stop.is_set() else None

    async def _renewed_session(
        self, session: TunnelSession, forward: Forward, pins: tuple[str, ...]
    ) -> TunnelSession | None:
        """Once a newer certificate is written: a new connection holding the name with it.

        None when there is nothing more to do on this connection: stopped, or the
        new connection failed (the old one serves on until its certificate
        expires; the router then ends the tunnel and the run loop reconnects).
        """
        assert self.renewer is not None
        if not await self.renewer.newer_than(session.spec.certificate_generation):
            return None
        spec = session.spec
        successor = TunnelSession(
            self.spec_for(spec.host, spec.port, pins, spec.transport, spec.dial_host)
        )
        try:
            await successor.open(forward.name)
        except TunnelError as exc:
            await successor.aclose()
            log.warning(fields("tunnel_swap_failed", name=forward.name, reason=str(exc)))
            return None  # the old connection serves on until its certificate expires
        return successor

    async def _renew(self, give_up_at: float | None) -> bool:
        """Renew the certificate file now (``_certificate.renew``); the ``Renewer`` calls it."""
        config = self._config
        assert config.certificate_file is not None and self._key is not None
        return await renew(
            config.certificate_file, config.renewal_url, key=self._key,
            issuer=config.jwt_iss or config.user, kid=config.jwt_kid or None, stop=self._stop,
            give_up_at=give_up_at,
        )  # fmt: skip

    async def renew_if_expired(self) -> None:
        """Before connecting: an expired certificate is renewed first, if the portal will."""
        if self.renewer is not None:
            await self.renewer.renew_if_expired()

    async def _advise(
        self, session: TunnelSession, forward: Forward, router_host: str, checked: asyncio.Event
    ) -> None:
        """The URL check, fenced: whatever goes wrong in it is logged, the tunnel stays."""
        try:
            await self._check(session, forward, router_host, checked)
        except Exception:  # advice must never take down a tunnel the router granted
            log.exception(fields("url_check_broken", url=forward.url, tunnel="kept"))

    async def _check(
        self, session: TunnelSession, forward: Forward, router_host: str, checked: asyncio.Event
    ) -> None:
        config = self._config
        ca_pem = None
        if config.router_ca_file is None:
            # The host key was checked (pinned), so the router's CA is the pinned router's.
            try:
                ca_pem = await session.router_ca()
            except TunnelError as exc:
                log.info(fields("router_ca_unavailable", reason=str(exc), using="system CAs"))
        try:
            trust = await prepare_trust(config.router_ca_file, ca_pem)
        except (ssl.SSLError, OSError) as exc:
            log.warning(fields("router_ca_unusable", reason=_first_line(exc), using="system CAs"))
            trust = await prepare_trust(None, None)
        else:
            if ca_pem is not None:
                log.info(fields("router_ca_trusted", url=forward.url, bytes=len(ca_pem)))
        await watch_public_url(
            forward.url, router_host=router_host, trust=trust, backoff_max_s=config.backoff_max_s
        )
        checked.set()

    async def _publish(
        self, forward: Forward, checked: asyncio.Event, ended: asyncio.Event
    ) -> None:
        """Publish once the check passed, or after ``url_check_max_wait_s`` regardless."""
        config = self._config
        assert self._key is not None
        wait_s = config.url_check_max_wait_s if config.check_url else 0.0
        if wait_s > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait_s):
                    await checked.wait()
        passed = checked.is_set() or not config.check_url
        published = await publish_url(
            forward.url, update_url=config.uri_update_url, key=self._key,
            issuer=config.jwt_iss or config.user, kid=config.jwt_kid or None, stop=ended,
            checked=passed,
        )  # fmt: skip
        if published:
            self.counts.url_published()
        if published and not passed and wait_s > 0:
            log.warning(
                fields(
                    "url_published_unchecked", url=forward.url, waited_s=wait_s,
                    hint="browsers may still reach it; see the url_check_failed lines for why "
                    "this pod could not",
                )
            )  # fmt: skip


async def run_listener(config: ListenerConfig, *, stop: asyncio.Event | None = None) -> None:
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    listener = Listener(config, stop)
    ops = _start_ops(config, listener) if config.metrics_listen else None
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await listener.run()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        if ops is not None:
            await ops.close()
    log.info(fields("listener_stopped"))


def _start_ops(config: ListenerConfig, listener: Listener) -> OpsServer:
    """``metrics_listen``: /metrics, /healthz, /readyz (prometheus-client loaded only now)."""
    from hostmux.ops_server import Endpoints, start_ops_server

    from ._metrics import ListenerOps

    ops = ListenerOps(listener.counts)
    server = start_ops_server(config.metrics_listen, Endpoints(ops.metrics, ops.readiness))
    log.info(fields("listener_metrics", listen=server.address))
    return server


async def _close_after(session: TunnelSession, grace_s: float) -> None:
    """Let ``session`` go after ``grace_s`` (the requests it carries finish first)."""
    await asyncio.sleep(grace_s)  # a bounded drain, not a synchronisation
    await session.aclose()


def _instance_key(config: ListenerConfig) -> keys.InstanceKey | None:
    """The key JWTs are signed with, in portal mode (keys is imported only then)."""
    if not config.uri_update_url and not config.renewal_url:
        return None
    import keys

    return keys.InstanceKey.load(config.identity_file)


def _first_line(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0]
