"""The listener's SSH side: the one module of the listener that speaks asyncssh.

One ``TunnelSession`` is one SSH connection to a router holding one virtual
remote forward: channels the router opens are connected to the target app by
asyncssh's own forwarder. After the forward is granted, the built-in
``tunnels --json`` command tells the public URL (the router picks random names
and knows its domain and port), and ``ca`` hands out the router's development
CA, if it has one, for the URL self-check: over a connection whose host key
was checked, so the certificate comes from the router we pinned.

Host keys are always checked: against a known_hosts file, or against pinned
SHA256 fingerprints — never accepted silently.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import asyncssh

from hostmux.log import describe
from hostmux.tunnel.coalescing import CoalescingConnector

from ._proxy import HttpConnectTunnel, proxy_for

# The client's cipher order decides in SSH: AES-GCM is fastest in asyncssh
# (chacha20-poly1305 halves small-request throughput), the rest are fallbacks.
_CIPHERS = (
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
    "aes128-ctr",
    "aes256-ctr",
)

# A CA certificate in PEM is 1-2 KiB; a router that sends more is not sending one.
MAX_CA_BYTES = 64 * 1024
# What the router says on stderr when it has no CA: one short line is enough.
_MAX_REFUSAL_BYTES = 1024


class TunnelError(Exception):
    """The tunnel could not be set up; the message says why (retryable)."""


class HostKeyRejected(TunnelError):
    """The router's host key did not match what is pinned."""


@dataclass(frozen=True)
class TunnelSpec:
    host: str
    port: int
    user: str
    identity_file: Path
    known_hosts: Path | None
    fingerprints: tuple[str, ...]
    name: str  # "" asks for a random name
    target_host: str
    target_port: int
    keepalive_interval_s: float
    connect_timeout_s: float
    transport: str = "ssh"  # "ssh" or "wss" (the run loop resolves "auto")
    wss_url: str = ""
    wss_headers: tuple[tuple[str, str], ...] = ()
    ca_file: Path | None = None
    # An OpenSSH certificate for the identity: presented instead of the bare key (read at
    # each connect, so a renewed one is used from the next connection on).
    certificate_file: Path | None = None
    # Which renewal of it was the newest when this spec was made (``_certificate.Renewer``):
    # a connection made with an older one swaps to a new connection.
    certificate_generation: int = 0
    # The address to connect to when it is not ``host`` (one of a name's DNS
    # addresses): the host key is still checked for ``host``.
    dial_host: str = ""
    # A pool member's id (``--pool``: one per listener process, the same on every
    # router); "" for a name of its own.
    pool_member: str = ""
    # A TLS passthrough tunnel (``-R NAME:443:...``): the target speaks TLS itself.
    tls_passthrough: bool = False


class _PinningClient(asyncssh.SSHClient):
    """Accepts a host key only if its fingerprint is pinned."""

    def __init__(self, fingerprints: tuple[str, ...]) -> None:
        self._fingerprints = fingerprints
        self.offered: str | None = None

    def validate_host_public_key(
        self, host: str, addr: str, port: int, key: asyncssh.SSHKey
    ) -> bool:
        self.offered = key.get_fingerprint("sha256")
        return self.offered in self._fingerprints


@dataclass(frozen=True)
class Forward:
    name: str
    url: str
    router_id: str | None = None  # the cluster router holding it (``tunnels --json``)


