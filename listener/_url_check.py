"""Does the public URL answer through the router? Advice for the operator, never a verdict.

The router accepted the forward, so the tunnel works whatever this check
says: a pod may be unable to reach its own public URL (hairpin NAT, egress
rules) or may not trust the router's certificate, while browsers can. So:

* the check runs beside the held tunnel and never closes it;
* a failure is logged once per distinct reason per tunnel (a warning with a
  hint saying what to change), then re-checked with capped back-off until it
  passes (``url_checked``, once) or the tunnel ends;
* ``*.localhost`` names are reached at the router's own address (RFC 6761:
  loopback names that no resolver is required to know), with SNI and Host set.

What to trust: ``--router-ca-file`` alone when given; otherwise the system's
store plus the CA the router handed out over the authenticated SSH connection
(its ``ca`` command), when it has one.

``UrlProblem`` and ``FailureNotes`` are pure; ``check_public_url`` does one
round of probes and ``watch_public_url`` loops over it.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from hostmux.log import fields

from ._reconnect import Backoff

log = logging.getLogger("hostmux.listener")

# Each probe of the public URL gets this long; the router answers at once.
_PROBE_TIMEOUT_S = 10.0
# The route can be a moment behind the granted forward (the router answers
# with its error marker meanwhile): that answer alone is probed again soon.
_ROUTE_ATTEMPTS = 5
# Distinct failures noted per tunnel: a reason whose text keeps changing
# must not turn the back-off into a log flood.
_MAX_NOTED_REASONS = 16
# The first re-check comes after about this long, then doubles up to the cap.
_RECHECK_BASE_S = 1.0

# What to change when the certificate is not trusted, per source of trust.
CERTIFICATE_HINTS = {
    "system": (
        "trust the router's CA with --router-ca-file, or pin its host key so the listener "
        "fetches it (the router's ca command); browsers may still trust it"
    ),
    "file": "--router-ca-file does not hold the CA that signed the router's certificate",
    "router": "the router's certificate is signed by neither the CA it hands out nor a system CA",
}
# What to change, per kind of failure (the log line's ``hint=``).
HINTS = {
    "tls": "the TLS handshake with the router failed; check the router's certificate setup",
    "connect": (
        "this pod cannot reach its own public URL (hairpin NAT, egress rules?); "
        "browsers elsewhere may still reach it"
    ),
    "timeout": (
        "no answer from the public URL in time (egress rules, hairpin NAT?); "
        "browsers elsewhere may still reach it"
    ),
    "router": "the router does not route this URL to this tunnel yet",
    "http": "the public URL did not answer HTTP as expected",
}


@dataclass(frozen=True)
class UrlProblem:
    """Why one check did not pass: a kind (which hint applies) and the detail."""

    kind: str
    reason: str

    def hint(self, trusted: str) -> str:
        """What to change; ``trusted`` is where the CAs came from: system, file or router."""
        if self.kind == "certificate":
            return CERTIFICATE_HINTS[trusted]
        return HINTS[self.kind]


@dataclass
class FailureNotes:
    """Which failures were already logged for one tunnel: each distinct one only once."""

    noted: set[UrlProblem] = field(default_factory=set)

    def is_new(self, problem: UrlProblem) -> bool:
        """True the first time ``problem`` is seen (and while fewer than the limit were)."""
        if problem in self.noted or len(self.noted) >= _MAX_NOTED_REASONS:
            return False
        self.noted.add(problem)
        return True


@dataclass(frozen=True)
class Trust:
    """The CAs the check trusts, and where they came from (system, file or router)."""

    context: ssl.SSLContext
    source: str


def trust_for_check(ca_file: Path | None, ca_pem: str | None) -> Trust:
    """``ca_file`` alone, else the system's CAs plus ``ca_pem`` (the router's).

    Raises ``ssl.SSLError`` (or ``OSError``) when ``ca_pem``/``ca_file`` hold no certificate.
    """
    if ca_file is not None:
        return Trust(ssl.create_default_context(cafile=str(ca_file)), "file")
    context = ssl.create_default_context()
    if ca_pem is None:
        return Trust(context, "system")
    context.load_verify_locations(cadata=ca_pem)
    return Trust(context, "router")


async def prepare_trust(ca_file: Path | None, ca_pem: str | None) -> Trust:
    """``trust_for_check`` in a worker thread, with the check's HTTP stack imported there too.

    Both are CPU work (~20 ms for the system's CAs, ~70 ms to import httpx) that
    would otherwise hold the event loop just as the fresh tunnel carries its
    first requests; in a thread the loop keeps its turns (the GIL switches
    every 5 ms). Raises as ``trust_for_check`` does.
    """
    return await asyncio.to_thread(_import_http_client_and_trust, ca_file, ca_pem)


def _import_http_client_and_trust(ca_file: Path | None, ca_pem: str | None) -> Trust:
    import httpx  # noqa: F401 - imported here, off the event loop (see prepare_trust)

    import hostmux.http_client  # noqa: F401

    return trust_for_check(ca_file, ca_pem)


def problem_of(exc: BaseException) -> UrlProblem:
    """An httpx failure as a problem kind (certificate, tls, timeout, connect, http)."""
    import httpx

    from hostmux.http_client import describe

    if isinstance(exc, AttributeError):  # uvloop + anyio: a reset (router/_http_client.py)
        return UrlProblem("connect", describe(exc))
    reason = describe(exc)
    cause: BaseException | None = exc
    while cause is not None:  # httpx wraps ssl's error in ConnectError
        if isinstance(cause, ssl.SSLCertVerificationError):
            return UrlProblem("certificate", reason)
        if isinstance(cause, ssl.SSLError):
            return UrlProblem("tls", reason)
        cause = cause.__cause__ or cause.__context__
    if isinstance(exc, httpx.TimeoutException):
        return UrlProblem("timeout", reason)
    if isinstance(exc, httpx.ConnectError | httpx.NetworkError | OSError):
        return UrlProblem("connect", reason)
    return UrlProblem("http", reason)


async def check_public_url(url: str, *, router_host: str, trust: Trust) -> UrlProblem | None:
    """None if ``url`` answers through the router (no ``X-Hostmux-Error`` marker), else why not."""
    import httpx

    from hostmux.http_client import HTTP_CALL_FAILURES

    parts = urlsplit(url)
    host = parts.hostname or ""
    target = url
    extensions: dict[str, object] = {}
    if host == "localhost" or host.endswith(".localhost"):
        netloc = f"{router_host}:{parts.port}" if parts.port else router_host
        target = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
        if parts.scheme == "https":
            extensions["sni_hostname"] = host
    problem = UrlProblem("router", "no attempt")
    async with httpx.AsyncClient(verify=trust.context, timeout=_PROBE_TIMEOUT_S) as client:
        for attempt in range(_ROUTE_ATTEMPTS):
            try:
                response = await client.get(
                    target, headers={"host": parts.netloc}, extensions=extensions
                )
            except HTTP_CALL_FAILURES as exc:
                return problem_of(exc)  # not a route a moment behind: the caller backs off
            marker = response.headers.get("x-hostmux-error")
            if marker is None:
                return None
            problem = UrlProblem("router", f"the router answered {marker}")
            await asyncio.sleep(0.2 * (attempt + 1))  # the route may be a moment behind
    return problem


async def watch_public_url(
    url: str, *, router_host: str, trust: Trust, backoff_max_s: float
) -> None:
    """Check ``url`` until it passes; return then. Never ends the tunnel.

    Resource handling: one short-lived HTTP client per round; the caller
    cancels this task when the tunnel ends.
    Error handling: every failure is logged (once per distinct reason, with a
    hint) and checked again after a jittered back-off capped at ``backoff_max_s``.
    """
    notes = FailureNotes()
    backoff = Backoff(base_s=_RECHECK_BASE_S, cap_s=backoff_max_s)
    while True:
        problem = await check_public_url(url, router_host=router_host, trust=trust)
        if problem is None:
            log.info(fields("url_checked", url=url))
            return
        delay = backoff.next_delay()
        if notes.is_new(problem):
            log.warning(
                fields(
                    "url_check_failed", url=url, kind=problem.kind, reason=problem.reason,
                    hint=problem.hint(trust.source), tunnel="kept", recheck="with back-off",
                )
            )  # fmt: skip
        else:
            log.debug(fields("url_check_again", url=url, kind=problem.kind))
        await asyncio.sleep(delay)
