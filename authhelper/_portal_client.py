"""What the helper asks the portal besides the login itself (httpx).

* ``GET {portal}/instances/{id}/url`` — the instance's published URL, the one
  the portal registered the redirect URI from (when ``public_url`` is not set);
* ``GET {portal}/instances/{id}/access`` with a session's grant — is its user
  still allowed? (``_access`` asks this every ``access_recheck_s``);
* ``GET {portal}/.well-known/jwks.json`` — the portal's public signing keys,
  which verify the revocations it pushes (``_revoke``).

Every call is bounded by ``PORTAL_TIMEOUT_S`` and by the size of what it reads.
Errors: ``PortalUnreachable`` for a portal that did not give a usable answer;
its message is safe to show.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import httpx

from hostmux.http_client import HTTP_CALL_FAILURES, AnswerTooLarge, describe, read_bounded

from ._oauth import PORTAL_TIMEOUT_S

# A URL, an access answer or a JWKS is a few hundred bytes; more is not one.
_MAX_ANSWER_BYTES = 64 * 1024
# The published URL changes only when the instance moves to another router domain.
URL_CACHE_S = 60.0
# An unknown kid refetches the JWKS at most this often (a forged kid cannot make a storm).
JWKS_REFETCH_S = 30.0


class PortalUnreachable(Exception):
    """The portal did not give a usable answer; the message says why."""


@dataclass(frozen=True)
class AccessAnswer:
    allowed: bool  # False also when the portal no longer knows the grant (logged out)


class PortalClient:
    """One httpx client for the helper's calls to its portal.

    Resource handling: the client is opened on first use and closed by ``aclose``.
    """

    def __init__(
        self, portal_url: str, instance_id: str, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._portal = portal_url.rstrip("/")
        self._instance = instance_id
        self._clock = clock
        self._client: httpx.AsyncClient | None = None
        self._url: tuple[str, float] | None = None
        self._jwks: tuple[list[dict[str, object]], float] | None = None

    def __repr__(self) -> str:
        return f"<PortalClient {self._portal} instance={self._instance}>"

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    async def published_url(self) -> str:
        """The URL the portal holds for this instance (cached for ``URL_CACHE_S``)."""
        if self._url is not None and self._clock() - self._url[1] < URL_CACHE_S:
            return self._url[0]
        status, body = await self._get(f"/instances/{self._instance}/url", {})
        url = body.decode("utf-8", "replace").strip()
        if status == 404:
            raise PortalUnreachable("the portal has no URL for this instance yet")
        if status != 200 or not url.startswith(("https://", "http://")):
            raise PortalUnreachable(f"the portal answered {status} for this instance's URL")
        self._url = (url, self._clock())
        return url

    async def access(self, grant: str) -> AccessAnswer:
        """The portal's current decision for the user of ``grant``."""
        status, body = await self._get(
            f"/instances/{self._instance}/access", {"authorization": f"Bearer {grant}"}
        )
        if status in (401, 403, 404):  # grant revoked or expired, instance gone
            return AccessAnswer(allowed=False)
        if status != 200:
            raise PortalUnreachable(f"the portal answered {status} to the access check")
        try:
            return AccessAnswer(allowed=_json_object(body)["allowed"] is True)
        except (ValueError, KeyError):
            raise PortalUnreachable("the portal's access answer is not usable") from None

    async def jwks(self, *, refresh: bool = False) -> list[dict[str, object]]:
        """The portal's signing keys (refetched on ``refresh``, at most every 30 s)."""
        cached = self._jwks
        if cached is not None and not (refresh and self._clock() - cached[1] >= JWKS_REFETCH_S):
            return cached[0]
        status, body = await self._get("/.well-known/jwks.json", {})
        try:
            found = _json_object(body)["keys"] if status == 200 else None
        except (ValueError, KeyError):
            found = None
        if not isinstance(found, list) or not all(isinstance(k, dict) for k in found):
            raise PortalUnreachable(f"the portal's JWKS is not usable (status {status})")
        self._jwks = (found, self._clock())
        return found

    async def _get(self, path: str, headers: Mapping[str, str]) -> tuple[int, bytes]:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=PORTAL_TIMEOUT_S, follow_redirects=False)
        url = self._portal + path
        try:
            async with self._client.stream("GET", url, headers=dict(headers)) as response:
                try:
                    body = await read_bounded(response, _MAX_ANSWER_BYTES)
                except AnswerTooLarge:
                    raise PortalUnreachable(f"GET {path}: the answer is too large") from None
        except HTTP_CALL_FAILURES as exc:
            raise PortalUnreachable(f"the portal could not be reached ({describe(exc)})") from None
        return response.status_code, body


def _json_object(body: bytes) -> dict[str, object]:
    value = json.loads(body)
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value
