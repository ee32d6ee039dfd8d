"""The router's SSH side: connections, virtual forwards and their channels.

Part of the router's asyncssh adapter, ``router.ssh``: this module (the
server and each connection's callbacks), ``client_state`` (one connection's
forwards and what it was told), ``auth`` (who a client is), ``session``
(session channels) and ``channel`` (a forwarded channel as a byte stream); no
other router module imports asyncssh. (The SSH byte transports in
``hostmux.tunnel``, used by both ends, and the listener's SSH client import it
too.)
What an authenticated tunnel client may do, and nothing else:

* remote forwards (``ssh -R NAME:80:localhost:3000``): *virtual* — nothing is
  bound on the router; the bind address is the requested name, the port only a
  label. An empty or wildcard bind address asks for the client's default name
  (a portal instance's id) or else a random one;
* stream-local remote forwards (``ssh -R /tmp/x.sock:host:port``), for portal
  instances only (the DIT4C protocol): the name is the instance id;
* a session: see ``router.ssh.session``.

Refused: ``-L``/``-D``/``-W`` (direct-tcpip), direct stream-local, agent and
X11 forwarding, password and keyboard-interactive auth.

Resource handling: each SSH connection owns its virtual forwards; when the
connection goes, their names are released (kept reserved for their owner for
a while, see ``router.routing``).

Job lifetime: a connection authenticated by a portal certificate holds one
timer (``loop.call_later``, no polling) for the certificate's ``valid_before``.
When it fires, the connection's tunnels end with the reason
``certificate_expired`` (the portal's ``tunnel_down`` event says so) and
without the reconnect reservation — the job is over, not reconnecting — and
the connection is closed. A certificate without ``valid_before`` (OpenSSH's
"forever") holds its tunnels until the client goes.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncssh

import keys
from hostmux.limits import ConnectionCounts, FailureLimiter
from hostmux.log import fields
from hostmux.names import InvalidName, check_name, random_name
from hostmux.relay import ByteStream, UpstreamUnavailable
from hostmux.tunnel.coalescing import CoalescingListener
from router.access import KeyGrant
from router.membership import UNREACHABLE
from router.registry.model import RegistryError, RegistryUnavailable
from router.routing import NameTaken
from router.ssh.auth import Authenticator, unwatch_certificates, watch_certificates
from router.ssh.channel import ChannelStream
from router.ssh.client_state import ClientState, VirtualForward
from router.ssh.lean import listen_options, shed_after_auth
from router.ssh.session import ToolSession, bounded_env_channel
from router.tcp_ports import PortRefused
from router.tunnels import CERTIFICATE_EXPIRED, Blocked, OtherKind, Tunnel, TunnelHub

log = logging.getLogger("hostmux.ssh")

# What start_ssh_server returns: the rest of the router names it without importing asyncssh.
SshAcceptor = asyncssh.SSHAcceptor

# Client's order wins in SSH and OpenSSH lists chacha20-poly1305 first, which
# halves small-request throughput in asyncssh: offer AES-GCM only.
DEFAULT_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")

# The largest SSH packet the router takes on its channels (asyncssh's default:
# 32 KiB). Fewer, larger packets cost a Python client (hostmux-listener) less per
# byte: its bulk download 607-628 -> 684-721 MB/s, OpenSSH's unchanged.
_MAX_PACKET = 128 * 1024

# Bind addresses that mean "no name given": OpenSSH sends "localhost" for
# ``-R 80:host:port`` and "" or "*" for an explicit wildcard.
_ANY_NAME = frozenset({"", "localhost", "*", "0.0.0.0", "::", "127.0.0.1", "::1"})

# The longest a certificate's timer is set for at once: it re-arms for what is left,
# so a wall-clock step (valid_before is wall-clock time) is seen within a day, and
# no event loop is handed a delay it cannot hold (valid_before may be year 2500).
_MAX_EXPIRY_TIMER_S = 24 * 3600.0

# ``-R NAME:443:HOST:PORT`` (or ``-R 443:...``): a TLS passthrough tunnel, not HTTP.
PASSTHROUGH_PORT = 443

# Random names collide with probability ~N/2^60; a few retries make the
# refusal for "no free random name" practically unreachable.
_RANDOM_NAME_ATTEMPTS = 5


@dataclass(frozen=True)
class SshSettings:
    window_bytes: int
    keepalive_interval_s: float
    login_timeout_s: float
    ciphers: tuple[str, ...] = DEFAULT_CIPHERS
    max_pending_opens: int = 1024
    # The development CA certificate (PEM) the ``ca`` command hands out; None
    # when the router serves certificates from files (it has no CA to give).
    dev_ca_pem: str | None = None


@dataclass(slots=True)
class PendingOpens:
    """Channel opens one SSH connection has not answered yet, and how many it may have.

    SSH has no way to withdraw a channel open: one the client never answers
    stays in asyncssh (~7 KiB) until the connection ends. Past the limit the
    tunnel gets no more opens (502) until it answers some.
    """

    limit: int
    count: int = 0

    def release(self, _: object = None) -> None:
        self.count -= 1


@dataclass(slots=True)
class ForwardAnswers:
    """Whether a forward's client has confirmed a channel open yet.

    A client registers its listener for a forward when it reads the router's grant,
    and asyncssh does so one loop turn later: an open that reaches it in the same read
    as the grant is refused ("No such listener"), though the next one succeeds. So an
    open refused while the forward has never confirmed one is tried once more, at
    once; once one is confirmed, or a retried open is refused again, a refusal is the
    client's answer.
    """

    settled: bool = False


@dataclass
class SshLimits:
    """Shared by all SSH connections: per-owner caps and the auth-failure limiter."""

    connections: ConnectionCounts
    max_tunnels_per_owner: int
    auth_failures: FailureLimiter
    tunnels: dict[str, int] = field(default_factory=dict)
    tunnels_refused: int = 0  # forwards refused by max_tunnels_per_owner (for metrics)

    def add_tunnel(self, owner: str) -> bool:
        if self.tunnels.get(owner, 0) >= self.max_tunnels_per_owner:
            self.tunnels_refused += 1
            return False
        self.tunnels[owner] = self.tunnels.get(owner, 0) + 1
        return True

    def remove_tunnel(self, owner: str) -> None:
        left = self.tunnels.get(owner, 0) - 1
        if left > 0:
            self.tunnels[owner] = left
        else:
            self.tunnels.pop(owner, None)


class _ConnectionHandler(asyncssh.SSHServer):
    """asyncssh callbacks for one SSH connection."""

    def __init__(
        self,
        hub: TunnelHub,
        auth: Authenticator,
        settings: SshSettings,
        limits: SshLimits,
        transport: str = "ssh",
    ) -> None:
        self._hub = hub
        self._transport = transport  # "ssh", or "wss" (SSH over WebSocket)
        self._auth = auth
        self._settings = settings
        self._limits = limits
        self._conn: asyncssh.SSHServerConnection | None = None
        self._state = ClientState(peer="?")
        self._counted_owner: str | None = None
        self._pending = PendingOpens(settings.max_pending_opens)
        self._lost = False  # connection_lost ran (a cluster claim may still be in flight)
        # The listener's options, shared, until authentication is over (``router.ssh.lean``).
        self._listen_options: object | None = None
        # The portal certificate this client logged in with (None: a plain key), whether
        # certificates can be watched on this connection, and the timer for its expiry.
        self._certificate: keys.CertificateValidity | None = None
        self._certificates_watched = False
        self._expiry: asyncio.TimerHandle | None = None

    def __repr__(self) -> str:
        return f"<SSH client {self._state.peer} forwards={len(self._state.forwards)}>"

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn
        self._listen_options = listen_options(conn)
        host, port = conn.get_extra_info("peername")[:2]
        self._state.peer = f"{host}:{port}"
        if self._auth.ca_fingerprints:
            self._certificates_watched = watch_certificates(conn, self._certificate_accepted)
        if not self._limits.auth_failures.allowed(str(host)):
            self._hub.counts["ssh_auth_rate_limited"] += 1
            log.warning(fields("ssh_rate_limited", peer=self._state.peer))
            conn.disconnect(asyncssh.DISC_TOO_MANY_CONNECTIONS, "too many failed logins; wait")

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        for forward in list(self._state.forwards):
            forward.close()
        if self._counted_owner is not None:
            self._limits.connections.release(self._counted_owner)
        if self._state.grant is not None:
            log.info(
                fields(
                    "ssh_disconnect", peer=self._state.peer, reason=_reason(exc),
                    env_refused=self._state.env_refused or None,
                )
            )  # fmt: skip

    # -- authentication ------------------------------------------------------

    def begin_auth(self, username: str) -> bool:
        return True  # every client must authenticate

    def password_auth_supported(self) -> bool:
        return False

    def kbdint_auth_supported(self) -> bool:
        return False

    def public_key_auth_supported(self) -> bool:
        return True

    async def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        peer_ip = self._state.peer.rsplit(":", 1)[0]
        grant = await self._auth.grant_for_key(username, key, peer_ip)
        if grant is None:
            self._hub.counts["ssh_auth_refused_key"] += 1
            self._limits.auth_failures.failed(peer_ip)
            log.info(
                fields(
                    "ssh_auth_refused", peer=self._state.peer, user=username,
                    key=key.get_fingerprint("sha256"),
                )
            )  # fmt: skip
            return False
        self._state.grant = grant  # the last key validated is the one that signs
        self._certificate = None
        return True

    def validate_ca_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        self._certificate = None  # set by ``_certificate_accepted`` once asyncssh checked it
        grant = self._auth.grant_for_certificate_authority(username, key)
        if grant is None:
            return False
        if not self._certificates_watched:
            # Without its validity the tunnel could outlive the job: refuse.
            log.warning(
                fields("ssh_certificate_refused", peer=self._state.peer, user=username,
                       reason="this asyncssh does not show the router a certificate's validity")
            )  # fmt: skip
            return False
        self._state.grant = grant
        return True

    def _certificate_accepted(self, certificate: keys.CertificateValidity) -> None:
        self._certificate = certificate

    def auth_completed(self) -> None:
        grant = self._state.grant
        assert grant is not None
        if not self._limits.connections.admit(grant.owner):
            log.warning(fields("ssh_connection_limit", peer=self._state.peer, owner=grant.owner))
            self._connection.disconnect(
                asyncssh.DISC_TOO_MANY_CONNECTIONS, "too many connections for this key"
            )
            return
        self._counted_owner = grant.owner
        shed_after_auth(self._connection, self._listen_options)
        self._listen_options = None
        if self._certificates_watched:
            unwatch_certificates(self._connection)
        certificate = self._certificate
        expires = certificate.valid_before if certificate is not None else None
        log.info(
            fields(
                "ssh_connect", peer=self._state.peer, owner=grant.owner, how=grant.comment,
                expires=expires, key_id=certificate.key_id if certificate is not None else None,
            )
        )  # fmt: skip
        if expires is not None:
            self._arm_expiry(expires)

    # -- certificate lifetime --------------------------------------------------

    def _arm_expiry(self, valid_before: int) -> None:
        delay = min(max(0.0, valid_before - time.time()), _MAX_EXPIRY_TIMER_S)
        self._expiry = asyncio.get_running_loop().call_later(delay, self._certificate_expired)

    def _certificate_expired(self) -> None:
        """The certificate's ``valid_before`` passed: end the tunnels (the job is over)."""
        self._expiry = None
        certificate = self._certificate
        if certificate is None or certificate.valid_before is None or self._lost:
            return
        if time.time() < certificate.valid_before:  # a capped timer, or the clock stepped back
            self._arm_expiry(certificate.valid_before)
            return
        self._hub.counts["certificate_expired"] += 1
        # The names it still serves (a renewed certificate's connection may have taken them).
        names = [f.tunnel.name for f in self._state.forwards if self._hub.serves(f.tunnel)]
        log.info(
            fields(
                "ssh_certificate_expired", peer=self._state.peer, key_id=certificate.key_id,
                valid_before=certificate.valid_before, tunnels=",".join(names) or None,
            )
        )  # fmt: skip
        for forward in list(self._state.forwards):
            forward.end(CERTIFICATE_EXPIRED)
        if self._conn is not None:
            self._conn.disconnect(asyncssh.DISC_BY_APPLICATION, "the certificate expired")

    # -- forwards ------------------------------------------------------------

    def server_requested(
        self, listen_host: str, listen_port: int
    ) -> VirtualForward | bool | Awaitable[VirtualForward | bool]:
        grant = self._state.grant
        assert grant is not None
        where = f"{listen_host}:{listen_port}"
        if any(f.listen == (listen_host, listen_port) for f in self._state.forwards):
            return self._refuse(where, "this connection already forwards that address")
        if grant.role == "register":
            return self._refuse(where, "the register user cannot forward")
        if listen_host == "tcp":
            return self._claim_tcp(grant, listen_port, where)
        passthrough = listen_port == PASSTHROUGH_PORT
        if passthrough and not self._hub.tls_passthrough:
            return self._refuse(
                where, "TLS passthrough (-R NAME:443:...) is off on this router (tls_passthrough)"
            )
        if listen_host in _ANY_NAME:
            if grant.default_name is not None:
                candidates = [grant.default_name]
            elif grant.name_patterns is not None:
                return self._refuse(
                    where, f"this key must ask for a name ({grant.describe_names()})"
                )
            else:
                candidates = [random_name() for _ in range(_RANDOM_NAME_ATTEMPTS)]
        else:
            name = listen_host
            if name.endswith("." + self._hub.domain):
                name = name[: -len(self._hub.domain) - 1]
            try:
                check_name(name)
            except InvalidName as exc:
                return self._refuse(where, str(exc))
            if not grant.may_hold(name):
                return self._refuse(where, f"this client may only hold {grant.describe_names()}")
            candidates = [name]
        port = listen_port or 80  # the port is only a label; 0 asks us to pick one
        opener = _tcp_opener(
            self._connection, listen_host, port, self._settings.window_bytes, self._pending
        )
        return self._claim(
            candidates, grant, opener, (listen_host, listen_port), port, where,
            passthrough=passthrough,
        )  # fmt: skip

    def unix_server_requested(
        self, listen_path: str
    ) -> VirtualForward | bool | Awaitable[VirtualForward | bool]:
        grant = self._state.grant
        assert grant is not None
        if grant.default_name is None:
            return self._refuse(listen_path, "stream-local forwards are for portal instances")
        if any(f.listen == (listen_path, 0) for f in self._state.forwards):
            return self._refuse(listen_path, "this connection already forwards that path")
        opener = _unix_opener(
            self._connection, listen_path, self._settings.window_bytes, self._pending
        )
        return self._claim([grant.default_name], grant, opener, (listen_path, 0), 0, listen_path)

    def _claim(
        self,
        candidates: list[str],
        grant: KeyGrant,
        opener: Callable[[str, int], Awaitable[ByteStream]],
        listen: tuple[str, int],
        port: int,
        where: str,
        *,
        passthrough: bool = False,
    ) -> VirtualForward | bool | Awaitable[VirtualForward | bool]:
        """Claim the first free candidate; in a cluster an awaitable (asyncssh awaits it)."""
        if not self._limits.add_tunnel(grant.owner):
            limit = self._limits.max_tunnels_per_owner
            return self._refuse(where, f"this key already holds {limit} tunnels")
        tunnels = [
            Tunnel(
                name=name, owner=grant.owner, peer=self._state.peer, open_stream=opener,
                transport=self._transport, wants_pool=self._state.pool,
                member_id=self._state.member_id or "", passthrough=passthrough,
            )
            for name in candidates
        ]  # fmt: skip
        if self._hub.cluster is not None:
            return self._claim_in_cluster(tunnels, listen, port, where)
        for tunnel in tunnels:  # no registry: synchronous, as fast as ever
            try:
                self._hub.claim(tunnel)
            except Blocked as blocked:
                self._limits.remove_tunnel(tunnel.owner)
                return self._refuse(where, str(blocked))
            except NameTaken:
                continue
            return self._forward(tunnel, listen, port, where)
        return self._no_name(tunnels, where)

    def _claim_tcp(
        self, grant: KeyGrant, listen_port: int, where: str
    ) -> VirtualForward | bool | Awaitable[VirtualForward | bool]:
        """``-R tcp:PORT:...``: a TCP tunnel on public PORT (0: any of the range)."""
        if self._hub.tcp is None:
            return self._refuse(where, "TCP tunnels are off on this router")
        if grant.name_patterns is not None and not grant.may_hold("tcp"):
            # A key limited to names (permitlisten, a portal instance) gets no ports unless
            # a pattern says "tcp" ("tcp" is no name a tunnel can hold).
            return self._refuse(where, 'this key may not open TCP tunnels (permitlisten="tcp")')
        asked = f"tcp:{listen_port}" if listen_port else "tcp"
        blocked = self._hub.block_refusal(grant.owner, asked, self._state.peer)
        if blocked is not None:  # a blocked key gets no port; a blocked "tcp:PORT" not that one
            return self._refuse(where, blocked)
        if not self._limits.add_tunnel(grant.owner):
            limit = self._limits.max_tunnels_per_owner
            return self._refuse(where, f"this key already holds {limit} tunnels")
        return self._claim_port(grant, listen_port, where)

    async def _claim_port(
        self, grant: KeyGrant, listen_port: int, where: str
    ) -> VirtualForward | bool:
        tcp = self._hub.tcp
        assert tcp is not None

        def make_tunnel(port: int) -> Tunnel:
            opener = _tcp_opener(
                self._connection, "tcp", port, self._settings.window_bytes, self._pending
            )
            return Tunnel(
                name=f"tcp:{port}", owner=grant.owner, peer=self._state.peer, open_stream=opener
            )

        cluster = self._hub.cluster
        try:
            tunnel = await tcp.claim(listen_port, make_tunnel, cluster.claim if cluster else None)
        except PortRefused as refused:
            self._limits.remove_tunnel(grant.owner)
            return self._refuse(where, str(refused))
        except RegistryUnavailable as error:
            log.warning(fields("registry_unavailable", name=f"tcp:{listen_port}", error=str(error)))
            self._limits.remove_tunnel(grant.owner)
            return self._refuse(where, UNREACHABLE)
        except RegistryError as error:
            log.error(fields("registry_error", name=f"tcp:{listen_port}", error=str(error)))
            self._limits.remove_tunnel(grant.owner)
            return self._refuse(where, "the route registry refused the claim: try again later")
        if self._lost:  # the client went away while the port was opened
            self._hub.release(tunnel)
            self._limits.remove_tunnel(grant.owner)
            return False
        port = int(tunnel.name[4:])
        return self._forward(tunnel, ("tcp", listen_port), port, where)

    async def _claim_in_cluster(
        self, tunnels: list[Tunnel], listen: tuple[str, int], port: int, where: str
    ) -> VirtualForward | bool:
        for tunnel in tunnels:
            try:
                await self._hub.claim_in_cluster(tunnel)
            except (Blocked, OtherKind) as blocked:
                self._limits.remove_tunnel(tunnel.owner)
                return self._refuse(where, str(blocked))
            except NameTaken:
                continue
            except RegistryUnavailable as error:
                log.warning(fields("registry_unavailable", name=tunnel.name, error=str(error)))
                self._limits.remove_tunnel(tunnel.owner)
                return self._refuse(where, UNREACHABLE)
            except RegistryError as error:  # e.g. refused credentials: the operator's to fix
                log.error(fields("registry_error", name=tunnel.name, error=str(error)))
                self._limits.remove_tunnel(tunnel.owner)
                return self._refuse(where, "the route registry refused the claim: try again later")
            if self._lost:  # the client went away while the registry answered
                self._hub.release(tunnel)
                self._limits.remove_tunnel(tunnel.owner)
                return False
            return self._forward(tunnel, listen, port, where)
        return self._no_name(tunnels, where)

    def _forward(
        self, tunnel: Tunnel, listen: tuple[str, int], port: int, where: str
    ) -> VirtualForward:
        forward = VirtualForward(self._hub, tunnel, listen, port, self._forget)
        tunnel.close = functools.partial(self._close_forward, forward)
        how = " (TLS passthrough: your backend's certificate)" if tunnel.passthrough else ""
        self._state.add(
            forward, f"Forwarding {self._hub.url_for(tunnel.name)}{how} -> your {where}"
        )
        return forward

    def _no_name(self, tunnels: list[Tunnel], where: str) -> bool:
        self._limits.remove_tunnel(tunnels[0].owner)
        if len(tunnels) == 1:
            return self._refuse(where, f"the name {tunnels[0].name!r} is in use by another key")
        return self._refuse(where, "no free random name was found; try again")

    def _close_forward(self, forward: VirtualForward, reason: str) -> None:
        """The router ends a forward (a lost lease); a connection left with none is closed,
        so its client reconnects instead of holding a forward that serves nothing."""
        forward.close()
        self._state.refuse(f"{forward.tunnel.name}", reason)
        if not self._state.forwards and self._conn is not None and not self._lost:
            self._conn.disconnect(asyncssh.DISC_BY_APPLICATION, reason)

    def _forget(self, forward: VirtualForward) -> None:
        if forward in self._state.forwards:
            self._state.forget(forward)
            self._limits.remove_tunnel(forward.tunnel.owner)

    def _refuse(self, where: str, reason: str) -> bool:
        self._hub.counts["tunnel_refused"] += 1
        self._state.refuse(where, reason)
        log.info(fields("forward_refused", peer=self._state.peer, listen=where, reason=reason))
        return False

    @property
    def _connection(self) -> asyncssh.SSHServerConnection:
        assert self._conn is not None
        return self._conn

    def connection_requested(self, *_: object) -> bool:
        log.info(fields("refused", peer=self._state.peer, what="direct-tcpip (-L/-D/-W)"))
        return False

    def unix_connection_requested(self, *_: object) -> bool:
        log.info(fields("refused", peer=self._state.peer, what="direct-streamlocal"))
        return False

    def session_requested(
        self,
    ) -> tuple[asyncssh.SSHServerChannel[str], asyncssh.SSHServerSession[str]]:
        session = ToolSession(self._hub, self._state, self._auth, self._settings.dev_ca_pem)
        return bounded_env_channel(self._connection, self._state), session


