"""The router's SSH side: the one module that speaks asyncssh.

What an authenticated tunnel client may do, and nothing else:

* remote forwards (``ssh -R NAME:80:localhost:3000``): *virtual* — nothing is
  bound on the router; the bind address is the requested name, the port only a
  label. An empty or wildcard bind address asks for a random name;
* a session that prints its URLs (``ssh -R ...`` without ``-N``): a shell
  request shows them and then only listens for Ctrl-C / Ctrl-D; no command runs;
* the built-in commands ``help`` and ``tunnels [--json]`` as exec requests.

Refused: other exec commands, subsystems (sftp), ``-L``/``-D`` (direct-tcpip),
stream-local forwards, agent and X11 forwarding, password auth.

Resource handling: each SSH connection owns its virtual forwards; when the
connection goes, their names are released (kept reserved for the key for a
while, see ``_routing``).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncssh

from ._access import KeyGrant, name_patterns_from_options
from ._layered_config import ConfigError
from ._log import fields
from ._names import InvalidName, check_name, random_name
from ._relay import UpstreamUnavailable
from ._routing import NameTaken
from ._streams import ByteStream, ReaderWriterStream
from ._tunnels import Tunnel, TunnelHub

log = logging.getLogger("hostmux.ssh")

# Client's order wins in SSH and OpenSSH lists chacha20-poly1305 first, which
# halves small-request throughput in asyncssh: offer AES-GCM only.
DEFAULT_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")

# Bind addresses that mean "no name given": OpenSSH sends "localhost" for
# ``-R 80:host:port`` and "" or "*" for an explicit wildcard.
_ANY_NAME = frozenset({"", "localhost", "*", "0.0.0.0", "::", "127.0.0.1", "::1"})

# Random names collide with probability ~N/2^60; a few retries make the
# refusal for "no free random name" practically unreachable.
_RANDOM_NAME_ATTEMPTS = 5

_HELP = """hostmux tunnel router.
  ssh -R NAME:80:localhost:PORT HOST     serve localhost:PORT at https://NAME.DOMAIN
  ssh -R 80:localhost:PORT HOST          the same under a random name
