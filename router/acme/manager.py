"""The order and renewal loop: one certificate for the router's domain from an ACME CA.

Rules:

1. Which names: with ``dns-01`` the domain and its wildcard (``DOMAIN``,
   ``*.DOMAIN``: the tunnels' names too); with ``http-01`` the bare domain (a
   CA never issues a wildcard over HTTP-01).
2. At start the stored certificate (``state_dir/acme/certs``) is served at once
   when it loads; the loop orders a new one when there is none, when its names
   are not the configured ones, and at two thirds of its lifetime, less a
   jitter of up to a thirtieth of it (fixed per certificate, so that routers
   started together do not all renew at the same second).
3. A failed order (the CA, the DNS server, a hook, a timeout) is logged with
   why and retried after a back-off that doubles from ``RETRY_FIRST_S`` to
   ``RETRY_MAX_S``; the certificate in use keeps serving meanwhile, and
   ``status`` says what readiness should (``AcmeStatus.problem``/``degraded``).
4. A new certificate is written to disk, loaded with the code that loads
   ``tls_cert_dir`` (``router.tls.load_certificates``) and swapped in with
   ``FrontDoorTls.replace_acme``, as a SIGHUP swaps the operator's files: new
   handshakes get it, connections already made keep theirs.
5. One log line per step: ``acme_account_registered``, ``acme_order_created``,
   ``acme_challenge_published``, ``acme_challenge_valid``, ``acme_certificate_installed``,
   ``acme_renewal_scheduled``, ``acme_failed`` (with ``retry_in_s``).
6. With a registry (a cluster, and always with workers) every process runs
   ``run_shared``: it serves the registry's certificate when it changes, copies
   the pending challenge answers from the registry into its own tables every
   ``SHARE_POLL_S`` (so whichever router the CA reaches answers), and orders
   only while holding the registry's lock (``router.registry.acme_share``),
   renewed while it orders; the one ordering puts its answers there, waits
   ``SHARE_WAIT_S`` before asking the CA to validate, and stores the new
   certificate there for the others.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import aioacme
import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from joserfc.jwk import ECKey

from hostmux.config.layered import ConfigError
from hostmux.log import fields
from router.acme.challenges import HttpChallenges
from router.acme.dns import DnsChallenge, DnsUpdateError
from router.acme.store import AcmeStore, StoredCertificate, utc_now
from router.acme.tls_alpn import TlsAlpnChallenges
from router.registry.model import RegistryError
from router.tls import FrontDoorTls, load_certificates

if TYPE_CHECKING:
    from router.registry.acme_share import AcmeShare

log = logging.getLogger("hostmux.acme")

# Reason: a first retry soon catches a passing fault (a DNS server restarting); doubling
# to an hour keeps a CA that refuses us from being asked more than once an hour, well
# within Let's Encrypt's limits, and leaves days of retries before a 90-day certificate
# renewed at 60 days runs out.
RETRY_FIRST_S = 60.0
RETRY_MAX_S = 3600.0
# Reason: a CA validates in seconds (Let's Encrypt: under 10 s); past this an order is
# abandoned as failed and retried by the back-off, rather than polled for ever.
VALIDATION_TIMEOUT_S = 300.0
POLL_INTERVAL_S = 2.0
# The loop looks at the clock again at least this often (a suspended VM, a clock step).
MAX_SLEEP_S = 6 * 3600.0
# Reason: with a registry, how often a router looks there for pending challenge answers
# and the cluster's certificate (two small HGETALLs); the one ordering waits twice this
# after publishing an answer before telling the CA to validate, so every router has it.
SHARE_POLL_S = 1.0
SHARE_WAIT_S = 2 * SHARE_POLL_S + 0.5
# Reason: the order lock outlives a stalled router by at most this; renewed every third.
LOCK_TTL_S = 30.0
# Pending answers in the registry expire after this even if the orderer dies mid-order.
CHALLENGE_TTL_S = VALIDATION_TIMEOUT_S * 2
RENEW_AT_FRACTION = 2 / 3
JITTER_FRACTION = 1 / 30
# What of the CA's or a hook's error text goes into a log line.
_REASON_CHARS = 500


class AcmeFailure(Exception):
    """An order that cannot go on; the message says why."""


@dataclass
class AcmeStatus:
    """What the readiness endpoint asks (issue 19 point 2): is there a certificate in use,
    and is renewal working."""

    names: tuple[str, ...]
    not_after: datetime | None = None
    renew_at: datetime | None = None
    failures: int = 0
    last_error: str | None = None
    next_attempt: datetime | None = None

    def problem(self, now: datetime | None = None) -> str | None:
        """One line when this router has no valid ACME certificate (not ready), else None."""
        now = now or utc_now()
        if self.not_after is None:
            why = f": {self.last_error}" if self.last_error else " (ordering)"
            return f"no ACME certificate for {self.names[0]} yet{why}"
        if now >= self.not_after:
            return f"the ACME certificate for {self.names[0]} expired at {self.not_after:%FT%TZ}"
        return None

    def degraded(self) -> str | None:
        """One line while renewals fail but a valid certificate still serves, else None."""
        if self.failures == 0:
            return None
        return f"ACME renewal failing ({self.failures} tries): {self.last_error}"


class AcmeManager:
    """Orders, stores, installs and renews the domain's certificate (the module's rules)."""

    def __init__(
        self,
        *,
        directory_url: str,
        email: str,
        challenge: str,
        domain: str,
        store: AcmeStore,
        tls: FrontDoorTls,
        server_trust: ssl.SSLContext | bool = True,
        dns: DnsChallenge | None = None,
        http: HttpChallenges | None = None,
        alpn: TlsAlpnChallenges | None = None,
        share: AcmeShare | None = None,
    ) -> None:
        if challenge == "dns-01":
            assert dns is not None
            names: tuple[str, ...] = (domain, f"*.{domain}")
        else:
            assert http is not None or alpn is not None
            names = (domain,)
        self._directory_url = directory_url
        self._email = email
        self._challenge = aioacme.ChallengeType(challenge)
        self._domain = domain
        self._store = store
        self._tls = tls
        self._trust = server_trust
        self._dns = dns
        self._http = http
        self._alpn = alpn
        self._share = share
        # Answers this router copied from the registry: field -> key authorization.
        self._mirrored: dict[tuple[str, str], str] = {}
        self.status = AcmeStatus(names)
        self._current: StoredCertificate | None = None  # the one being served
        # Called after each certificate is installed (tests, and metrics later).
        self.on_installed: list[Callable[[StoredCertificate], None]] = []

    def __repr__(self) -> str:
        return f"<AcmeManager {','.join(self.status.names)} via {self._challenge.value}>"

    @property
    def tls_alpn(self) -> TlsAlpnChallenges | None:
        """TLS-ALPN-01's pending challenges (the HTTPS listener asks), else None."""
        return self._alpn

    @property
    def names(self) -> tuple[str, ...]:
        return self.status.names

    def install_stored(self) -> StoredCertificate | None:
        """Serve the stored certificate, when there is one that loads and fits."""
        stored = self._store.certificate(self._domain)
        if stored is None:
            return None
        if set(stored.names) != set(self.names):
            log.info(
                fields(
                    "acme_certificate_stale", names=",".join(stored.names),
                    wanted=",".join(self.names), action="ordering a new one",
                )
            )  # fmt: skip
            return None
        try:
            self._tls.replace_acme(
                load_certificates(None, None, self._store.cert_dir), self._domain
            )
        except ConfigError as exc:
            log.warning(fields("acme_certificate_unusable", reason=str(exc), action="ordering"))
            return None
        self.status.not_after = stored.not_after
        self.status.renew_at = renew_at(stored)
        self._current = stored
        log.info(
            fields(
                "acme_certificate_loaded", names=",".join(stored.names),
                not_after=f"{stored.not_after:%FT%TZ}", file=str(stored.cert_file),
            )
        )  # fmt: skip
        return stored

    async def run(self, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        """Order when due, for ever (after ``install_stored``); returns only when cancelled."""
        current = self._current
        while True:
            due = renew_at(current) if current is not None else utc_now()
            wait_s = (due - utc_now()).total_seconds()
            if wait_s > 0:
                log.info(fields("acme_renewal_scheduled", at=f"{due:%FT%TZ}", in_s=round(wait_s)))
                await sleep(min(wait_s, MAX_SLEEP_S))
                continue
            try:
                current = await self.order()
            except Exception as exc:
                if not _expected(exc):
                    raise
                self._failed(exc)
                assert self.status.next_attempt is not None
                await sleep(max(0.0, (self.status.next_attempt - utc_now()).total_seconds()))

    async def run_shared(self, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        """With a registry (every router and worker): serve the cluster's certificate, answer
        any pending challenge, and order when due while holding the registry's lock, so
        one router orders at a time; returns only when cancelled."""
        assert self._share is not None
        share = self._share
        mirror = asyncio.create_task(self._mirror_challenges(sleep), name="acme-mirror")
        try:
            while True:
                try:
                    await self._adopt_shared()
                    if not self._due() or not await share.lock(LOCK_TTL_S):
                        await sleep(SHARE_POLL_S)
                        continue
                except RegistryError as exc:
                    log.warning(fields("acme_registry_failed", reason=str(exc)))
                    await sleep(SHARE_POLL_S)
                    continue
                keeper = asyncio.create_task(self._keep_lock(sleep), name="acme-lock")
                try:
                    await self._adopt_shared()  # another router may have just finished
                    if self._due():
                        stored = await self.order()
                        await share.put_certificate(
                            stored.cert_file.read_bytes(), stored.key_file.read_bytes()
                        )
                except Exception as exc:
                    if not (_expected(exc) or isinstance(exc, RegistryError)):
                        raise
                    self._failed(exc)
                finally:
                    keeper.cancel()
                    try:
                        await share.unlock()
                    except RegistryError as exc:  # its TTL frees it
                        log.warning(fields("acme_registry_failed", reason=str(exc)))
        finally:
            mirror.cancel()

    def _due(self) -> bool:
        now = utc_now()
        if self.status.next_attempt is not None and now < self.status.next_attempt:
            return False
        return self._current is None or renew_at(self._current) <= now

    async def _keep_lock(self, sleep: Callable[[float], Awaitable[None]]) -> None:
        assert self._share is not None
        while True:
            await sleep(LOCK_TTL_S / 3)
            try:
                if not await self._share.renew(LOCK_TTL_S):
                    log.warning(fields("acme_lock_lost", action="finishing this order"))
                    return
            except RegistryError as exc:
                log.warning(fields("acme_registry_failed", reason=str(exc)))

    async def _adopt_shared(self) -> None:
        """Serve the registry's certificate when it differs from the one in use."""
        assert self._share is not None
        found = await self._share.certificate()
        if found is None:
            return
        chain, key = found
        current = self._current
        if current is not None:
            try:
                if current.cert_file.read_bytes() == chain:
                    return
            except OSError:
                pass
        try:
            self._store.save_certificate(self._domain, chain, key)
        except (OSError, ValueError) as exc:
            log.warning(fields("acme_shared_certificate_unusable", reason=_reason(exc)))
            return
        if self.install_stored() is not None:
            self.status.failures, self.status.last_error = 0, None
            self.status.next_attempt = None

    async def _mirror_challenges(self, sleep: Callable[[float], Awaitable[None]]) -> None:
        """Copy the registry's pending answers into this router's tables (and drop the
        ones gone from it), every ``SHARE_POLL_S``."""
        assert self._share is not None
        while True:
            try:
                wanted: dict[tuple[str, str], str] = {}
                if self._http is not None:
                    for field, value in (await self._share.challenges("http")).items():
                        wanted[("http", field)] = value
                if self._alpn is not None:
                    for field, value in (await self._share.challenges("alpn")).items():
                        wanted[("alpn", field)] = value
                self._sync_mirror(wanted)
            except RegistryError as exc:
                log.warning(fields("acme_registry_failed", reason=str(exc)))
            await sleep(SHARE_POLL_S)

    def _sync_mirror(self, wanted: dict[tuple[str, str], str]) -> None:
        for (kind, field), value in wanted.items():
            if self._mirrored.get((kind, field)) == value:
                continue
            if kind == "http" and self._http is not None:
                host, _, token = field.partition(" ")
                self._http.add(host, token, value)
            elif kind == "alpn" and self._alpn is not None:
                try:
                    self._alpn.add(field, value)
                except (OSError, ValueError) as exc:
                    log.warning(fields("acme_challenge_unusable", name=field, reason=str(exc)))
                    continue
            self._mirrored[(kind, field)] = value
        for kind, field in [k for k in self._mirrored if k not in wanted]:
            del self._mirrored[(kind, field)]
            if kind == "http" and self._http is not None:
                host, _, token = field.partition(" ")
                self._http.remove(host, token)
            elif kind == "alpn" and self._alpn is not None:
                self._alpn.remove(field)

    def _failed(self, exc: BaseException) -> None:
        status = self.status
        status.failures += 1
        status.last_error = _reason(exc)
        delay_s = min(RETRY_MAX_S, RETRY_FIRST_S * 2 ** (status.failures - 1))
        delay_s *= random.uniform(0.8, 1.0)
        if isinstance(exc, aioacme.RateLimitedError) and exc.retry_after is not None:
            delay_s = max(delay_s, (exc.retry_after - utc_now()).total_seconds())
        status.next_attempt = utc_now() + timedelta(seconds=delay_s)
        log.warning(
            fields(
                "acme_failed", names=",".join(self.names), reason=status.last_error,
                failures=status.failures, retry_in_s=round(delay_s),
                serving="the certificate in use" if status.not_after else "no ACME certificate",
            )
        )  # fmt: skip

    async def order(self) -> StoredCertificate:
        """One order from account to installed certificate; raises on any failure."""
        key, _ = self._store.account_key()
        client = aioacme.Client(
            account_key=key, directory_url=self._directory_url,
            account_uri=self._store.account_uri(self._directory_url), ssl=self._trust,
        )  # fmt: skip
        async with client:
            if client.account_uri is None:
                account = await client.get_account()
                self._store.save_account_uri(self._directory_url, account.uri)
                if self._email:
                    await client.update_account(contact=[f"mailto:{self._email}"])
                log.info(fields("acme_account_registered", account=account.uri))
            chain, cert_key = await self._order_with(client, ECKey.import_key(key).thumbprint())
        stored = self._store.save_certificate(self._domain, chain, cert_key)
        try:
            certificates = load_certificates(None, None, self._store.cert_dir)
        except ConfigError as exc:
            raise AcmeFailure(f"the new certificate does not load: {exc}") from None
        self._tls.replace_acme(certificates, self._domain)
        status = self.status
        status.not_after, status.renew_at = stored.not_after, renew_at(stored)
        status.failures, status.last_error, status.next_attempt = 0, None, None
        self._current = stored
        log.info(
            fields(
                "acme_certificate_installed", names=",".join(stored.names),
                not_after=f"{stored.not_after:%FT%TZ}", file=str(stored.cert_file),
            )
        )  # fmt: skip
        for observer in self.on_installed:
            observer(stored)
        return stored

    async def _order_with(self, client: aioacme.Client, thumbprint: str) -> tuple[bytes, bytes]:
        identifiers = [aioacme.Identifier(n, aioacme.IdentifierType.dns) for n in self.names]
        order = await client.new_order(identifiers)
        log.info(fields("acme_order_created", names=",".join(self.names), order=order.uri))
        cleanup: list[Callable[[], Awaitable[None]]] = []
        try:
            pending = []
            for uri in order.authorizations:
                authorization = await client.get_authorization(uri)
                if authorization.status == aioacme.AuthorizationStatus.valid:
                    continue  # the CA remembers an earlier validation
                challenge = next(
                    (c for c in authorization.challenges if c.type == self._challenge), None
                )
                if challenge is None:
                    raise AcmeFailure(
                        f"the CA offers no {self._challenge.value} challenge for "
                        f"{authorization.identifier.value}"
                    )
                await self._publish(client, authorization, challenge, thumbprint, cleanup)
                pending.append((uri, challenge))
            if pending and self._share is not None:
                # Every router looks in the registry each SHARE_POLL_S: wait until all
                # have the answers, as one waits for DNS to propagate.
                await asyncio.sleep(SHARE_WAIT_S)
            for _, challenge in pending:
                await client.answer_challenge(challenge.url)
            for uri, _ in pending:
                await self._until_valid(client, uri)
            order = await self._until_order(client, order.uri, aioacme.OrderStatus.ready)
            cert_key = ec.generate_private_key(ec.SECP256R1())
            order = await client.finalize_order(order.finalize, _csr(cert_key, self.names))
            order = await self._until_order(client, order.uri, aioacme.OrderStatus.valid)
            if order.certificate is None:
                raise AcmeFailure("the CA gave no certificate URL for a valid order")
            chain = await client.get_certificate(order.certificate)
        finally:
            for undo in cleanup:
                try:
                    await undo()
                except (DnsUpdateError, OSError, RegistryError) as exc:
                    log.warning(fields("acme_cleanup_failed", reason=_reason(exc)))
        key_pem = cert_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )  # fmt: skip
        return chain, key_pem

    async def _publish(
        self,
        client: aioacme.Client,
        authorization: aioacme.Authorization,
        challenge: aioacme.Challenge,
        thumbprint: str,
        cleanup: list[Callable[[], Awaitable[None]]],
    ) -> None:
        name = authorization.identifier.value
        if self._challenge == aioacme.ChallengeType.dns01:
            assert self._dns is not None
            dns = self._dns
            fqdn = client.get_dns_challenge_domain(name)
            value = client.get_dns_challenge_validation(challenge.token)
            await dns.add(fqdn, value)
            cleanup.append(lambda: dns.remove(fqdn, value))
            where = fqdn
        elif self._challenge == aioacme.ChallengeType.tlsalpn01:
            assert self._alpn is not None
            alpn = self._alpn
            key_authorization = f"{challenge.token}.{thumbprint}"
            alpn.add(name, key_authorization)
            await self._share_challenge("alpn", name, key_authorization, cleanup)

            async def forget_alpn() -> None:
                alpn.remove(name)

            cleanup.append(forget_alpn)
            where = f"{name}:443 (acme-tls/1)"
        else:
            assert self._http is not None
            http = self._http
            key_authorization = f"{challenge.token}.{thumbprint}"
            http.add(name, challenge.token, key_authorization)
            await self._share_challenge(
                "http", f"{name} {challenge.token}", key_authorization, cleanup
            )

            async def forget() -> None:
                http.remove(name, challenge.token)

            cleanup.append(forget)
            where = f"http://{name}/.well-known/acme-challenge/{challenge.token}"
        shown = f"*.{name}" if authorization.wildcard else name
        log.info(
            fields("acme_challenge_published", name=shown, type=self._challenge.value, at=where)
        )

    async def _share_challenge(
        self,
        kind: str,
        field: str,
        value: str,
        cleanup: list[Callable[[], Awaitable[None]]],
    ) -> None:
        """Put a pending answer in the registry (any router answers it), and its removal
        in ``cleanup``."""
        share = self._share
        if share is None:
            return

        async def forget() -> None:
            await share.drop_challenge(kind, field)

        cleanup.append(forget)
        await share.put_challenge(kind, field, value, CHALLENGE_TTL_S)

    async def _until_valid(self, client: aioacme.Client, uri: str) -> None:
        deadline = asyncio.get_running_loop().time() + VALIDATION_TIMEOUT_S
        while True:
            authorization = await client.get_authorization(uri)
            status = authorization.status
            if status == aioacme.AuthorizationStatus.valid:
                name = authorization.identifier.value
                shown = f"*.{name}" if authorization.wildcard else name
                log.info(fields("acme_challenge_valid", name=shown))
                return
            if status != aioacme.AuthorizationStatus.pending:
                errors = [c.error.detail for c in authorization.challenges if c.error]
                raise AcmeFailure(
                    f"{authorization.identifier.value}: the CA says {status.value}"
                    + (f": {'; '.join(errors)}" if errors else "")
                )
            if asyncio.get_running_loop().time() > deadline:
                name = authorization.identifier.value
                raise AcmeFailure(f"{name}: not validated in {VALIDATION_TIMEOUT_S:.0f} s")
            await asyncio.sleep(POLL_INTERVAL_S)  # the protocol's polling (RFC 8555 7.5.1)

    async def _until_order(
        self, client: aioacme.Client, uri: str, wanted: aioacme.OrderStatus
    ) -> aioacme.Order:
        deadline = asyncio.get_running_loop().time() + VALIDATION_TIMEOUT_S
        while True:
            order = await client.get_order(uri)
            if order.status == wanted or order.status == aioacme.OrderStatus.valid:
                return order
            if order.status == aioacme.OrderStatus.invalid:
                detail = order.error.detail if order.error else "no reason given"
                raise AcmeFailure(f"the order is invalid: {detail}")
            if asyncio.get_running_loop().time() > deadline:
                raise AcmeFailure(f"the order is still {order.status.value} after the timeout")
            await asyncio.sleep(POLL_INTERVAL_S)  # the protocol's polling (RFC 8555 7.4)


def renew_at(stored: StoredCertificate) -> datetime:
    """Two thirds into the certificate's lifetime, less a jitter fixed for the certificate."""
    lifetime = stored.not_after - stored.not_before
    jitter = random.Random(stored.not_before.timestamp()).uniform(0, JITTER_FRACTION)
    return stored.not_before + lifetime * (RENEW_AT_FRACTION - jitter)


def _csr(key: ec.EllipticCurvePrivateKey, names: tuple[str, ...]) -> x509.CertificateSigningRequest:
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), False)
        .sign(key, hashes.SHA256())
    )


def _expected(exc: BaseException) -> bool:
    """A failure the back-off is for (the CA, the network, DNS, files); else a bug."""
    return isinstance(
        exc,
        AcmeFailure | aioacme.AcmeError | DnsUpdateError | httpx.HTTPError | OSError
        | TimeoutError | ConfigError | ValueError | KeyError,
    )  # fmt: skip


def _reason(exc: BaseException) -> str:
    if isinstance(exc, aioacme.AcmeError):
        text = f"{exc.error.type}: {exc.error.detail}"
    else:
        text = str(exc) or type(exc).__name__
    return text[:_REASON_CHARS]