class TunnelSession:
    """One SSH connection holding one forward.

    Resource handling: use as ``async with``; leaving closes the connection.
    Error handling: ``open`` raises TunnelError (HostKeyRejected for a bad
    host key) for everything the network or router can do wrong.
    """

    def __init__(self, spec: TunnelSpec) -> None:
        self._spec = spec
        self._conn: asyncssh.SSHClientConnection | None = None
        self.granted: Forward | None = None
        self._pool_said = False  # the router heard HOSTMUX_POOL on a session

    def __repr__(self) -> str:
        return f"<TunnelSession {self._spec.host}:{self._spec.port} forward={self.granted}>"

    @property
    def spec(self) -> TunnelSpec:
        return self._spec

    async def __aenter__(self) -> TunnelSession:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection and wait until it is closed."""
        self.close()
        if self._conn is not None:
            await self._conn.wait_closed()

    async def open(self, name: str) -> Forward:
        """Connect, then ask for the forward of ``name`` ("" asks for a random one)."""
        await self.connect()
        return await self.forward(name)

    async def connect(self) -> None:
        """Connect and authenticate (host key checked); TunnelError if not."""
        spec = self._spec
        client = _PinningClient(spec.fingerprints)
        # Plain TCP: one socket write per loop turn, not one per SSH packet.
        tunnel, foreign_errors = _tunnel_for(spec)
        failures: tuple[type[BaseException], ...] = (
            asyncssh.Error, OSError, TimeoutError, *foreign_errors,
        )  # fmt: skip
        # Only when dialling one of a name's addresses: the key is checked for the name.
        alias: dict[str, str] = {"host_key_alias": spec.host} if spec.dial_host else {}
        client_keys = _client_keys(spec)
        try:
            self._conn = await asyncssh.connect(
                spec.dial_host or spec.host,
                spec.port,
                **alias,
                tunnel=tunnel,
                username=spec.user,
                client_factory=lambda: client,
                client_keys=client_keys,
                known_hosts=os.fspath(spec.known_hosts) if spec.known_hosts else (),
                agent_path=None,
                preferred_auth=["publickey"],
                encryption_algs=list(_CIPHERS),
                keepalive_interval=spec.keepalive_interval_s,
                keepalive_count_max=3,
                connect_timeout=spec.connect_timeout_s,
                login_timeout=spec.connect_timeout_s,
                request_pty=False,
            )
        except asyncssh.HostKeyNotVerifiable as exc:
            offered = f" (it offered {client.offered})" if client.offered else ""
            raise HostKeyRejected(f"the router's host key is not trusted{offered}: {exc}") from None
        except asyncssh.PermissionDenied:
            if spec.certificate_file is not None:
                raise TunnelError(
                    "the router refused our certificate (expired, or not from a CA it trusts?)"
                ) from None
            raise TunnelError(
                "the router refused our key (is it in its authorized_keys?)"
            ) from None
        except failures as exc:
            raise TunnelError(f"cannot connect ({spec.transport}): {describe(exc)}") from None

    async def forward(self, name: str) -> Forward:
        """Ask the connected router for the forward of ``name``; TunnelError if refused."""
        spec = self._spec
        assert self._conn is not None
        conn = self._conn
        # "tcp:PORT": a TCP tunnel (OpenSSH's -R tcp:PORT:...), port 0 for any.
        # Else a name: port 443 asks for TLS passthrough, 80 for HTTP (only a label).
        if name.startswith("tcp:"):
            host, port = "tcp", int(name[4:])
        else:
            host, port = name, 443 if spec.tls_passthrough else 80
        if spec.pool_member and not self._pool_said:
            await self._run_json("tunnels --json")  # says HOSTMUX_POOL before the forward
        try:
            await conn.forward_remote_port(host, port, spec.target_host, spec.target_port)
        except asyncssh.ChannelListenError:
            what = "port" if host == "tcp" else "name"
            raise TunnelError(f"the router refused the {what}: {await self._refusal()}") from None
        except (asyncssh.Error, OSError) as exc:
            raise TunnelError(f"forward failed: {describe(exc)}") from None
        tunnels = await self._tunnels()
        if not tunnels:
            raise TunnelError("the router granted the forward but lists no tunnel")
        first = tunnels[0]
        router = first.get("router")
        self.granted = Forward(
            name=str(first["name"]), url=str(first["url"]),
            router_id=router if isinstance(router, str) and router else None,
        )  # fmt: skip
        return self.granted

    async def router_id(self) -> str | None:
        """The id of the router this connection reached (None: no registry, or an older router).

        Asked before the forward, so learning it claims (and replaces) nothing.
        """
        router = (await self._run_json("tunnels --json")).get("router")
        return router if isinstance(router, str) and router else None

    async def router_ca(self) -> str:
        """The router's development CA certificate (PEM), from its ``ca`` command.

        Error handling: TunnelError when the router has none (a router serving
        certificates from files says so), says more than ``MAX_CA_BYTES``,
        does not answer within the connect timeout, or is an older router.
        """
        assert self._conn is not None
        try:
            async with asyncio.timeout(self._spec.connect_timeout_s):
                process = await self._conn.create_process("ca", encoding=None)
                try:
                    pem = await read_bounded(process.stdout, MAX_CA_BYTES)
                    refusal = await read_bounded(process.stderr, _MAX_REFUSAL_BYTES)
                    completed = await process.wait()
                finally:
                    process.close()
        except (asyncssh.Error, OSError, TimeoutError) as exc:
            raise TunnelError(f"the router did not answer 'ca': {describe(exc)}") from None
        if completed.exit_status != 0:
            why = refusal.decode("utf-8", "replace").strip() or f"exit {completed.exit_status}"
            raise TunnelError(f"the router has no CA to hand out: {why.splitlines()[0]}")
        try:
            return pem.decode("ascii")
        except UnicodeDecodeError:
            raise TunnelError("the router's 'ca' answer is not PEM") from None

    async def wait_closed(self) -> str:
        """Wait until the connection ends; returns why."""
        assert self._conn is not None
        await self._conn.wait_closed()
        return "connection closed"

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()

    async def _tunnels(self) -> list[dict[str, object]]:
        report = await self._run_json("tunnels --json")
        tunnels = report.get("tunnels", [])
        return tunnels if isinstance(tunnels, list) else []

    async def _refusal(self) -> str:
        try:
            report = await self._run_json("tunnels --json")
        except TunnelError:
            return "no reason given"
        refused = report.get("refused") or []
        if isinstance(refused, list) and refused:
            return str(refused[-1].get("reason", "no reason given"))
        return "no reason given"

    async def _run_json(self, command: str) -> dict[str, object]:
        assert self._conn is not None
        # A pool member says so on every session (the router reads it before a forward).
        member = self._spec.pool_member
        env = {"HOSTMUX_POOL": "1", "HOSTMUX_POOL_MEMBER": member} if member else {}
        try:
            result = await self._conn.run(
                command, check=True, timeout=self._spec.connect_timeout_s, env=env
            )
            report = json.loads(str(result.stdout))
        except (asyncssh.Error, OSError, TimeoutError, ValueError) as exc:
            raise TunnelError(f"the router did not answer {command!r}: {describe(exc)}") from None
        if not isinstance(report, dict):
            raise TunnelError(f"the router answered {command!r} with {type(report).__name__}")
        self._pool_said = bool(member)
        return report


def _client_keys(spec: TunnelSpec) -> list[Any]:
    """What the client authenticates with: the key file, or only its certificate.

    With a certificate, the bare key is not offered too (asyncssh would): a job whose
    certificate expired must not get its tunnel back through the key alone.
    """
    if spec.certificate_file is None:
        return [os.fspath(spec.identity_file)]
    try:
        pairs = asyncssh.load_keypairs(
            [(os.fspath(spec.identity_file), os.fspath(spec.certificate_file))]
        )
    except (OSError, ValueError, asyncssh.KeyImportError) as exc:
        raise TunnelError(f"certificate_file {spec.certificate_file}: {describe(exc)}") from None
    certified = [pair for pair in pairs if pair.get_algorithm().endswith("-cert-v01@openssh.com")]
    if not certified:
        raise TunnelError(f"certificate_file {spec.certificate_file}: not a certificate")
    return certified


def identity_problem(path: Path) -> str | None:
    """Why ``path`` cannot be the listener's SSH identity (one line), or None if it can."""
    try:
        asyncssh.read_private_key(os.fspath(path))
    except asyncssh.KeyImportError as exc:
        if "passphrase" in str(exc).lower():
            return (
                f"{path} is protected by a passphrase, and the listener runs unattended: "
                f"use a key without one (ssh-keygen -p -N '' -f {path} removes it)"
            )
        if path.suffix == ".pub":
            return f"{path} is a public key: give the private key (the file without .pub)"
        return f"{path} is not a private key ({exc})"
    except OSError as exc:
        return f"{path}: {exc.strerror or exc}"
    return None


