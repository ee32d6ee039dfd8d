"""What an authenticated SSH connection no longer needs, dropped (memory per idle tunnel).

Part of the router's asyncssh adapter. An idle tunnel is one asyncssh
``SSHServerConnection``, and most of its ~23 KiB was asyncssh's: at the start
of authentication asyncssh rebuilds the connection's options for the user
(``reload_config``: a fresh ``SSHServerConnectionOptions`` with its own
dicts, lists, host-key pair and config, ~5 KiB), and it keeps both key
exchange init packets (~2.8 KiB) and the extension-info values it sent
(~1 KiB) for the life of the connection. ``shed_after_auth`` drops them once
the client is in:

- the options go back to the listener's own object, shared by every
  connection: the router gives asyncssh no config file, so the rebuilt copy
  holds the same values (its only inputs beyond the listener's are the user
  name and addresses, which match ``Match`` blocks of a config file). One
  difference: ``SSHAcceptor.update`` changes the listener's object in place,
  so it would reach connections already in; the router never calls it;
- the key exchange init packets are only read while a key exchange runs
  (its hash), and each key exchange, a re-key included, sets both anew
  before it reads them (``tests/integration/test_tunnel_memory.py`` re-keys
  after the shed);
- the extensions are sent once, after the first key exchange (a re-key adds
  two entries back, ~1 KiB);
- five sets a *client* fills (trusted and revoked host keys and CAs, the
  server's signature algorithms; ~1.1 KiB) become one shared empty
  ``frozenset``: a server reads the first four only for host-based
  authentication against ``known_client_hosts``, which the router never
  configures, and the last never;
- the connection's close event waits on a list, not a ``deque`` (a deque
  allocates a 64-slot block at once, ~0.7 KiB; an ``asyncio.Event`` only
  appends, iterates and removes its few waiters).

These are asyncssh's private attributes: each is replaced only when it is
there with the type this module expects, so a later asyncssh that renames
one only loses the saving (``tests/unit/test_ssh_lean.py`` says so loudly).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from typing import Any

# The attributes read and replaced, and the type each must have (see the docstring).
OPTIONS = "_options"
KEXINIT = ("_client_kexinit", "_server_kexinit")
EXTENSIONS = "_extensions_to_send"
CLIENT_SETS = (
    "_trusted_host_keys", "_trusted_ca_keys", "_revoked_host_keys", "_x509_revoked_certs",
    "_server_sig_algs",
)  # fmt: skip
CLOSE_EVENT = "_close_event"

_NONE: frozenset[object] = frozenset()


def listen_options(conn: object) -> object | None:
    """The options a new connection starts with: the listener's, shared (call it at once)."""
    return getattr(conn, OPTIONS, None)


def shed_after_auth(conn: Any, shared_options: object | None) -> int:
    """Drop what ``conn`` holds only for its start; how many of the parts were dropped."""
    dropped = 0
    current = getattr(conn, OPTIONS, None)
    if (
        shared_options is not None
        and current is not None
        and current is not shared_options
        and type(current) is type(shared_options)
    ):
        setattr(conn, OPTIONS, shared_options)
        dropped += 1
    for name in KEXINIT:
        if isinstance(getattr(conn, name, None), bytes):
            setattr(conn, name, b"")
            dropped += 1
    if isinstance(getattr(conn, EXTENSIONS, None), OrderedDict):
        setattr(conn, EXTENSIONS, OrderedDict())
        dropped += 1
    for name in CLIENT_SETS:
        value = getattr(conn, name, None)
        if type(value) is set and not value:
            setattr(conn, name, _NONE)
            dropped += 1
    dropped += lean_event(getattr(conn, CLOSE_EVENT, None))
    return dropped


def lean_event(event: object) -> int:
    """An idle ``asyncio.Event``'s waiters on a list instead of a deque; 1 if done."""
    if type(event) is asyncio.Event:
        waiters = getattr(event, "_waiters", None)
        if type(waiters) is deque and not waiters:
            event._waiters = []  # type: ignore[assignment]
            return 1
    return 0
