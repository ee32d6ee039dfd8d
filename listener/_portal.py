"""The listener and the portal: which routers exist, and where the URL goes.

1. ``GET <portal>/config.json`` lists the routers (``.router.ssh.servers[]``
   as ``host:port``) and the host keys to pin (``.router.ssh.host_keys[]``,
   OpenSSH public lines) — DIT4C's shape, plus the pins.
2. Before publishing, the run loop waits (for a while, see ``_url_check``)
   for the public URL to answer through the router.
3. ``PUT <uri-update-url>`` with the URL as ``text/plain`` and
   ``Authorization: Bearer <JWT>`` signed by the instance key (``iss``, ``kid``,
   five-minute expiry), retried with jittered back-off until accepted.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hostmux.log import fields

from ._reconnect import Backoff

if TYPE_CHECKING:
    import keys

# httpx and keys (the JWT stack) are imported where used: a plain tunnel never
# needs them, and they were ~60 ms of the listener's start-up.

log = logging.getLogger("hostmux.listener")

# config.json is tiny; a portal that answers more is not answering config.
_MAX_CONFIG_BYTES = 256 * 1024
# Each PUT to the portal gets this long.
_PUT_TIMEOUT_S = 10.0
# Signed URL updates are short-lived: a leaked token is soon useless.
JWT_LIFETIME_S = 300


class PortalError(Exception):
    """The portal could not be used; the message says why."""


@dataclass(frozen=True)
class RouterList:
    servers: tuple[str, ...]
    host_key_fingerprints: tuple[str, ...]


async def fetch_router_list(portal_url: str, *, timeout_s: float) -> RouterList:
    import httpx

    import keys
    from hostmux.http_client import HTTP_CALL_FAILURES, describe

    url = portal_url.rstrip("/") + "/config.json"
    try:
        async with httpx.AsyncClient(timeout=timeout_s) as client:
            response = await client.get(url)
    except HTTP_CALL_FAILURES as exc:
        raise PortalError(f"GET {url}: {describe(exc)}") from None
    if response.status_code != 200 or len(response.content) > _MAX_CONFIG_BYTES:
        raise PortalError(f"GET {url}: status {response.status_code}")
    try:
        ssh = response.json()["router"]["ssh"]
        servers = tuple(str(s) for s in ssh["servers"])
        pins = tuple(keys.fingerprint_of_public_line(line) for line in ssh.get("host_keys", []))
    except (ValueError, KeyError, TypeError, keys.KeysError) as exc:
        raise PortalError(f"GET {url}: not a usable config.json ({describe(exc)})") from None
    if not servers:
        raise PortalError(f"GET {url}: lists no routers")
    return RouterList(servers=servers, host_key_fingerprints=pins)


async def publish_url(
    url: str,
    *,
    update_url: str,
    key: keys.InstanceKey,
    issuer: str,
    kid: str | None,
    stop: asyncio.Event,
    checked: bool = True,
) -> bool:
    """PUT ``url`` to the portal until it is accepted (True) or ``stop`` is set (False).

    ``checked`` says whether the URL's self-check passed first (it is logged).
    """
    import httpx

    import keys
    from hostmux.http_client import HTTP_CALL_FAILURES, describe

    backoff = Backoff(base_s=0.5, cap_s=30.0)
    async with httpx.AsyncClient(timeout=_PUT_TIMEOUT_S) as client:
        while not stop.is_set():
            token = keys.sign_jwt(key, issuer=issuer, kid=kid, lifetime_s=JWT_LIFETIME_S)
            try:
                response = await client.put(
                    update_url,
                    content=url.encode(),
                    headers={
                        "authorization": f"Bearer {token}",
                        "content-type": "text/plain; charset=utf-8",
                    },
                )
            except HTTP_CALL_FAILURES as exc:
                reason = describe(exc)
            else:
                if 200 <= response.status_code < 300:
                    log.info(
                        fields(
                            "url_published", url=url, portal=update_url,
                            checked="yes" if checked else "no",
                        )
                    )  # fmt: skip
                    return True
                reason = f"status {response.status_code}: {response.text[:200]}"
            delay = backoff.next_delay()
            log.warning(fields("url_publish_failed", reason=reason, retry_s=round(delay, 2)))
            try:
                async with asyncio.timeout(delay):
                    await stop.wait()
            except TimeoutError:
                pass
    return False
