"""Plain SSH through an HTTP proxy: ``CONNECT host:port`` first, then SSH on the same stream.

Used when ``HTTPS_PROXY`` (or ``https_proxy``) applies to the router's SSH
address (``NO_PROXY`` respected, as urllib reads them); ``user:password@`` in
the proxy URL becomes ``Proxy-Authorization: Basic``. The proxy's answer is
parsed by h11; bytes that arrive right behind it (the SSH server speaks first)
are handed to SSH, not lost.
"""

from __future__ import annotations

import asyncio
import base64
import os
import sys
from collections.abc import Callable
from typing import Any, cast
from urllib.parse import unquote, urlsplit

# h11 and urllib.request (~25 ms of imports) are loaded only when a proxy is in
# play: every plain listener asks ``proxy_for`` before its first dial.

# The proxy has this long to say whether it connected us.
CONNECT_TIMEOUT_S = 15.0


class ProxyError(OSError):
    """The proxy refused or failed the CONNECT; the message says how."""


def proxy_for(host: str) -> str | None:
    """The HTTP proxy URL to reach ``host`` through, or None (no proxy or NO_PROXY)."""
    if not _may_have_proxy():
        return None
    import urllib.request  # only when a proxy variable is set (see the note at the top)

    proxies = urllib.request.getproxies()
    url = proxies.get("https") or proxies.get("all")
    if not url or urllib.request.proxy_bypass(host):
        return None
    return url


def _may_have_proxy() -> bool:
    """False when urllib would find no proxy: on Linux (and other Unixes but macOS) it
    reads only ``*_proxy`` environment variables; macOS and Windows have system settings."""
    if sys.platform in ("darwin", "win32"):
        return True
    return any(name.lower().endswith("_proxy") for name in os.environ)


class _ConnectProtocol(asyncio.Protocol):
    """Speaks CONNECT, then becomes a pass-through to the SSH protocol."""

    def __init__(self, request: bytes, ssh_factory: Callable[[], Any]) -> None:
        self._request = request
        self._factory = ssh_factory
        import h11  # only behind a proxy (see the note at the top)

        self._h11 = h11.Connection(h11.CLIENT)
        self.ssh: Any = None
        self.connected: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self._transport = cast(asyncio.Transport, transport)
        self._transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        if self.ssh is not None:
            self.ssh.data_received(data)
            return
        import h11  # only behind a proxy (see the note at the top)

        self._h11.receive_data(data)
        try:
            event = self._h11.next_event()
        except h11.RemoteProtocolError as exc:
            self._fail(f"the proxy's answer is not HTTP ({exc})")
            return
        if event is h11.NEED_DATA:
            return
        if not isinstance(event, h11.Response):
            self._fail("the proxy closed the connection")
            return
        if event.status_code != 200:
            self._fail(f"the proxy refused CONNECT: HTTP {event.status_code}")
            return
        rest, _ = self._h11.trailing_data
        assert self._transport is not None
        self.ssh = self._factory()
        self.ssh.connection_made(self._transport)
        if not self.connected.done():
            self.connected.set_result(None)
        if rest:
            self.ssh.data_received(bytes(rest))

    def _fail(self, reason: str) -> None:
        if not self.connected.done():
            self.connected.set_exception(ProxyError(reason))
        if self._transport is not None:
            self._transport.close()

    def eof_received(self) -> bool | None:
        if self.ssh is not None:
            return bool(self.ssh.eof_received())
        self._fail("the proxy closed the connection")
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.ssh is not None:
            self.ssh.connection_lost(exc)
        else:
            self._fail("the proxy closed the connection")

    def pause_writing(self) -> None:
        if self.ssh is not None:
            self.ssh.pause_writing()

    def resume_writing(self) -> None:
        if self.ssh is not None:
            self.ssh.resume_writing()


class HttpConnectTunnel:
    """``asyncssh.connect(host, port, tunnel=HttpConnectTunnel(proxy_url))``."""

    def __init__(self, proxy_url: str) -> None:
        self._url = proxy_url

    def __repr__(self) -> str:
        parts = urlsplit(self._url)
        return f"<HttpConnectTunnel {parts.hostname}:{parts.port}>"

    async def create_connection(
        self, factory: Callable[[], Any], host: str, port: int, **_: object
    ) -> tuple[asyncio.Transport, Any]:
        parts = urlsplit(self._url)
        if parts.scheme != "http" or not parts.hostname:
            raise ProxyError(f"unsupported proxy URL {self._url!r} (http://[user:pass@]host:port)")
        target = f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"
        headers = [("Host", target)]
        if parts.username is not None:
            credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            token = base64.b64encode(credentials.encode()).decode()
            headers.append(("Proxy-Authorization", f"Basic {token}"))
        import h11  # only behind a proxy (see the note at the top)

        client = h11.Connection(h11.CLIENT)
        request = client.send(h11.Request(method="CONNECT", target=target, headers=headers))
        loop = asyncio.get_running_loop()
        protocol = _ConnectProtocol(request, factory)
        transport, _protocol = await loop.create_connection(
            lambda: protocol, parts.hostname, parts.port or 3128
        )
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                await protocol.connected
        except BaseException:
            transport.close()
            raise
        return transport, protocol.ssh
