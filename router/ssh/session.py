"""Session channels: what a tunnel client sees, and the few commands it may run.

Part of the router's asyncssh adapter.

* A shell request (``ssh -R ... router`` without ``-N``) prints the
  connection's URLs — and later ones, and refusals with their reasons — on
  stderr, then only listens for Ctrl-C / Ctrl-D, which end it. Nothing typed
  runs.
* Exec requests run built-in commands only: ``help``, ``tunnels [--json]``
  (this connection's tunnels: the listener reads its own tunnel from it, and
  from ``router``, the cluster router id — top level and per tunnel, ``null``
  without a registry — which router its connection reached),
  ``ca`` (the development CA's certificate as PEM, so a client that pinned
  the host key can trust the router's TLS without a CA file); in portal
  mode also the DIT4C pair: as user ``register``, ``INSTANCE_ID`` (cache the
  instance's portal keys), and as user ``listen``, ``SOCKET`` (wait for the
  forward of that path, print the URL on stdout, stay open). Any other
  command, and every subsystem (sftp), is refused.

Env requests (``SetEnv``/``SendEnv``): asyncssh keeps every one a client sends
on a session channel, without limit. The router reads only ``HOSTMUX_*``
names (``HOSTMUX_POOL``, ``HOSTMUX_POOL_MEMBER``), so a session channel is a
``BoundedEnvChannel``: other names are refused and not kept (OpenSSH's
default ``SendEnv LANG LC_*`` among them: it does not mind), and of
``HOSTMUX_*`` names at most ``MAX_ENV_KEPT`` per channel, each name and value
of bounded size; past that they are refused, counted per connection
(``env_refused`` on its ``ssh_disconnect`` line) and logged once per
connection (``ssh_env_refused``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

import asyncssh
from asyncssh.packet import SSHPacket

from hostmux.log import fields
from router.pool import check_member_id
from router.portal import PortalUnavailable
from router.ssh.auth import Authenticator
from router.ssh.client_state import ClientState
from router.tunnels import Tunnel, TunnelHub

log = logging.getLogger("hostmux.ssh")

# A DIT4C client sends ``listen SOCKET`` right after its forward request;
# asyncssh may still be finishing that forward, so wait this long for it.
_FORWARD_WAIT_S = 10.0

_HELP = """hostmux tunnel router.
  ssh -R NAME:80:localhost:PORT HOST     serve localhost:PORT at https://NAME.DOMAIN
  ssh -R 80:localhost:PORT HOST          the same under a random name
Commands:
  help                                   this text
  tunnels [--json]                       this connection's tunnels (not the router's others);
                                         --json adds the names refused on it, with reasons,
                                         and the id of the router that holds them (cluster)
  ca                                     the development CA's certificate (PEM), if it has one