Commands: help, tunnels [--json]
"""


class AuthorizedKeys:
    """The authorized_keys file, re-read when it changes (no restart needed)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._stamp: tuple[int, int] | None = None
        self._keys: asyncssh.SSHAuthorizedKeys | None = None
        self.reload(strict=True)

    def __repr__(self) -> str:
        return f"<AuthorizedKeys {self._path}>"

    def reload(self, *, strict: bool) -> None:
        """Load the file if it changed; ``strict``: bad lines are a ConfigError."""
        try:
            stat = self._path.stat()
        except FileNotFoundError:
            self._keys, self._stamp = None, None
            return
        except OSError as exc:
            raise ConfigError(f"{self._path}: cannot read: {exc.strerror}") from None
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp == self._stamp:
            return
        text = self._path.read_text(encoding="utf-8", errors="replace")
        good: list[str] = []
        for number, line in enumerate(text.splitlines(), start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            try:
                asyncssh.import_authorized_keys(line)
            except (ValueError, asyncssh.KeyImportError) as exc:
                message = f"{self._path}:{number}: not a valid authorized_keys line ({exc})"
                if strict:
                    raise ConfigError(message) from None
                log.warning(fields("config_warning", text=message + "; line ignored"))
                continue
            good.append(line)
        self._keys = asyncssh.import_authorized_keys("\n".join(good)) if good else None
        self._stamp = stamp
        log.info(fields("authorized_keys_loaded", path=str(self._path), keys=len(good)))

    def grant_for(self, key: asyncssh.SSHKey, peer_ip: str) -> KeyGrant | None:
        try:
            self.reload(strict=False)
        except ConfigError as exc:
            log.warning(fields("config_warning", text=str(exc)))
        if self._keys is None:
            return None
        options = self._keys.validate(key, peer_ip, peer_ip)
        if options is None:
            return None
        patterns = options.get("permitlisten")
        return KeyGrant(
            fingerprint=key.get_fingerprint("sha256"),
            comment=key.get_comment() or "",
            name_patterns=name_patterns_from_options(
                patterns if isinstance(patterns, list) else None
            ),
        )


@dataclass(frozen=True)
class SshSettings:
    window_bytes: int
    keepalive_interval_s: float
    login_timeout_s: float
    ciphers: tuple[str, ...] = DEFAULT_CIPHERS


class _VirtualForward(asyncssh.SSHListener):
    """A remote forward that binds nothing: closing it releases the name."""

    def __init__(
        self,
        hub: TunnelHub,
        tunnel: Tunnel,
        listen: tuple[str, int],
        port: int,
        on_close: Callable[[_VirtualForward], None],
    ) -> None:
        super().__init__()
        self._hub = hub
        self.tunnel = tunnel
        self.listen = listen  # as the client asked: its key for this forward
        self._port = port
        self._on_close = on_close

    def get_port(self) -> int:
        return self._port

    def close(self) -> None:
        self._hub.release(self.tunnel)
        self._on_close(self)

    async def wait_closed(self) -> None:
        return None


@dataclass(eq=False)
class _ClientState:
    """One authenticated SSH connection: its key, forwards and what it was told."""

    peer: str
    grant: KeyGrant | None = None
    forwards: list[_VirtualForward] = field(default_factory=list)
    refusals: list[dict[str, str]] = field(default_factory=list)
    watchers: list[Callable[[str], None]] = field(default_factory=list)

    def forget(self, forward: _VirtualForward) -> None:
        if forward in self.forwards:
            self.forwards.remove(forward)

    def tell(self, line: str) -> None:
        for watcher in list(self.watchers):
            watcher(line)


class _ConnectionHandler(asyncssh.SSHServer):
    """asyncssh callbacks for one SSH connection."""

    def __init__(self, hub: TunnelHub, keys: AuthorizedKeys, settings: SshSettings) -> None:
        self._hub = hub
        self._keys = keys
        self._settings = settings
        self._conn: asyncssh.SSHServerConnection | None = None
        self._state = _ClientState(peer="?")

    def __repr__(self) -> str:
        return f"<SSH client {self._state.peer} forwards={len(self._state.forwards)}>"

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn
        host, port = conn.get_extra_info("peername")[:2]
        self._state.peer = f"{host}:{port}"

    def connection_lost(self, exc: Exception | None) -> None:
        for forward in list(self._state.forwards):
            forward.close()
        if self._state.grant is not None:
            log.info(fields("ssh_disconnect", peer=self._state.peer, reason=_reason(exc)))

    def begin_auth(self, username: str) -> bool:
        return True  # every client must authenticate

    def password_auth_supported(self) -> bool:
        return False

    def kbdint_auth_supported(self) -> bool:
        return False

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        peer_ip = self._state.peer.rsplit(":", 1)[0]
        grant = self._keys.grant_for(key, peer_ip)
        if grant is None:
            log.info(
                fields("ssh_auth_refused", peer=self._state.peer, key=key.get_fingerprint("sha256"))
            )
            return False
        self._state.grant = grant
        return True

    def auth_completed(self) -> None:
        grant = self._state.grant
        assert grant is not None
        log.info(
            fields(
                "ssh_connect", peer=self._state.peer, key=grant.fingerprint, comment=grant.comment
            )
        )

    # -- forwards ------------------------------------------------------------

    def server_requested(self, listen_host: str, listen_port: int) -> Any:
        state, conn, grant = self._state, self._conn, self._state.grant
        assert conn is not None and grant is not None
        where = f"{listen_host}:{listen_port}"

        def refuse(reason: str) -> bool:
            state.refusals.append({"listen": where, "reason": reason})
            state.tell(f"Refused -R {where}: {reason}")
            log.info(fields("forward_refused", peer=state.peer, listen=where, reason=reason))
            return False

        if any(f.listen == (listen_host, listen_port) for f in state.forwards):
            return refuse("this connection already forwards that address")
        port = listen_port or 80  # the port is only a label; 0 asks us to pick one
        candidates: list[str]
        if listen_host in _ANY_NAME:
            if grant.name_patterns is not None:
                return refuse(f"this key must ask for a name ({grant.describe_names()})")
            candidates = [random_name() for _ in range(_RANDOM_NAME_ATTEMPTS)]
        else:
            name = listen_host
            if name.endswith("." + self._hub.domain):
                name = name[: -len(self._hub.domain) - 1]
            try:
                check_name(name)
            except InvalidName as exc:
                return refuse(str(exc))
            if not grant.may_hold(name):
                return refuse(f"this key may only hold {grant.describe_names()}")
            candidates = [name]
        for name in candidates:
            tunnel = Tunnel(
                name=name,
                owner=grant.fingerprint,
                peer=state.peer,
                open_stream=_channel_opener(conn, listen_host, port, self._settings.window_bytes),
            )
            try:
                self._hub.claim(tunnel)
            except NameTaken:
                continue
            forward = _VirtualForward(
                self._hub, tunnel, (listen_host, listen_port), port, state.forget
            )
            state.forwards.append(forward)
            state.tell(f"Forwarding {self._hub.url_for(name)} -> your {where}")
            return forward
        if len(candidates) == 1:
            return refuse(f"the name {candidates[0]!r} is in use by another key")
        return refuse("no free random name was found; try again")

    def connection_requested(self, *_: object) -> bool:
        log.info(fields("refused", peer=self._state.peer, what="direct-tcpip (-L/-D)"))
        return False

    def unix_connection_requested(self, *_: object) -> bool:
        log.info(fields("refused", peer=self._state.peer, what="direct-streamlocal"))
        return False

    def unix_server_requested(self, *_: object) -> bool:
        log.info(fields("refused", peer=self._state.peer, what="streamlocal-forward"))
        return False

    def session_requested(self) -> asyncssh.SSHServerSession[str]:
        return _InfoSession(self._hub, self._state)


def _channel_opener(
    conn: asyncssh.SSHServerConnection, listen_host: str, listen_port: int, window: int
) -> Callable[[str, int], Any]:
    """How a browser connection becomes a ``forwarded-tcpip`` channel to the client."""

    async def open_stream(orig_host: str, orig_port: int) -> ByteStream:
        try:
            reader, writer = await conn.open_connection(
                listen_host, listen_port, orig_host, orig_port, window=window
            )
        except asyncssh.ChannelOpenError as exc:
            raise UpstreamUnavailable(
                f"the tunnel client could not reach its app ({exc.reason or 'refused'})"
            ) from None
        except (asyncssh.Error, OSError):
            raise UpstreamUnavailable("the tunnel went away") from None
        return ReaderWriterStream(reader, writer, label=f"channel:{listen_host}")

    return open_stream


class _InfoSession(asyncssh.SSHServerSession[str]):
    """A session channel: shows the connection's URLs; runs only built-in commands."""

    def __init__(self, hub: TunnelHub, state: _ClientState) -> None:
        self._hub = hub
        self._state = state
        self._chan: asyncssh.SSHServerChannel[str] | None = None
        self._command: str | None = None
        self._hinted = False

    def connection_made(self, chan: asyncssh.SSHServerChannel[str]) -> None:
        self._chan = chan

    def pty_requested(self, *_: object) -> bool:
        return True  # ssh asks for one by default; refusing it only adds a warning

    def shell_requested(self) -> bool:
        return True

    def exec_requested(self, command: str) -> bool:
        words = command.split()
        if not words or words[0] not in ("help", "tunnels"):
            log.info(fields("refused", peer=self._state.peer, what="exec", command=command[:80]))
            return False
        self._command = command
        return True

    def subsystem_requested(self, subsystem: str) -> bool:
        log.info(fields("refused", peer=self._state.peer, what="subsystem", command=subsystem))
        return False

    def session_started(self) -> None:
        chan = self._chan
        assert chan is not None
        if self._command is not None:
            chan.write(self._run_builtin(self._command))
            chan.exit(0)
            return
        for line in self._url_lines():
            self._say(line)
        self._say("Press Ctrl-C to close the tunnel.")
        self._state.watchers.append(self._say)

    def _say(self, line: str) -> None:
        if self._chan is not None:
            newline = "\r\n" if self._chan.get_terminal_type() else "\n"
            self._chan.write_stderr(line + newline)

    def data_received(self, data: str, datatype: int | None) -> None:
        if "\x03" in data or "\x04" in data:  # Ctrl-C / Ctrl-D end the tunnel
            assert self._chan is not None
            self._chan.exit(0)
        elif not self._hinted:
            self._hinted = True
            self._say("This is a tunnel, not a shell: nothing you type runs. Ctrl-C closes it.")

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._say in self._state.watchers:
            self._state.watchers.remove(self._say)

    def _url_lines(self) -> list[str]:
        lines = [f"Forwarding {self._hub.url_for(f.tunnel.name)}" for f in self._state.forwards]
        lines += [f"Refused -R {r['listen']}: {r['reason']}" for r in self._state.refusals]
        return lines or ["No tunnels yet: add -R NAME:80:localhost:PORT to your ssh command."]

    def _run_builtin(self, command: str) -> str:
        words = command.split()
        if words[0] == "help":
            return _HELP
        tunnels = [
            {"name": f.tunnel.name, "url": self._hub.url_for(f.tunnel.name),
             "listen": "{}:{}".format(*f.listen)}
            for f in self._state.forwards
        ]  # fmt: skip
        if "--json" in words:
            return json.dumps({"tunnels": tunnels, "refused": self._state.refusals}) + "\n"
        return "".join(t["url"] + "\n" for t in tunnels) or "no tunnels\n"


def _reason(exc: Exception | None) -> str:
    return "closed" if exc is None else (str(exc) or type(exc).__name__)


async def start_ssh_server(
    hub: TunnelHub,
    keys: AuthorizedKeys,
    host_key_path: Path,
    host: str,
    port: int,
    settings: SshSettings,
) -> asyncssh.SSHAcceptor:
    """Listen for tunnel clients on ``host:port``; returns the acceptor (``close()`` it)."""
    return await asyncssh.listen(
        host,
        port,
        server_factory=lambda: _ConnectionHandler(hub, keys, settings),
        server_host_keys=[os.fspath(host_key_path)],
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


def acceptor_port(acceptor: asyncssh.SSHAcceptor) -> int:
    return int(acceptor.get_port())


__all__ = ["AuthorizedKeys", "SshSettings", "acceptor_port", "start_ssh_server"]
