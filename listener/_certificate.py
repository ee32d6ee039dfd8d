"""The listener's portal certificate: when to renew it, and asking the portal for a new one.

A portal that binds an instance's route to its job's lifetime gives the pod an
OpenSSH user certificate (``certificate_file``) instead of listing its key; the
router closes the tunnel when the certificate's ``valid_before`` passes. When the
portal allows it, the listener renews before that:

1. When 2/3 of the time the certificate had left when the listener read it has
   passed (``RENEW_AT``): early enough for a slow portal and a few retries, late
   enough that a portal handing out short certificates is not asked constantly.
2. ``POST <certificate_url>`` with ``Authorization: Bearer <JWT>`` signed by the
   instance key (``iss``, ``kid``, five-minute expiry, as for the URL) and
   ``{"public_key": "<its OpenSSH public key>"}``; the portal answers 200
   ``{"certificate": "<line>"}``.
3. Any other 4xx is final: the portal will not renew (the job is ending), so the
   tunnel ends at expiry; it is logged, not retried for this certificate. A
   timeout, a failed connection or a 5xx is retried with back-off until expiry.
4. A new certificate must be one for the same principals that ends later; it is
   written beside the old file and renamed over it, so a reconnect never reads
   half a certificate. The run loop (``_run``) then opens a second connection
   with it and only then lets the old one go (no gap).
5. One renewal per certificate for the whole process (``Renewer``), however
   many connections present it (``ha_connections``): each renewal written
   starts a new *generation*, and every connection made with an older one
   swaps to a new connection (``_run``, ``_ha``). A certificate found expired
   before a reconnect is renewed first, once for all the connections that find
   it so (the portal authenticates the instance key, not the certificate).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from hostmux.log import fields

from ._reconnect import Backoff, unless_stopped

if TYPE_CHECKING:
    import keys

log = logging.getLogger("hostmux.listener")

# Renew when this fraction of the time left at reading has passed (rule 1).
RENEW_AT = 2 / 3
# Each POST to the portal gets this long.
_REQUEST_TIMEOUT_S = 10.0
# A certificate line is a few KiB at most (an RSA key's is ~2 KiB).
_MAX_ANSWER_BYTES = 64 * 1024
# Signed renewal requests are short-lived, as the URL updates are.
_JWT_LIFETIME_S = 300
# An expired certificate found before a reconnect: how long its renewal may keep trying
# (the reconnect waits for it; the next reconnect tries again).
EXPIRED_RENEWAL_S = 30.0
# A certificate file that cannot be read is read again after this long (or at a renewal).
UNREADABLE_RETRY_S = 60.0


class CertificateError(Exception):
    """The certificate file cannot be used; the message says why."""


class RenewalRefused(Exception):
    """The portal will not renew this certificate (a final 4xx); the message says why."""


class RenewalFailed(Exception):
    """This renewal attempt failed in a way worth retrying (rule 3); the message says why."""


def read_validity(path: Path) -> keys.CertificateValidity:
    """The validity of the certificate in ``path``; CertificateError if it is not one."""
    import keys

    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise CertificateError(f"{path}: cannot read ({exc})") from None
    try:
        return keys.certificate_validity(text.strip())
    except keys.KeysError as exc:
        raise CertificateError(f"{path}: {exc}") from None


def renew_time(validity: keys.CertificateValidity, now: float) -> float | None:
    """When to renew (Unix time; rule 1), or None for a certificate that never expires."""
    if validity.valid_before is None:
        return None
    return now + max(0.0, validity.valid_before - now) * RENEW_AT


def write_certificate(path: Path, line: str) -> None:
    """Replace ``path`` with ``line`` at once (rule 4): a reader sees the old or the new."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.new")
    temporary.write_text(line.strip() + "\n", encoding="ascii")
    os.replace(temporary, path)


async def request_certificate(
    url: str, *, key: keys.InstanceKey, issuer: str, kid: str | None
) -> str:
    """One request for a new certificate (rule 2); the certificate line.

    Raises RenewalRefused for a final answer (rule 3), RenewalFailed for one to retry.
    """
    import httpx

    import keys
    from hostmux.http_client import HTTP_CALL_FAILURES, describe, read_bounded

    token = keys.sign_jwt(key, issuer=issuer, kid=kid, lifetime_s=_JWT_LIFETIME_S)
    headers = {"authorization": f"Bearer {token}", "accept": "application/json"}
    try:
        async with httpx.AsyncClient(timeout=_REQUEST_TIMEOUT_S) as client:
            async with asyncio.timeout(_REQUEST_TIMEOUT_S):
                async with client.stream(
                    "POST", url, json={"public_key": key.public_openssh()}, headers=headers
                ) as response:
                    body = await read_bounded(response, _MAX_ANSWER_BYTES)
    except HTTP_CALL_FAILURES as exc:
        raise RenewalFailed(describe(exc)) from None
    status = response.status_code
    said = body[:200].decode("utf-8", "replace")
    if status >= 500:
        raise RenewalFailed(f"status {status}: {said}")
    if status != 200:
        raise RenewalRefused(f"status {status}: {said}")
    try:
        line = json.loads(body)["certificate"]
        if not isinstance(line, str):
            raise TypeError("not a string")
    except (ValueError, KeyError, TypeError):
        raise RenewalFailed("the portal's answer has no certificate") from None
    return line