def _tcp_opener(
    conn: asyncssh.SSHServerConnection,
    listen_host: str,
    listen_port: int,
    window: int,
    pending: PendingOpens,
) -> Callable[[str, int], Awaitable[ByteStream]]:
    """How a browser connection becomes a ``forwarded-tcpip`` channel to the client."""
    answers = ForwardAnswers()

    async def open_stream(orig_host: str, orig_port: int) -> ByteStream:
        label = f"channel:{listen_host}"

        async def opening() -> tuple[Any, Any]:
            return await conn.create_connection(
                lambda: ChannelStream(label), listen_host, listen_port, orig_host, orig_port,
                window=window, max_pktsize=_MAX_PACKET,
            )  # fmt: skip

        return await _open_channel(opening, pending=pending, answers=answers, label=label)

    return open_stream


def _unix_opener(
    conn: asyncssh.SSHServerConnection, listen_path: str, window: int, pending: PendingOpens
) -> Callable[[str, int], Awaitable[ByteStream]]:
    """The same for a ``forwarded-streamlocal@openssh.com`` channel (DIT4C protocol)."""
    answers = ForwardAnswers()

    async def open_stream(orig_host: str, orig_port: int) -> ByteStream:
        label = f"channel:{listen_path}"

        async def opening() -> tuple[Any, Any]:
            return await conn.create_unix_connection(
                lambda: ChannelStream(label), listen_path, window=window, max_pktsize=_MAX_PACKET
            )

        return await _open_channel(opening, pending=pending, answers=answers, label=label)

    return open_stream


