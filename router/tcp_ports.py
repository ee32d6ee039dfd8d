"""TCP tunnels: a public TCP port of the router relayed, raw, into a tunnel.

``ssh -R tcp:PORT:HOST:PORT`` (OpenSSH sends the bind address ``tcp``) asks
for public PORT; ``-R tcp:0:...`` for any free port of ``tcp_port_range``.
Rules (the same as names, ``router.routing``):

1. A port is held by one tunnel and owned by the key that claimed it; the
   owner may claim it again (a reconnect replaces the old tunnel); another key
   is refused while it is held and for ``name_reservation_s`` after.
2. ``-R tcp:0`` gives the key back a port it still owns (held or reserved)
   before any other; then a free port of the range.
3. A key holds at most ``max_tcp_ports_per_key`` ports; a port outside the
   range, a taken port or an exhausted range is refused with a message the
   SSH session prints.
4. The router listens on a port while a tunnel holds it; each accepted
   connection is counted per IP (the front door's counts) and becomes a
   ``forwarded-tcpip`` channel; bytes are copied both ways one chunk at a time
   (the channel window and the socket buffers are the back-pressure, nothing
   else is buffered), each EOF is passed on as a half-close, and a connection
   where neither side moved for ``tcp_idle_timeout_s`` is closed.

In a cluster a port is claimed in the registry as the name "tcp:PORT" (the
``register`` hook of ``claim``), so it is owned across routers. With the router
link (``forward``) every port of the range listens on every router, and a
connection for a port held elsewhere goes over the link as stream "tcp:PORT";
without it a router listens only on the ports its own tunnels hold.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import struct
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from hostmux.limits import ConnectionCounts
from hostmux.log import fields
from hostmux.relay import ByteStream, ReaderWriterStream, UpstreamUnavailable
from router.routing import NameTaken, RouteTable
from router.tunnels import Tunnel

log = logging.getLogger("hostmux.tcp")

# A tunnel's name for TCP port N (never a DNS label: it cannot clash with a name).
PREFIX = "tcp:"


# PROXY protocol v2 (haproxy.org/download/2.9/doc/proxy-protocol.txt, section 2.2).
_PROXY_V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
_PROXY_V2_PROXY = 0x21  # version 2, command PROXY


def proxy_v2_header(source: tuple[str, int], destination: tuple[str, int]) -> bytes:
    """The PROXY v2 header telling the backend a TCP connection's client and the address
    it reached (both of one family; IPv4-mapped IPv6 addresses are sent as IPv4)."""
    src, dst = _ip(source[0]), _ip(destination[0])
    if src.version != dst.version:  # an IPv4 client on a dual-stack socket: "unspecified"
        return _PROXY_V2_SIGNATURE + struct.pack("!BBH", 0x20, 0x00, 0)
    family = 0x11 if src.version == 4 else 0x21  # TCP over IPv4 / IPv6
    addresses = src.packed + dst.packed + struct.pack("!HH", source[1], destination[1])
    return (
        _PROXY_V2_SIGNATURE
        + struct.pack("!BBH", _PROXY_V2_PROXY, family, len(addresses))
        + (addresses)
    )


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    address = ipaddress.ip_address(text.split("%")[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class PortRefused(Exception):
    """A TCP port cannot be given; the message is for the SSH client."""


def parse_port_range(text: str) -> range | None:
    """``"20000-20999"`` (or one port ``"20000"``) as a range; ``""``: None (TCP tunnels off).

    Raises ValueError saying what is wrong.
    """
    if not text.strip():
        return None
    low, sep, high = text.strip().partition("-")
    try:
        first = int(low)
        last = int(high) if sep else first
    except ValueError:
        raise ValueError(f"{text!r} is not FIRST-LAST (e.g. 20000-20999)") from None
    if not 1 <= first <= last <= 65535:
        raise ValueError(f"{text!r}: ports 1-65535, FIRST <= LAST")
    return range(first, last + 1)


@dataclass(frozen=True)
class PortRule:
    """``[[tcp_port_rules]]``: connections to ``ports`` only from ``networks``."""

    ports: frozenset[int]
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]


_RULE_KEYS = frozenset({"ports", "allow_cidrs"})


def parse_port_rules(tables: list[dict[str, Any]]) -> list[PortRule]:
    """The ``[[tcp_port_rules]]`` tables; ValueError naming the table and what is wrong."""
    rules = []
    for number, table in enumerate(tables, 1):
        where = f"tcp_port_rules #{number}"
        unknown = set(table) - _RULE_KEYS
        if unknown or set(table) != _RULE_KEYS:
            raise ValueError(
                f"{where}: needs exactly ports and allow_cidrs"
                + (f" (unknown: {', '.join(sorted(unknown))})" if unknown else "")
            )
        ports: set[int] = set()
        given = table["ports"]
        if isinstance(given, str):
            found = parse_port_range(given)
            if found is None:
                raise ValueError(f"{where}: ports is empty")
            ports.update(found)
        elif (
            isinstance(given, list)
            and given
            and all(
                isinstance(p, int) and not isinstance(p, bool) and 1 <= p <= 65535 for p in given
            )
        ):
            ports.update(given)
        else:
            raise ValueError(f'{where}: ports is "FIRST-LAST" or a list of ports (1-65535)')
        cidrs = table["allow_cidrs"]
        if not isinstance(cidrs, list) or not all(isinstance(c, str) for c in cidrs):
            raise ValueError(f'{where}: allow_cidrs is a list of networks, e.g. ["10.0.0.0/8"]')
        try:
            networks = tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)
        except ValueError as error:
            raise ValueError(f"{where}: allow_cidrs: {error}") from None
        rules.append(PortRule(frozenset(ports), networks))
    return rules


def source_allowed(rules: list[PortRule], port: int, ip: str) -> bool:
    """Whether ``ip`` may connect to ``port``: a port under no rule takes any source,
    one under rules only the sources of their networks (together)."""
    covering = [rule for rule in rules if port in rule.ports]
    if not covering:
        return True
    address = _ip(ip)
    return any(address in network for rule in covering for network in rule.networks)


def port_of(name: str) -> int | None:
    """The port of a TCP tunnel's name, None for a name."""
    return int(name[len(PREFIX) :]) if name.startswith(PREFIX) else None