"""

# What ``ssh register@router`` with no instance id is told (DIT4C's usage).
_REGISTER_USAGE = (
    "usage: ssh register@HOST INSTANCE_ID  (caches the instance's keys from the portal)\n"
)

_BUILTINS = ("help", "tunnels", "ca")

# Env requests a session channel keeps (the module's docstring): HOSTMUX_* names only,
# this many per channel, names and values up to these sizes (bytes).
ENV_PREFIX = b"HOSTMUX_"
MAX_ENV_KEPT = 16
MAX_ENV_NAME_BYTES = 64
MAX_ENV_VALUE_BYTES = 256

# What ``ca`` says when there is no development CA: certificates from files are
# trusted through the client's own CA store, so there is nothing to hand out.
_NO_DEV_CA = (
    "this router has no development CA to hand out: it serves certificates from files "
    "(or no HTTPS); trust them through your system's CA store\n"
)


def _pool_line(pool: object) -> str:
    if not isinstance(pool, dict):
        return ""
    members = pool["members"]
    return f" (pool member {pool['member']}, {len(members)} member(s) here)"


class BoundedEnvChannel(asyncssh.SSHServerChannel[str]):
    """asyncssh's session channel, keeping a bounded env (the module's docstring).

    asyncssh builds its channel from the connection's own settings
    (``create_server_channel``) and handles each channel request by the method
    named after it; ``bounded_env_channel`` makes one and gives it this class, which
    adds nothing but ``_process_env_request`` (``tests/unit/test_ssh_env.py`` checks
    that asyncssh still has the method this one replaces).
    """

    _state: ClientState  # the connection's, for the count of refusals

    def _process_env_request(self, packet: SSHPacket) -> bool:
        name = packet.get_string()
        value = packet.get_string()
        packet.check_end()
        if not name.startswith(ENV_PREFIX):
            return False  # nothing reads it: refused, not kept, not worth a line
        if (
            (name not in self._env and len(self._env) >= MAX_ENV_KEPT)
            or len(name) > MAX_ENV_NAME_BYTES
            or len(value) > MAX_ENV_VALUE_BYTES
        ):
            state = self._state
            state.env_refused += 1
            if state.env_refused == 1:
                shown = name[:MAX_ENV_NAME_BYTES].decode("utf-8", "replace")
                log.warning(
                    fields(
                        "ssh_env_refused", peer=state.peer, kept=len(self._env),
                        limit=MAX_ENV_KEPT, name=shown, value_bytes=len(value),
                        max_name_bytes=MAX_ENV_NAME_BYTES, max_value_bytes=MAX_ENV_VALUE_BYTES,
                    )
                )  # fmt: skip
            return False
        self._env[name] = value
        return True


def bounded_env_channel(
    conn: asyncssh.SSHServerConnection, state: ClientState
) -> asyncssh.SSHServerChannel[str]:
    """A new session channel of ``conn`` that keeps a bounded env (``BoundedEnvChannel``)."""
    chan = conn.create_server_channel()
    chan.__class__ = BoundedEnvChannel  # the same object, one method more (no new fields)
    assert isinstance(chan, BoundedEnvChannel)
    chan._state = state
    return chan


class ToolSession(asyncssh.SSHServerSession[str]):
    """A session channel: shows the connection's URLs; runs only built-in commands."""

    def __init__(
        self, hub: TunnelHub, state: ClientState, auth: Authenticator, dev_ca_pem: str | None
    ) -> None:
        self._hub = hub
        self._state = state
        self._auth = auth
        self._dev_ca_pem = dev_ca_pem
        self._chan: asyncssh.SSHServerChannel[str] | None = None
        self._command: str | None = None
        self._hinted = False
        self._task: asyncio.Task[None] | None = None  # the one running command, if any

    def __repr__(self) -> str:
        return f"<ToolSession {self._state.peer} command={self._command!r}>"

    def connection_made(self, chan: asyncssh.SSHServerChannel[str]) -> None:
        self._chan = chan

    def pty_requested(self, *_: object) -> bool:
        return True  # ssh asks for one by default; refusing it only adds a warning

    def shell_requested(self) -> bool:
        self._read_env()
        return True  # as ``register``, only to say how it is used (session_started)

    def _read_env(self) -> None:
        """``HOSTMUX_POOL=1`` (OpenSSH: ``-o SetEnv=HOSTMUX_POOL=1``) makes the
        connection's forwards pool members, ``HOSTMUX_POOL_MEMBER`` names the member.

        The env comes with a session, which OpenSSH opens after sending its forwards:
        a forward already granted becomes a pool now (``TunnelHub.pool_requested``); the
        listener sends it on a session before its forward.
        """
        env = self._channel.get_environment()
        if env.get("HOSTMUX_POOL", "").lower() not in ("1", "true", "yes"):
            return
        state = self._state
        member = check_member_id(env.get("HOSTMUX_POOL_MEMBER", ""))
        if state.pool and (member is None or member == state.member_id):
            return
        state.pool = True
        state.member_id = member or state.member_id
        log.info(
            fields("pool_env", peer=state.peer, member=member, forwards_before=len(state.forwards))
        )
        for forward in state.forwards:
            self._hub.pool_requested(forward.tunnel, state.member_id)

    def exec_requested(self, command: str) -> bool:
        self._read_env()
        words = command.split()
        role = self._role()
        allowed = bool(words) and (
            (words[0] in _BUILTINS and role != "register")
            or (role in ("register", "listen") and len(words) == 1)
        )
        if not allowed:
            log.info(fields("refused", peer=self._state.peer, what="exec", command=command[:80]))
            return False
        self._command = command
        return True

    def subsystem_requested(self, subsystem: str) -> bool:
        log.info(fields("refused", peer=self._state.peer, what="subsystem", command=subsystem))
        return False

    def session_started(self) -> None:
        chan = self._channel
        command = self._command
        if command is None and self._role() == "register":
            chan.write_stderr(_REGISTER_USAGE)
            chan.exit(2)
            return
        if command is None:
            for line in self._url_lines():
                self._say(line)
            self._say("Press Ctrl-C to close the tunnel.")
            self._state.watchers.append(self._say)
            return
        word = command.split()[0]
        if word == "ca":
            if self._dev_ca_pem is None:
                chan.write_stderr(_NO_DEV_CA)
                chan.exit(1)
            else:
                chan.write(self._dev_ca_pem)
                chan.exit(0)
        elif word in _BUILTINS:
            chan.write(self._run_builtin(command))
            chan.exit(0)
        elif self._role() == "register":
            self._task = asyncio.ensure_future(self._register(word))
        else:
            self._task = asyncio.ensure_future(self._listen(word))

    def data_received(self, data: str, datatype: int | None) -> None:
        if "\x03" in data or "\x04" in data:  # Ctrl-C / Ctrl-D end the tunnel
            self._channel.exit(0)
        elif not self._hinted and self._command is None:
            self._hinted = True
            self._say("This is a tunnel, not a shell: nothing you type runs. Ctrl-C closes it.")

    def eof_received(self) -> bool:
        # Stdin closed (``ssh ... </dev/null``) says nothing about the tunnel:
        # keep the channel open for our output until the command or client ends.
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if self._say in self._state.watchers:
            self._state.watchers.remove(self._say)
        if self._task is not None:
            self._task.cancel()

    # -- helpers -------------------------------------------------------------

    @property
    def _channel(self) -> asyncssh.SSHServerChannel[str]:
        assert self._chan is not None
        return self._chan

    def _role(self) -> str:
        return self._state.grant.role if self._state.grant is not None else "tunnel"

    def _say(self, line: str) -> None:
        if self._chan is not None:
            newline = "\r\n" if self._chan.get_terminal_type() else "\n"
            self._chan.write_stderr(line + newline)

    def _url_lines(self) -> list[str]:
        lines = [
            f"Forwarding {self._hub.url_for(f.tunnel.name)}"
            + (" (TLS passthrough: your backend's certificate)" if f.tunnel.passthrough else "")
            for f in self._state.forwards
        ]
        lines += [f"Refused -R {r['listen']}: {r['reason']}" for r in self._state.refusals]
        return lines or ["No tunnels yet: add -R NAME:80:localhost:PORT to your ssh command."]

    def _run_builtin(self, command: str) -> str:
        words = command.split()
        if words[0] == "help":
            return _HELP
        router_id = self._hub.cluster.router_id if self._hub.cluster is not None else None
        tunnels = [
            {"name": f.tunnel.name, "url": self._hub.url_for(f.tunnel.name),
             "listen": "{}:{}".format(*f.listen), "router": router_id,
             "pool": self._pool_facts(f.tunnel), "kind": _kind(f.tunnel)}
            for f in self._state.forwards
        ]  # fmt: skip
        if "--json" in words:
            # ``router`` at the top too: a listener asks before its forward, to learn
            # which router it reached without claiming (and so replacing) anything.
            report = {
                "scope": "connection", "router": router_id, "tunnels": tunnels,
                "refused": self._state.refusals,
            }  # fmt: skip
            return json.dumps(report) + "\n"
        where = f" (router {router_id})" if router_id is not None else ""
        lines = "".join(f"{t['url']}{where}{_pool_line(t['pool'])}\n" for t in tunnels)
        return lines or "no tunnels on this connection\n"

    def _pool_facts(self, tunnel: Tunnel) -> dict[str, object] | None:
        """A pool member's id and its pool's members on this router (None: no pool)."""
        pool = tunnel.pool
        if pool is None or pool.member_of(tunnel) is None:
            return None
        members = [
            {"member": m.member_id, "peer": m.tunnel.peer, "outstanding": m.outstanding,
             "failures": m.failures}
            for m in pool.members
        ]  # fmt: skip
        return {"member": tunnel.member_id, "members": members}

    async def _register(self, instance_id: str) -> None:
        """DIT4C ``ssh register@router INSTANCE_ID``: cache the instance's keys."""
        chan = self._channel
        try:
            count = await self._auth.register(instance_id)
        except PortalUnavailable as exc:
            chan.write_stderr(f"Unable to import keys for {instance_id}: {exc}\n")
            chan.exit(1)
            return
        if count == 0:
            chan.write_stderr(f"Unable to import keys for {instance_id}: the portal lists none\n")
            chan.exit(1)
            return
        log.info(fields("dit4c_register", peer=self._state.peer, instance=instance_id, keys=count))
        chan.write(f"{count} authentication key(s) imported for {instance_id}\n")
        chan.exit(0)

    async def _listen(self, socket_path: str) -> None:
        """DIT4C ``ssh -R SOCKET:host:port listen@router SOCKET``: print the URL, stay open."""
        chan = self._channel
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_FORWARD_WAIT_S):
                while not any(f.listen == (socket_path, 0) for f in self._state.forwards):
                    await self._state.changed.wait()
        forward = next((f for f in self._state.forwards if f.listen == (socket_path, 0)), None)
        if forward is None:
            chan.write_stderr(f"{socket_path} is not forwarded on this connection\n")
            chan.exit(1)
            return
        chan.write(self._hub.url_for(forward.tunnel.name) + "\n")


def _kind(tunnel: Tunnel) -> str:
    """A tunnel's kind for ``tunnels --json``: http, tls (passthrough) or tcp."""
    if tunnel.name.startswith("tcp:"):
        return "tcp"
    return "tls" if tunnel.passthrough else "http"
