"""Certificates from an ACME CA (issue 19, point 4): ordered, stored, renewed, hot-swapped.

``build_acme`` makes the ``AcmeManager`` for a router whose configuration sets
``acme_directory_url`` (a ConfigError for anything wrong with its files, and
one clear line when the ``acme`` extra is not installed); the router runs
``AcmeManager.run`` as a background task, answers HTTP-01 through
``HttpChallenges`` and asks ``AcmeManager.status`` for readiness. With a
registry every router and worker runs ``AcmeManager.run_shared`` instead: the
lock, the pending answers and the certificate live in the registry
(``router.registry.acme_share``).

Modules: ``store`` (the files in ``state_dir/acme``), ``dns`` (DNS-01 by RFC
2136 or a hook), ``challenges`` (HTTP-01 answers), ``manager`` (the loop).
"""

from __future__ import annotations

import logging
import ssl
from typing import TYPE_CHECKING

from hostmux.config.layered import ConfigError
from hostmux.log import fields
from router.acme.challenges import HttpChallenges
from router.acme.store import AcmeStore

if TYPE_CHECKING:
    from router.acme.manager import AcmeManager
    from router.config import RouterConfig
    from router.tls import FrontDoorTls

log = logging.getLogger("hostmux.acme")

MISSING_EXTRA = (
    "acme_directory_url needs the acme extra: pip install 'hostmux[acme]' (aioacme and dnspython)"
)


def check_acme_files(config: RouterConfig) -> None:
    """``check-config``: the extra is installed and ACME's files (the CA to trust, the TSIG
    key) load; creates nothing."""
    if not config.acme_directory_url:
        return
    try:
        from router.acme.dns import load_tsig_key
        from router.acme.manager import AcmeManager  # noqa: F401  (the extra is there)
    except ImportError as exc:
        if exc.name in ("aioacme", "dns") or (exc.name or "").startswith("dns."):
            raise ConfigError(MISSING_EXTRA) from None
        raise
    _server_trust(config)
    if config.acme_dns_tsig_key_file is not None:
        load_tsig_key(config.acme_dns_tsig_key_file)


def _server_trust(config: RouterConfig) -> ssl.SSLContext | bool:
    if config.acme_ca_file is None:
        return True
    try:
        return ssl.create_default_context(cafile=str(config.acme_ca_file))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"acme_ca_file {config.acme_ca_file}: {getattr(exc, 'strerror', None) or exc}"
        ) from None


def orders(config: RouterConfig) -> bool:
    """Whether this process makes the account key at start (a router, or the first of its
    workers); with a registry any worker may order later, under the registry's lock."""
    return config.worker_index <= 1


def build_acme(
    config: RouterConfig, tls: FrontDoorTls
) -> tuple[AcmeManager, HttpChallenges | None]:
    """The manager (its stored certificate already served) and, for HTTP-01, the answers
    the HTTP front door gives; a ConfigError for a bad file or a missing extra."""
    try:
        from router.acme.dns import DnsChallenge, HookDns, Rfc2136Dns, load_tsig_key
        from router.acme.manager import AcmeManager
    except ImportError as exc:
        if exc.name in ("aioacme", "dns") or (exc.name or "").startswith("dns."):
            raise ConfigError(MISSING_EXTRA) from None
        raise
    trust = _server_trust(config)
    dns: DnsChallenge | None = None
    http = None
    if config.acme_challenge == "dns-01":
        if config.acme_dns_hook:
            dns = HookDns(config.acme_dns_hook)
        else:
            key = None
            if config.acme_dns_tsig_key_file is not None:
                key = load_tsig_key(config.acme_dns_tsig_key_file)
            zone = config.acme_dns_zone or config.domain
            dns = Rfc2136Dns(config.acme_dns_address, zone, key)
    elif config.acme_challenge == "http-01":
        http = HttpChallenges(frozenset({config.domain}))
    store = AcmeStore(config.state_dir / "acme")
    store.prepare()
    alpn = None
    if config.acme_challenge == "tls-alpn-01":
        from router.acme.tls_alpn import TlsAlpnChallenges

        alpn = TlsAlpnChallenges(frozenset({config.domain}), store.directory)
    if orders(config):
        _, created = store.account_key()  # made (or checked) now: a bad key stops the start
        if created:
            log.info(fields("acme_account_key_created", file=str(store.directory / "account.key")))
    share = None
    if config.registry:  # a cluster: one orders at a time, all answer and serve (run_shared)
        from router.registry.acme_share import AcmeShare

        try:
            share = AcmeShare.from_url(config.registry, prefix=config.registry_prefix)
        except ValueError as exc:  # redis-py's verdict on the URL
            raise ConfigError(f"registry: {exc}") from None
    manager = AcmeManager(
        directory_url=config.acme_directory_url, email=config.acme_email,
        challenge=config.acme_challenge, domain=config.domain, store=store, tls=tls,
        server_trust=trust, dns=dns, http=http, alpn=alpn, share=share,
    )  # fmt: skip
    manager.install_stored()
    return manager, http


__all__ = [
    "MISSING_EXTRA", "AcmeStore", "HttpChallenges", "build_acme", "check_acme_files", "orders",
]  # fmt: skip