async def renew(
    path: Path,
    url: str,
    *,
    key: keys.InstanceKey,
    issuer: str,
    kid: str | None,
    stop: asyncio.Event,
    give_up_at: float | None = None,
) -> bool:
    """Renew the certificate in ``path`` now (rules 2-4); True once the new one is written.

    Failures worth retrying are retried until ``give_up_at`` (Unix time; by
    default the certificate's expiry). False when the portal refused (logged),
    that time passed, the file cannot be read, or ``stop`` was set.
    """
    import keys

    try:
        current = read_validity(path)
    except CertificateError as exc:
        log.warning(fields("certificate_unreadable", reason=str(exc), renewed="no"))
        return False
    if give_up_at is None:
        give_up_at = current.valid_before
    backoff = Backoff(base_s=0.5, cap_s=30.0)
    while not stop.is_set():
        if give_up_at is not None and time.time() >= give_up_at:
            log.warning(fields("certificate_expired", file=str(path), renewed="no"))
            return False
        try:
            line = await request_certificate(url, key=key, issuer=issuer, kid=kid)
            renewed = keys.certificate_validity(line)
            if renewed.principals != current.principals or not _later(renewed, current):
                raise RenewalFailed("the portal's certificate is not a later one for us")
        except RenewalRefused as exc:
            log.warning(
                fields("certificate_renewal_refused", url=url, reason=str(exc),
                       expires=current.valid_before)
            )  # fmt: skip
            return False
        except (RenewalFailed, keys.KeysError) as exc:
            delay = backoff.next_delay()
            log.warning(
                fields("certificate_renewal_failed", url=url, reason=str(exc),
                       retry_s=round(delay, 2))
            )  # fmt: skip
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await stop.wait()
            continue
        write_certificate(path, line)
        log.info(
            fields("certificate_renewed", file=str(path), key_id=renewed.key_id,
                   expires=renewed.valid_before)
        )  # fmt: skip
        return True
    return False


class Renewer:
    """One renewal at a time for the listener process, and which certificate is newest (rule 5).

    ``run`` renews the file at rule 1's time, again after each renewal; every
    renewal written (also by ``renew_if_expired``) bumps ``generation``, and
    ``newer_than`` wakes the connections made with an older one. After a refusal
    (or a renewal that ran out of time) it waits until a reconnect's
    ``renew_if_expired`` renews: the portal's answer was final for that certificate.

    Resource handling: ``run`` is one task, ended by ``stop``. Error handling: every
    failure is logged (by ``renew``) and the tunnels serve on until expiry.
    """

    def __init__(
        self, path: Path, renew: Callable[[float | None], Awaitable[bool]], stop: asyncio.Event
    ) -> None:
        self._path = path
        self._renew = renew  # renew(give_up_at): ``renew`` with the listener's key and URL
        self._stop = stop
        self._lock = asyncio.Lock()  # one renewal at a time
        self._renewed = asyncio.Event()  # set at the next renewal (a fresh one after it)
        self.generation = 0

    def __repr__(self) -> str:
        return f"<Renewer {self._path} generation={self.generation}>"

    async def run(self) -> None:
        while not self._stop.is_set():
            seen = self.generation
            try:
                at = renew_time(read_validity(self._path), time.time())
            except CertificateError as exc:
                log.warning(
                    fields("certificate_unreadable", reason=str(exc), retry_s=UNREADABLE_RETRY_S)
                )
                await self._wait(seen, time.time() + UNREADABLE_RETRY_S)
                continue
            if at is None:  # valid for ever: nothing to renew unless another one is written
                await self._wait(seen, None)
                continue
            if await self._wait(seen, at) or self._stop.is_set():
                continue  # renewed meanwhile (a reconnect's renewal): time the new one
            async with self._lock:
                renewed = self.generation == seen and await self._renew(None)
                if renewed:
                    self._bump()
            if not renewed:
                await self._wait(seen, None)

    async def renew_if_expired(self) -> None:
        """Before a reconnect: renew a certificate that has expired (once, for every caller)."""
        async with self._lock:
            try:
                validity = read_validity(self._path)
            except CertificateError:
                return  # the connection says why it cannot use it
            if validity.valid_before is None or time.time() < validity.valid_before:
                return
            if await self._renew(time.time() + EXPIRED_RENEWAL_S):
                self._bump()

    async def newer_than(self, generation: int) -> bool:
        """Wait until a certificate newer than ``generation`` is written: True; False at stop."""
        while self.generation <= generation:
            if await unless_stopped(self._renewed.wait(), self._stop) is None:
                return False
        return True

    def _bump(self) -> None:
        self.generation += 1
        self._renewed.set()
        self._renewed = asyncio.Event()

    async def _wait(self, seen: int, until: float | None) -> bool:
        """Until ``until`` (Unix time; None: no limit), a renewal or stop: True if renewed."""
        with contextlib.suppress(TimeoutError):
            timeout = None if until is None else max(0.0, until - time.time())
            async with asyncio.timeout(timeout):
                await self.newer_than(seen)
        return self.generation != seen


def _later(renewed: keys.CertificateValidity, current: keys.CertificateValidity) -> bool:
    if renewed.valid_before is None:
        return True
    return current.valid_before is not None and renewed.valid_before > current.valid_before
