"""``router.ssh.session.BoundedEnvChannel``: a session channel keeps a bounded env.

A real asyncssh server (its session channels made by ``bounded_env_channel``,
as the router makes them) and a real asyncssh client over loopback in one
process; the client sends many env requests on one session, then a command
whose answer is the environment the server's channel kept.
"""

from __future__ import annotations

import json
from typing import Any

import asyncssh

from router.ssh.client_state import ClientState
from router.ssh.session import (
    MAX_ENV_KEPT,
    MAX_ENV_NAME_BYTES,
    MAX_ENV_VALUE_BYTES,
    BoundedEnvChannel,
    bounded_env_channel,
)

from .asyncio_bounded import run

DEADLINE_S = 30.0
# Env requests of each kind the client sends: far past the bound.
FLOOD = 2_000


class Server(asyncssh.SSHServer):
    """Any key logs in; each session answers its command with the env its channel kept."""

    def __init__(self, state: ClientState) -> None:
        self._state = state
        self._conn: Any = None

    def connection_made(self, conn: Any) -> None:
        self._conn = conn

    def begin_auth(self, username: str) -> bool:
        return False  # no authentication needed: the channel is what is tested

    def session_requested(self) -> tuple[asyncssh.SSHServerChannel[str], Any]:
        async def answer(_stdin: Any, stdout: asyncssh.SSHWriter[str], _stderr: Any) -> None:
            channel: Any = stdout.channel  # asyncssh's line editor, passing calls on
            stdout.write(json.dumps(dict(channel.get_environment())))
            channel.exit(0)

        return bounded_env_channel(self._conn, self._state), answer


def _kept_env(env: dict[str, str], state: ClientState) -> dict[str, str]:
    async def scenario() -> dict[str, str]:
        host_key = asyncssh.generate_private_key("ssh-ed25519")
        server = await asyncssh.listen(
            "127.0.0.1", 0, server_host_keys=[host_key], gss_host=None,
            server_factory=lambda: Server(state),
        )  # fmt: skip
        port = server.sockets[0].getsockname()[1]
        try:
            async with asyncssh.connect(
                "127.0.0.1", port, known_hosts=None, username="t", agent_path=None,
                client_keys=None,
            ) as conn:  # fmt: skip
                result = await conn.run("env", env=env, check=True)
                kept: dict[str, str] = json.loads(str(result.stdout))
                return kept
        finally:
            server.close()

    return run(scenario(), DEADLINE_S)


def test_only_hostmux_names_are_kept_and_at_most_max_env_kept_of_them() -> None:
    state = ClientState(peer="test")
    env = {"LANG": "C.UTF-8", "HOSTMUX_POOL": "1", "HOSTMUX_POOL_MEMBER": "m1"}
    env |= {f"HOSTMUX_FLOOD_{n}": "v" for n in range(FLOOD)}
    env |= {f"LC_FLOOD_{n}": "w" for n in range(FLOOD)}
    kept = _kept_env(env, state)
    assert len(kept) == MAX_ENV_KEPT
    assert kept["HOSTMUX_POOL"] == "1" and kept["HOSTMUX_POOL_MEMBER"] == "m1"  # first come
    assert all(name.startswith("HOSTMUX_") for name in kept)
    # Refusals counted: the HOSTMUX_* names past the bound (other names are not kept,
    # not counted: OpenSSH sends LANG and LC_* by default).
    assert state.env_refused == FLOOD - (MAX_ENV_KEPT - 2)


def test_names_and_values_past_their_size_are_refused() -> None:
    state = ClientState(peer="test")
    long_name = "HOSTMUX_" + "N" * (MAX_ENV_NAME_BYTES - len("HOSTMUX_") + 1)
    env = {
        "HOSTMUX_BIG": "v" * (MAX_ENV_VALUE_BYTES + 1),
        long_name: "v",
        "HOSTMUX_FITS": "v" * MAX_ENV_VALUE_BYTES,
    }
    assert _kept_env(env, state) == {"HOSTMUX_FITS": "v" * MAX_ENV_VALUE_BYTES}
    assert state.env_refused == 2


def test_the_installed_asyncssh_still_has_the_method_replaced() -> None:
    """A later asyncssh that renamed it would keep every env request again: say so."""
    assert callable(getattr(asyncssh.SSHServerChannel, "_process_env_request", None))
    assert BoundedEnvChannel._process_env_request is not (
        asyncssh.SSHServerChannel._process_env_request
    )
