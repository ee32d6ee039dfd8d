"""DNS-01: putting ``_acme-challenge`` TXT records up and taking them down.

Two ways, one interface (``add``/``remove`` of FQDN, VALUE):

* ``Rfc2136Dns``: RFC 2136 dynamic updates to the zone's primary server
  (BIND, Knot, PowerDNS...), signed with TSIG when a key is given, by dnspython;
* ``HookDns``: the operator's command, run as ``COMMAND add|remove FQDN VALUE``
  (no shell; exit status 0: done), for DNS providers with an API of their own.

The TSIG key file is BIND's format, which ``tsig-keygen NAME`` prints::

    key "NAME" {
        algorithm hmac-sha256;
        secret "BASE64";
    };
"""

from __future__ import annotations

import asyncio
import logging
import re
import shlex
from pathlib import Path
from typing import Protocol

import dns.asyncquery
import dns.exception
import dns.name
import dns.rcode
import dns.tsig
import dns.tsigkeyring
import dns.update

from hostmux.config.layered import ConfigError
from hostmux.log import fields

log = logging.getLogger("hostmux.acme")

# Reason: a DNS server answers an update in milliseconds; a hook calls a provider's API,
# which may take tens of seconds; past these the step fails and is retried later.
UPDATE_TIMEOUT_S = 10.0
HOOK_TIMEOUT_S = 120.0
# What of a hook's output goes into the log line when it fails.
_HOOK_OUTPUT_CHARS = 400
_TXT_TTL_S = 60

_KEY = re.compile(r'key\s+"?(?P<name>[A-Za-z0-9._-]+)"?\s*\{(?P<body>[^}]*)\}\s*;', re.MULTILINE)
_ALGORITHM = re.compile(r"algorithm\s+\"?(?P<value>[A-Za-z0-9-]+)\"?\s*;")
_SECRET = re.compile(r'secret\s+"(?P<value>[A-Za-z0-9+/=]+)"\s*;')


class DnsChallenge(Protocol):
    async def add(self, fqdn: str, value: str) -> None: ...
    async def remove(self, fqdn: str, value: str) -> None: ...


class DnsUpdateError(Exception):
    """A record could not be set or removed; the message says why (for the log)."""


def load_tsig_key(path: Path) -> dns.tsig.Key:
    """The first key of a BIND key file; a ConfigError says what is wrong with it."""
    where = f"acme_dns_tsig_key_file {path}"
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where}: {getattr(exc, 'strerror', None) or exc}") from None
    text = re.sub(r"(#|//).*", "", text)
    found = _KEY.search(text)
    if found is None:
        raise ConfigError(f'{where}: no key "NAME" {{ algorithm ...; secret "..."; }}; in it')
    algorithm, secret = _ALGORITHM.search(found["body"]), _SECRET.search(found["body"])
    if algorithm is None or secret is None:
        raise ConfigError(f"{where}: the key needs an algorithm and a secret")
    known = {
        str(a).rstrip(".") for a in (
            dns.tsig.HMAC_SHA1, dns.tsig.HMAC_SHA224, dns.tsig.HMAC_SHA256,
            dns.tsig.HMAC_SHA384, dns.tsig.HMAC_SHA512, dns.tsig.HMAC_MD5,
        )
    }  # fmt: skip
    if algorithm["value"].lower() not in known:
        raise ConfigError(
            f"{where}: algorithm {algorithm['value']} is not one of {', '.join(sorted(known))}"
        )
    try:
        return dns.tsig.Key(found["name"], secret["value"], algorithm["value"].lower())
    except (ValueError, dns.exception.DNSException, NotImplementedError) as exc:
        raise ConfigError(f"{where}: {exc or type(exc).__name__}") from None


class Rfc2136Dns:
    """TXT records by RFC 2136 update messages over TCP to ``server``."""

    def __init__(self, server: tuple[str, int], zone: str, key: dns.tsig.Key | None = None) -> None:
        self._server = server
        self._zone = dns.name.from_text(zone)
        self._key = key

    def __repr__(self) -> str:
        return f"<Rfc2136Dns {self._zone} at {self._server[0]}:{self._server[1]}>"

    async def add(self, fqdn: str, value: str) -> None:
        update = self._update()
        update.add(dns.name.from_text(fqdn), _TXT_TTL_S, "TXT", f'"{value}"')
        await self._send(update, "add", fqdn)

    async def remove(self, fqdn: str, value: str) -> None:
        update = self._update()
        update.delete(dns.name.from_text(fqdn), "TXT", f'"{value}"')
        await self._send(update, "remove", fqdn)

    def _update(self) -> dns.update.UpdateMessage:
        if self._key is None:
            return dns.update.UpdateMessage(self._zone)
        return dns.update.UpdateMessage(self._zone, keyring=self._key)

    async def _send(self, update: dns.update.UpdateMessage, action: str, fqdn: str) -> None:
        host, port = self._server
        try:
            response = await dns.asyncquery.tcp(update, host, port=port, timeout=UPDATE_TIMEOUT_S)
        except (OSError, dns.exception.DNSException) as exc:
            raise DnsUpdateError(
                f"RFC 2136 {action} {fqdn} at {host}:{port}: {exc or type(exc).__name__}"
            ) from None
        if response.rcode() != dns.rcode.NOERROR:
            raise DnsUpdateError(
                f"RFC 2136 {action} {fqdn} at {host}:{port}: "
                f"the server answered {dns.rcode.to_text(response.rcode())}"
            )


class HookDns:
    """TXT records by the operator's command: ``COMMAND add|remove FQDN VALUE``."""

    def __init__(self, command: str) -> None:
        try:
            self._argv = shlex.split(command)
        except ValueError as exc:
            raise ConfigError(f"acme_dns_hook: {exc}") from None
        if not self._argv:
            raise ConfigError("acme_dns_hook: an empty command")

    def __repr__(self) -> str:
        return f"<HookDns {self._argv[0]}>"

    async def add(self, fqdn: str, value: str) -> None:
        await self._run("add", fqdn, value)

    async def remove(self, fqdn: str, value: str) -> None:
        await self._run("remove", fqdn, value)

    async def _run(self, action: str, fqdn: str, value: str) -> None:
        try:
            process = await asyncio.create_subprocess_exec(
                *self._argv, action, fqdn, value,
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )  # fmt: skip
        except OSError as exc:
            raise DnsUpdateError(f"acme_dns_hook {self._argv[0]}: {exc.strerror or exc}") from None
        try:
            output = await asyncio.wait_for(_tail_and_wait(process), HOOK_TIMEOUT_S)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise DnsUpdateError(
                f"acme_dns_hook {action} {fqdn}: no answer in {HOOK_TIMEOUT_S:.0f} s (killed)"
            ) from None
        said = output.decode(errors="replace").strip()[-_HOOK_OUTPUT_CHARS:]
        if process.returncode != 0:
            raise DnsUpdateError(
                f"acme_dns_hook {action} {fqdn}: exit status {process.returncode}: {said}"
            )
        log.debug(fields("acme_dns_hook", action=action, fqdn=fqdn, output=said or None))


async def _tail_and_wait(process: asyncio.subprocess.Process) -> bytes:
    """The last ``_HOOK_OUTPUT_CHARS`` bytes of the process's output (the rest is read and
    dropped: a chatty hook cannot fill memory), once it has exited."""
    assert process.stdout is not None
    kept = b""
    while chunk := await process.stdout.read(64 * 1024):
        kept = (kept + chunk)[-_HOOK_OUTPUT_CHARS:]
    await process.wait()
    return kept
