"""Listening sockets bound once by the supervisor and served by every worker.

The supervisor binds each ``*_listen`` address here (``bind_listeners``), so
port 0 is chosen once and every worker accepts on the same sockets: the
kernel hands each new connection to one of the processes waiting in
``accept`` on it (the ``pass_fds`` hand-over nginx and gunicorn use, without
``SO_REUSEPORT``, so a worker started later cannot take a port another
program holds). A worker adopts them by descriptor (``adopt``), named in its
``listen_fds`` option.

A host name that resolves to several addresses (``localhost``: 127.0.0.1 and
::1) gets one socket per address, as ``asyncio.start_server`` does for a
single router.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

from hostmux.config.layered import ConfigError, parse_host_port
from router.config import LISTEN_KINDS, RouterConfig

# Pending connections per socket, as the single router listens (asyncio's server
# for the front doors, the one-port listener); SSH as asyncssh's listener.
_BACKLOG = {"ssh": 100, "https": 1024, "http": 1024, "one_port": 1024}


@dataclass
class BoundListeners:
    """What the supervisor bound: sockets by kind, in the order of the ``*_listen`` options."""

    sockets: dict[str, list[socket.socket]] = field(
        default_factory=lambda: {kind: [] for kind in LISTEN_KINDS}
    )

    def __repr__(self) -> str:
        return f"<BoundListeners {self.addresses()}>"

    def fds(self) -> dict[str, list[int]]:
        return {kind: [s.fileno() for s in socks] for kind, socks in self.sockets.items()}

    def all_fds(self) -> list[int]:
        return [fd for fds in self.fds().values() for fd in fds]

    def addresses(self) -> dict[str, list[str]]:
        return {kind: [address_of(s) for s in socks] for kind, socks in self.sockets.items()}

    def close(self) -> None:
        for socks in self.sockets.values():
            for sock in socks:
                sock.close()


def bind_listeners(config: RouterConfig) -> BoundListeners:
    """Bind every listening address of ``config``; a ConfigError names one that fails
    (the sockets bound before it are closed)."""
    bound = BoundListeners()
    try:
        for kind in LISTEN_KINDS:
            for value in getattr(config, f"{kind}_listen"):
                bound.sockets[kind] += _bind(value, f"{kind}_listen", _BACKLOG[kind])
    except BaseException:
        bound.close()
        raise
    return bound


def _bind(value: str, where: str, backlog: int) -> list[socket.socket]:
    host, port = parse_host_port(value, where)
    try:
        infos = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )  # fmt: skip
    except socket.gaierror as exc:
        raise ConfigError(f"cannot listen on {value}: {exc.strerror or exc}") from None
    made: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            made.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:  # as asyncio: the v6 socket serves v6 only
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(backlog)
    except OSError as exc:
        for sock in made:
            sock.close()
        raise ConfigError(f"cannot listen on {value}: {exc.strerror or exc}") from None
    return made


def adopt(fd: int) -> socket.socket:
    """A worker's listening socket from its inherited descriptor, ready for asyncio."""
    sock = socket.socket(fileno=fd)
    sock.setblocking(False)
    return sock


def address_of(sock: socket.socket) -> str:
    """``HOST:PORT`` (``[v6]:PORT``) as a router's logs show its listeners."""
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