class ByteReader(Protocol):
    """What ``read_bounded`` reads: an asyncssh ``SSHReader[bytes]``, say."""

    async def read(self, n: int = -1) -> bytes: ...


async def read_bounded(stream: ByteReader, limit: int) -> bytes:
    """All of ``stream`` up to EOF; TunnelError past ``limit`` bytes (nothing more is read)."""
    data = b""
    while chunk := await stream.read(limit + 1 - len(data)):
        data += chunk
        if len(data) > limit:
            raise TunnelError(f"the router's answer is over {limit} bytes")
    return data


def _tunnel_for(spec: TunnelSpec) -> tuple[object, tuple[type[Exception], ...]]:
    """What asyncssh connects through, and the errors of its own that it may raise.

    The WebSocket transport (and the websockets package, ~20 ms of imports) is
    loaded only when used: a listener's start-up is part of a tunnel's set-up time.
    """
    if spec.transport == "wss":
        from websockets.exceptions import InvalidHandshake, InvalidURI

        from hostmux.tunnel.websocket import WssConnector

        context = ssl.create_default_context(cafile=str(spec.ca_file) if spec.ca_file else None)
        connector = WssConnector(
            spec.wss_url, ssl_context=context, headers=dict(spec.wss_headers),
            open_timeout_s=spec.connect_timeout_s,
        )  # fmt: skip
        return connector, (InvalidHandshake, InvalidURI)
    proxy = proxy_for(spec.host)
    if proxy is not None:
        return HttpConnectTunnel(proxy), ()  # HTTPS-only egress: CONNECT, then SSH
    # Plain TCP: one socket write per loop turn, not one per SSH packet.
    return CoalescingConnector(), ()