async def _open_channel(
    opening: Callable[[], Coroutine[Any, Any, tuple[Any, ChannelStream]]],
    *,
    pending: PendingOpens,
    answers: ForwardAnswers,
    label: str,
) -> ByteStream:
    """The channel ``opening`` opens, as a stream.

    Resource handling: if the caller stops waiting (the relay's connect
    timeout), the open goes on without it, and a channel the client confirms
    later is closed at once: asyncssh would otherwise keep it, open and unread,
    for as long as the SSH connection lives.

    A refusal before the forward's client confirmed any open is retried once
    (see ``ForwardAnswers``): nothing was sent on a refused channel, so the
    retry is safe whatever the request.
    """
    try:
        stream = await _open_once(opening, pending)
    except asyncssh.ChannelOpenError as exc:
        if answers.settled:
            raise _refused(exc) from None
        log.info(fields("channel_open_retried", channel=label, reason=exc.reason or "refused"))
        try:
            stream = await _open_once(opening, pending)
        except asyncssh.ChannelOpenError as again:
            answers.settled = True
            raise _refused(again) from None
    answers.settled = True
    return stream


async def _open_once(
    opening: Callable[[], Coroutine[Any, Any, tuple[Any, ChannelStream]]],
    pending: PendingOpens,
) -> ChannelStream:
    if pending.count >= pending.limit:
        raise UpstreamUnavailable("the tunnel client is not answering (too many channels pending)")
    pending.count += 1
    opened = asyncio.ensure_future(opening())
    opened.add_done_callback(pending.release)
    try:
        _, stream = await asyncio.shield(opened)
    except asyncio.CancelledError:
        opened.add_done_callback(_close_late_channel)
        raise
    except asyncssh.ChannelOpenError:
        raise  # the client's refusal (an asyncssh.Error too): _open_channel decides
    except (asyncssh.Error, OSError):
        raise UpstreamUnavailable("the tunnel went away") from None
    return stream


