"""Who an SSH client is: authorized_keys, portal instance keys, portal certificates.

Part of the router's asyncssh adapter. A client is granted (see ``_access``):

1. by a key in the operator's ``authorized_keys`` file, under any user name:
   any free name, or the names its ``permitlisten`` options allow;
2. in portal mode, as instance ``<user>`` — by an OpenSSH user certificate
   signed by a trusted portal CA with that principal (checked offline by
   asyncssh: principal, validity), or by a key the portal lists for that
   instance (``_portal.PortalKeys``, fail closed). The instance may hold only
   its own name;
3. DIT4C compatibility (portal mode): user ``register`` with any key may only
   run ``register INSTANCE_ID``, which caches the instance's portal keys; user
   ``listen`` is then granted the instance whose cached keys include its key.

A certificate binds the tunnel to the job's lifetime: ``watch_certificates``
tells the connection (``router.ssh.server``) each certificate asyncssh
accepted, and the connection ends its tunnels when its ``valid_before`` passes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncssh

import keys
from hostmux.config.layered import ConfigError
from hostmux.log import fields
from hostmux.names import InvalidName, check_name
from router.access import KeyGrant, name_patterns_from_options
from router.portal import PortalKeys, PortalUnavailable

log = logging.getLogger("hostmux.ssh")

# How long a DIT4C "register" lasts: the original cached keys until restart;
# a day bounds the cache while outliving any reconnect loop.
REGISTRATION_TTL_S = 24 * 3600.0

# The asyncssh connection method that checks an OpenSSH client certificate (private:
# asyncssh tells its server object only the CA key, never the certificate, so its
# validity is read here; ``tests/unit/test_ssh_certificates.py`` fails loudly if
# a later asyncssh renames it — certificates are then refused, never unbounded).
CERTIFICATE_CHECK = "_validate_openssh_certificate"

REGISTER_USER = "register"
LISTEN_USER = "listen"


class AuthorizedKeys:
    """The authorized_keys file, re-read when it changes (no restart needed)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._stamp: tuple[int, int] | None = None
        self._keys: asyncssh.SSHAuthorizedKeys | None = None
        self.reload(strict=True)

    def __repr__(self) -> str:
        return f"<AuthorizedKeys {self._path}>"

    @property
    def path(self) -> Path:
        return self._path

    def reload(self, *, strict: bool) -> None:
        """Load the file if it changed; ``strict``: bad lines are a ConfigError."""
        try:
            stat = self._path.stat()
        except FileNotFoundError:
            self._keys, self._stamp = None, None
            return
        except OSError as exc:
            raise ConfigError(f"{self._path}: cannot read: {exc.strerror}") from None
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp == self._stamp:
            return
        text = self._path.read_text(encoding="utf-8", errors="replace")
        good: list[str] = []
        for number, line in enumerate(text.splitlines(), start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            try:
                asyncssh.import_authorized_keys(line)
            except (ValueError, asyncssh.KeyImportError) as exc:
                message = f"{self._path}:{number}: not a valid authorized_keys line ({exc})"
                if strict:
                    raise ConfigError(message) from None
                log.warning(fields("config_warning", text=message + "; line ignored"))
                continue
            good.append(line)
        self._keys = asyncssh.import_authorized_keys("\n".join(good)) if good else None
        self._stamp = stamp
        log.info(fields("authorized_keys_loaded", path=str(self._path), keys=len(good)))

    def grant_for(self, key: asyncssh.SSHKey, peer_ip: str) -> KeyGrant | None:
        try:
            self.reload(strict=False)
        except ConfigError as exc:
            log.warning(fields("config_warning", text=str(exc)))
        if self._keys is None:
            return None
        options = self._keys.validate(key, peer_ip, peer_ip)
        if options is None:
            return None
        patterns = options.get("permitlisten")
        return KeyGrant(
            owner=key.get_fingerprint("sha256"),
            comment=key.get_comment() or "",
            name_patterns=name_patterns_from_options(
                patterns if isinstance(patterns, list) else None
            ),
        )


def load_ca_fingerprints(path: Path) -> frozenset[str]:
    """Trusted portal CA public keys (one OpenSSH line each) → fingerprints."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    found = set()
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip() and not line.startswith("#"):
            try:
                found.add(keys.fingerprint_of_public_line(line))
            except keys.KeysError as exc:
                raise ConfigError(f"{path}:{number}: {exc}") from None
    if not found:
        raise ConfigError(f"{path}: no CA public key in it")
    return frozenset(found)


def instance_id_of(username: str) -> str | None:
    """The instance a user name names, or None if it cannot be one."""
    if username in (REGISTER_USER, LISTEN_USER):
        return None
    try:
        return check_name(username)
    except InvalidName:
        return None


class Authenticator:
    """Decides grants; holds the portal key cache and DIT4C registrations."""

    def __init__(
        self,
        authorized: AuthorizedKeys,
        *,
        portal: PortalKeys | None = None,
        ca_fingerprints: frozenset[str] = frozenset(),
    ) -> None:
        self._authorized = authorized
        self._portal = portal
        self.portal_down_refusals = 0  # logins refused because the portal did not answer
        self._ca_fingerprints = ca_fingerprints
        self._registrations: dict[str, tuple[str, float]] = {}  # key fp → (instance, expiry)

    def __repr__(self) -> str:
        return f"<Authenticator portal={self._portal!r} cas={len(self._ca_fingerprints)}>"

    @property
    def authorized(self) -> AuthorizedKeys:
        return self._authorized

    @property
    def portal(self) -> PortalKeys | None:
        return self._portal

    @property
    def ca_fingerprints(self) -> frozenset[str]:
        return self._ca_fingerprints

    def replace_keys(self, authorized: AuthorizedKeys, ca_fingerprints: frozenset[str]) -> None:
        """Reload (SIGHUP): the operator's keys and the portal CAs for logins from now on."""
        self._authorized = authorized
        self._ca_fingerprints = ca_fingerprints

    async def grant_for_key(
        self, username: str, key: asyncssh.SSHKey, peer_ip: str
    ) -> KeyGrant | None:
        fingerprint = key.get_fingerprint("sha256")
        operator = self._authorized.grant_for(key, peer_ip)
        if operator is not None:
            return operator
        if self._portal is None:
            return None
        if username == REGISTER_USER:
            return KeyGrant(
                owner=fingerprint, comment="dit4c register", name_patterns=(), role="register"
            )
        if username == LISTEN_USER:
            registered = self._registrations.get(fingerprint)
            if registered is None or registered[1] < time.monotonic():
                return None
            return KeyGrant.for_instance(registered[0], "dit4c listen", role="listen")
        instance = instance_id_of(username)
        if instance is None:
            return None
        try:
            allowed = await self._portal.fingerprints(instance)
        except PortalUnavailable as exc:
            self.portal_down_refusals += 1
            log.warning(fields("ssh_auth_portal_down", instance=instance, reason=str(exc)))
            return None  # fail closed
        return KeyGrant.for_instance(instance, "portal key") if fingerprint in allowed else None

    def grant_for_certificate_authority(
        self, username: str, ca_key: asyncssh.SSHKey
    ) -> KeyGrant | None:
        """A grant if ``ca_key`` is a trusted portal CA (asyncssh then checks the rest)."""
        instance = instance_id_of(username)
        if instance is None or ca_key.get_fingerprint("sha256") not in self._ca_fingerprints:
            return None
        return KeyGrant.for_instance(instance, "portal certificate")

    async def register(self, instance_id: str) -> int:
        """DIT4C ``register``: cache the instance's portal keys; returns how many."""
        if self._portal is None:
            raise PortalUnavailable("this router has no portal")
        found = await self._portal.fingerprints(instance_id, refresh=True)
        expiry = time.monotonic() + REGISTRATION_TTL_S
        for fingerprint in found:
            self._registrations[fingerprint] = (instance_id, expiry)
        now = time.monotonic()
        for stale in [fp for fp, (_, until) in self._registrations.items() if until < now]:
            del self._registrations[stale]
        return len(found)

    async def aclose(self) -> None:
        if self._portal is not None:
            await self._portal.aclose()


def watch_certificates(conn: Any, accepted: Callable[[keys.CertificateValidity], None]) -> bool:
    """Call ``accepted`` with each OpenSSH certificate asyncssh accepts on ``conn``.

    Returns False when this asyncssh has no such check to wrap: the caller must
    then refuse certificates (it could not end their tunnels at expiry).
    """
    check: Callable[[str, Any], Awaitable[Any]] | None = getattr(conn, CERTIFICATE_CHECK, None)
    if check is None or not callable(check):
        return False

    async def checked(username: str, certificate: Any) -> Any:
        key = await check(username, certificate)
        if key is not None:
            try:
                validity = keys.certificate_validity(certificate.export_certificate())
            except (keys.KeysError, AttributeError, ValueError) as exc:
                log.warning(fields("ssh_certificate_unreadable", user=username, reason=str(exc)))
                return None  # a validity we cannot read is no validity: refused
            accepted(validity)
        return key

    setattr(conn, CERTIFICATE_CHECK, checked)
    return True


def unwatch_certificates(conn: Any) -> None:
    """asyncssh's own check again (the client is in): one closure less per connection."""
    if CERTIFICATE_CHECK in vars(conn):
        delattr(conn, CERTIFICATE_CHECK)
