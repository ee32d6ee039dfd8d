"""One SSH connection's state: its virtual forwards, and what its sessions are told.

Part of the router's asyncssh adapter. The connection's callbacks
(``router.ssh.server``) change it; its session channels
(``router.ssh.session``) read it and watch it for changes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

import asyncssh

from router.access import KeyGrant
from router.tunnels import Tunnel, TunnelHub


class VirtualForward(asyncssh.SSHListener):
    """A remote forward that binds nothing: closing it releases the name."""

    def __init__(
        self,
        hub: TunnelHub,
        tunnel: Tunnel,
        listen: tuple[str, int],
        port: int,
        on_close: Callable[[VirtualForward], None],
    ) -> None:
        super().__init__()
        self._hub = hub
        self.tunnel = tunnel
        self.listen = listen  # as the client asked (path, 0 for stream-local)
        self._port = port
        self._on_close = on_close

    def __repr__(self) -> str:
        return f"<VirtualForward {self.tunnel.name} listen={self.listen}>"

    def get_port(self) -> int:
        return self._port

    def close(self) -> None:
        self._hub.release(self.tunnel)
        self._on_close(self)

    def end(self, reason: str) -> None:
        """Close for good (the job is over): no reconnect reservation; ``reason`` reported."""
        self._hub.release(self.tunnel, reason=reason, reserve=False)
        self._on_close(self)

    async def wait_closed(self) -> None:
        return None


@dataclass(eq=False, slots=True)
class ClientState:
    """One SSH connection: who it is, its forwards and what it was told.

    ``changed`` is made when something waits for a change (the DIT4C
    ``listen`` command), not for every connection: an ``asyncio.Event`` costs
    ~0.9 KiB, and 10,000 idle tunnels never wait.
    """

    peer: str
    grant: KeyGrant | None = None
    forwards: list[VirtualForward] = field(default_factory=list)
    refusals: list[dict[str, str]] = field(default_factory=list)
    watchers: list[Callable[[str], None]] = field(default_factory=list)
    # HOSTMUX_POOL=1 (and HOSTMUX_POOL_MEMBER) in a session's env: its forwards serve in
    # a pool (``router.pool``).
    pool: bool = False
    member_id: str | None = None
    # Env requests refused for being past the bounds (``router.ssh.session``).
    env_refused: int = 0
    _changed_event: asyncio.Event | None = None

    @property
    def changed(self) -> asyncio.Event:
        """Set at the next change (a new forward or refusal); a fresh one after that."""
        if self._changed_event is None:
            self._changed_event = asyncio.Event()
        return self._changed_event

    def add(self, forward: VirtualForward, line: str) -> None:
        self.forwards.append(forward)
        self._changed(line)

    def forget(self, forward: VirtualForward) -> None:
        if forward in self.forwards:
            self.forwards.remove(forward)

    def refuse(self, listen: str, reason: str) -> None:
        self.refusals.append({"listen": listen, "reason": reason})
        self._changed(f"Refused -R {listen}: {reason}")

    def _changed(self, line: str) -> None:
        for watcher in list(self.watchers):
            watcher(line)
        if self._changed_event is not None:
            self._changed_event.set()
            self._changed_event = None