def _refused(exc: asyncssh.ChannelOpenError) -> UpstreamUnavailable:
    return UpstreamUnavailable(
        f"the tunnel client could not reach its app ({exc.reason or 'refused'})"
    )


def _close_late_channel(opened: asyncio.Future[tuple[Any, ChannelStream]]) -> None:
    if not opened.cancelled() and opened.exception() is None:
        _, stream = opened.result()
        stream.close()


def _reason(exc: Exception | None) -> str:
    return "closed" if exc is None else (str(exc) or type(exc).__name__)


async def start_ssh_server(
    hub: TunnelHub,
    auth: Authenticator,
    host_key_path: Path,
    host: str,
    port: int,
    settings: SshSettings,
    limits: SshLimits,
    *,
    tunnel: object = (),
    sock: socket.socket | None = None,
) -> asyncssh.SSHAcceptor:
    """Listen for tunnel clients on ``host:port`` (or through ``tunnel``, e.g. WebSocket),
    or on ``sock``, a socket already bound (a worker's, bound by its supervisor).

    Plain TCP goes through ``CoalescingListener``: one send per loop turn, not per packet.
    """
    return await asyncssh.listen(
        host,
        port,
        tunnel=tunnel or CoalescingListener(sock),
        server_factory=lambda: _ConnectionHandler(
            hub, auth, settings, limits, "wss" if tunnel else "ssh"
        ),
        # asyncssh rebuilds its options for every connection (``reload_config``
        # at the start of auth): a key object, not a path, spares re-reading and
        # parsing the key file each time, and gss_host=None the getfqdn() look-up
        # (no GSS here) — ~0.3 ms of a tunnel's set-up, in a worker thread.
        server_host_keys=[_host_key(host_key_path)],
        gss_host=None,
        encryption_algs=list(settings.ciphers),
        keepalive_interval=settings.keepalive_interval_s,
        keepalive_count_max=3,
        login_timeout=settings.login_timeout_s,
        agent_forwarding=False,
        x11_forwarding=False,
        allow_scp=False,
        line_editor=False,
        reuse_address=True,
    )


@functools.cache
def _host_key(path: Path) -> asyncssh.SSHKey:
    return asyncssh.read_private_key(os.fspath(path))


def acceptor_port(acceptor: SshAcceptor) -> int:
    return int(acceptor.get_port())