@dataclass
class TcpSettings:
    ports: range | None
    listen_host: str
    max_per_key: int
    idle_timeout_s: float
    connect_timeout_s: float
    proxy_protocol: bool = False  # send a PROXY v2 header first on each channel
    rules: list[PortRule] = field(default_factory=list)  # [[tcp_port_rules]]
    # Workers of one supervisor: each binds every port of the range with SO_REUSEPORT
    # and the kernel spreads connections over them; one without the tunnel relays
    # over the workers' own cluster link to the worker that holds it.
    reuse_port: bool = False


@dataclass
class TcpPorts:
    """The router's TCP tunnels: which key owns which port, and the port listeners."""

    settings: TcpSettings
    counts: ConnectionCounts  # per client IP, shared with the HTTP front door
    reservation_s: float
    routes: RouteTable[Tunnel] = field(init=False)
    _servers: dict[int, asyncio.Server] = field(default_factory=dict)
    _held: dict[str, set[int]] = field(default_factory=dict)  # owner -> ports held
    _streams: set[asyncio.Task[None]] = field(default_factory=set)
    # For metrics: connections by outcome (closed, idle, reset, unavailable,
    # refused_source, refused_limit) and bytes_in / bytes_out.
    stats: Counter[str] = field(default_factory=Counter)
    # A cluster with a router link: opens a stream to the router holding a port
    # (``Forwarder.open_port``); then every port of the range listens here.
    forward: Callable[[int, str, int], Awaitable[ByteStream]] | None = None

    def __post_init__(self) -> None:
        self.routes = RouteTable(reservation_s=self.reservation_s)

    async def claim(
        self,
        port: int,
        make_tunnel: Callable[[int], Tunnel],
        register: Callable[[Tunnel], Awaitable[None]] | None = None,
    ) -> Tunnel:
        """The tunnel ``make_tunnel(port)`` serving ``port`` (0: one picked); raises PortRefused.

        ``register`` (a cluster's registry claim) is awaited before the port is taken
        here; its NameTaken skips the port, its other errors go to the caller.
        """
        ports = self.settings.ports
        if ports is None:
            raise PortRefused("TCP tunnels are off on this router (no tcp_port_range)")
        owner = make_tunnel(0).owner
        if port and port not in ports:
            raise PortRefused(f"port {port} is outside this router's TCP ports ({_show(ports)})")
        held = self._held.get(owner, set())
        if port and port in held:
            candidates = [port]  # a reconnect: the new tunnel replaces the old one
        else:
            if len(held) >= self.settings.max_per_key:
                raise PortRefused(f"this key already holds {len(held)} TCP ports (the limit)")
            candidates = [port] if port else self._candidates(owner)
        for candidate in candidates:
            tunnel = await self._take(candidate, owner, make_tunnel, register, asked=bool(port))
            if tunnel is not None:
                return tunnel
        raise PortRefused(f"no free TCP port left ({_show(ports)})")

    async def _take(
        self,
        port: int,
        owner: str,
        make_tunnel: Callable[[int], Tunnel],
        register: Callable[[Tunnel], Awaitable[None]] | None,
        *,
        asked: bool,
    ) -> Tunnel | None:
        """``port`` for ``owner``, or None to try the next; PortRefused when ``asked``."""
        name = f"{PREFIX}{port}"
        taken = f"port {port} is in use by another key"
        if self.routes.owner(name) not in (None, owner):
            if asked:
                raise PortRefused(taken)
            return None
        opened = port not in self._servers
        try:
            await self._listen(port)
        except OSError as exc:
            if asked:
                raise PortRefused(f"port {port} cannot be opened on the router") from exc
            return None
        tunnel = make_tunnel(port)
        try:
            if register is not None:
                await register(tunnel)
            replaced = self.routes.claim(name, owner, tunnel)
        except NameTaken:  # elsewhere in the cluster (or here, while the registry answered)
            if opened and self.routes.lookup(name) is None:
                self._stop_listening(port)
            if asked:
                raise PortRefused(taken) from None
            return None
        except BaseException:
            if opened and self.routes.lookup(name) is None:
                self._stop_listening(port)
            raise
        self._held.setdefault(owner, set()).add(port)
        log.info(
            fields(
                "tcp_tunnel_up", port=port, peer=tunnel.peer, key=owner,
                replaced=replaced.peer if replaced else None,
            )
        )  # fmt: skip
        return tunnel

    def release(self, tunnel: Tunnel) -> bool:
        """Stop ``tunnel`` serving its port (False: it was replaced already)."""
        port = port_of(tunnel.name)
        if port is None or not self.routes.release(tunnel.name, tunnel):
            return False
        held = self._held.get(tunnel.owner)
        if held is not None:
            held.discard(port)
            if not held:
                del self._held[tunnel.owner]
        self._stop_listening(port)
        held_s = round(time.monotonic() - tunnel.created, 1)
        log.info(fields("tcp_tunnel_down", port=port, peer=tunnel.peer, held_s=held_s))
        return True

    def held(self) -> list[tuple[str, Tunnel]]:
        return list(self.routes.held())

    async def listen_all(self) -> None:
        """With ``forward``: listen on every port of the range (one that cannot be bound
        is logged and left out), so a port held on another router is served here too."""
        ports = self.settings.ports
        if self.forward is None or ports is None:
            return
        failed = []
        for port in ports:
            try:
                await self._listen(port)
            except OSError:
                failed.append(port)
        if failed:
            log.warning(fields("tcp_ports_unbound", count=len(failed), first=failed[0]))

    def _stop_listening(self, port: int) -> None:
        if self.forward is not None:
            return  # a cluster router serves every port of the range, held here or not
        server = self._servers.pop(port, None)
        if server is not None:
            server.close()

    async def aclose(self) -> None:
        for server in self._servers.values():
            server.close()
        self._servers.clear()
        for task in list(self._streams):
            task.cancel()

    def _candidates(self, owner: str) -> list[int]:
        ports = self.settings.ports
        assert ports is not None
        own = [p for p in (port_of(n) for n in self.routes.owned_by(owner)) if p is not None]
        mine = [p for p in own if p in ports and p not in self._held.get(owner, set())]
        others = random.sample(ports, len(ports))
        return mine + [p for p in others if p not in mine]

    async def _listen(self, port: int) -> None:
        if port in self._servers:
            return
        server = await asyncio.start_server(
            lambda r, w: self._accepted(port, r, w),
            self.settings.listen_host or None, port, reuse_address=True,
            reuse_port=self.settings.reuse_port or None,
        )  # fmt: skip
        self._servers[port] = server

    def _accepted(
        self, port: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.ensure_future(self._serve(port, reader, writer))
        self._streams.add(task)
        task.add_done_callback(self._streams.discard)

    async def _serve(
        self, port: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        peer = writer.get_extra_info("peername") or ("?", 0)
        ip, peer_port = str(peer[0]), int(peer[1])
        client = ReaderWriterStream(reader, writer, label=f"tcp:{ip}:{peer_port}")
        if not source_allowed(self.settings.rules, port, ip):
            self.stats["refused_source"] += 1
            log.info(fields("tcp_refused", port=port, peer=ip, reason="source not allowed"))
            client.abort()
            return
        if not self.counts.admit(ip):
            self.stats["refused_limit"] += 1
            log.warning(fields("tcp_refused", port=port, peer=ip, reason="connection limit"))
            client.abort()
            return
        started = time.monotonic()
        kind, reason, sent = "closed", "", [0, 0]
        try:
            kind, reason = await self._relay(port, client, writer, (ip, peer_port), sent)
        finally:
            if kind in ("idle", "reset"):
                client.abort()  # nothing more to flush to a client that stopped reading
            else:
                client.close()
            self.counts.release(ip)
            self.stats[kind] += 1
            self.stats["bytes_in"] += sent[0]
            self.stats["bytes_out"] += sent[1]
            log.info(
                fields(
                    "tcp_connection", port=port, peer=f"{ip}:{peer_port}", outcome=kind,
                    reason=reason or None, bytes_in=sent[0], bytes_out=sent[1],
                    duration_s=round(time.monotonic() - started, 3),
                )
            )  # fmt: skip

    async def _relay(
        self,
        port: int,
        client: ByteStream,
        writer: asyncio.StreamWriter,
        peer: tuple[str, int],
        sent: list[int],
    ) -> tuple[str, str]:
        """One accepted connection through its tunnel: (outcome, reason)."""
        found = self.routes.lookup(f"{PREFIX}{port}")
        if not isinstance(found, Tunnel) and self.forward is None:
            return "unavailable", "no tunnel holds the port"
        try:
            async with asyncio.timeout(self.settings.connect_timeout_s):
                if isinstance(found, Tunnel):
                    upstream = await found.open_stream(*peer)
                else:  # held on another router of the cluster, perhaps
                    assert self.forward is not None
                    upstream = await self.forward(port, *peer)
        except UpstreamUnavailable as exc:
            return "unavailable", str(exc)
        except TimeoutError:
            return "unavailable", "the tunnel client did not open a channel in time"
        try:
            if self.settings.proxy_protocol:
                local = writer.get_extra_info("sockname")
                await upstream.send_all(proxy_v2_header(peer, local[:2]))
            return await relay(client, upstream, self.settings.idle_timeout_s, sent), ""
        except OSError as exc:  # the channel went before the header was through
            return "reset", str(exc) or type(exc).__name__
        finally:
            upstream.close()


async def relay(a: ByteStream, b: ByteStream, idle_timeout_s: float, sent: list[int]) -> str:
    """Copy both ways until both ended; "idle" when neither moved for ``idle_timeout_s``.

    ``sent`` counts the bytes a -> b and b -> a. One chunk in flight per direction:
    a side that does not read stops the other from reading (back-pressure).
    """
    last = [time.monotonic()]

    async def copy(source: ByteStream, sink: ByteStream, index: int) -> None:
        while data := await source.receive():
            last[0] = time.monotonic()
            sink.write(data)
            if sink.must_drain():
                await sink.drain()
            sent[index] += len(data)
            last[0] = time.monotonic()
        await sink.send_eof()

    copies = [asyncio.ensure_future(copy(a, b, 0)), asyncio.ensure_future(copy(b, a, 1))]
    try:
        while not all(c.done() for c in copies):
            wait_s = last[0] + idle_timeout_s - time.monotonic()
            if wait_s <= 0:
                return "idle"
            done, _ = await asyncio.wait(copies, timeout=wait_s)
            for copy_task in done:
                if copy_task.exception() is not None:
                    return "reset"
        return "closed"
    finally:
        for copy_task in copies:
            copy_task.cancel()
        # Their errors are the outcome already; a cancellation of this task goes on.
        await asyncio.gather(*copies, return_exceptions=True)


def _show(ports: range) -> str:
    return f"{ports.start}-{ports.stop - 1}"
