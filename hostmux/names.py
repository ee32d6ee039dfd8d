"""Tunnel names and request hosts: the pure rules that map a Host to a name.

A tunnel name is one DNS label under the router's domain: ``myapp`` is served
at ``myapp.<domain>``. The rules, in the order they are applied:

1. A name is ``^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`` — a lower-case DNS label
   (RFC 1123), so it is valid in a certificate wildcard and a cookie scope.
2. Reserved names (the router's own pages, common infrastructure labels) can
   never be claimed, so a tunnel cannot impersonate the router or its admin.
3. A request Host is normalised before it is looked up: lower-cased, port and
   one trailing dot removed. IPv6 literals, user-info and anything that is not
   a plain host name never match a tunnel.
4. A Host matches a tunnel only if it is exactly ``<label>.<domain>``; deeper
   names (``a.b.<domain>``) do not match, so one wildcard certificate covers
   every tunnel.
"""

from __future__ import annotations

import functools
import re
import secrets
from dataclasses import dataclass

# A host name (dot-separated labels, no empty label), one optional trailing dot,
# an optional port of ASCII digits. IPv6 literals and user-info do not match.
_HOST = re.compile(r"(?P<name>[a-z0-9-]+(?:\.[a-z0-9-]+)*)\.?(?::[0-9]{1,5})?")
_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")  # used with fullmatch

# Names a tunnel may never hold: the router's own hosts and names a user could
# mistake for the operator's infrastructure.
RESERVED_NAMES = frozenset(
    {
        "www", "api", "admin", "router", "hostmux", "ssh", "wss", "mail", "smtp",
        "imap", "ns", "ns1", "ns2", "dns", "portal", "auth", "login", "status",
        "metrics", "localhost", "wpad", "autodiscover", "_hostmux", "tcp",
    }
)  # fmt: skip

# 12 characters from a 32-letter alphabet are 60 bits: not guessable by
# scanning, and still short enough to read out loud.
_RANDOM_NAME_LENGTH = 12
_RANDOM_ALPHABET = "abcdefghijkmnpqrstuvwxyz23456789"  # no l/1/o/0 look-alikes


class InvalidName(ValueError):
    """A requested tunnel name is not acceptable; the message says why."""


def is_dns_label(text: str) -> bool:
    return _LABEL.fullmatch(text) is not None


def check_name(name: str) -> str:
    """Return ``name`` if it may be claimed as a tunnel name, else raise."""
    if not _LABEL.fullmatch(name):
        raise InvalidName(
            f"{name!r} is not a valid name: use 1-63 characters a-z, 0-9 and '-',"
            " not starting or ending with '-'"
        )
    if name in RESERVED_NAMES:
        raise InvalidName(f"{name!r} is reserved")
    return name


def random_name() -> str:
    """A fresh, hard-to-guess tunnel name (about 60 bits of randomness)."""
    return "".join(secrets.choice(_RANDOM_ALPHABET) for _ in range(_RANDOM_NAME_LENGTH))


def normalise_host(host: str) -> str | None:
    """Lower-case ``host``, drop its port and one trailing dot; ``None`` if unusable.

    Bracketed IPv6 literals and anything with characters outside a host name
    give ``None``: such a Host can never name a tunnel.
    """
    host = host.strip(" \t")  # only HTTP's own whitespace, not Unicode's
    if not host.isascii():
        return None
    match = _HOST.fullmatch(host.lower())
    return match["name"] if match else None


@dataclass(frozen=True, slots=True)
class HostTarget:
    """What a request's Host designates under the router's domain."""

    label: str | None  # the tunnel name, or None for the router's own host


def target_for_host(host: str, domain: str) -> HostTarget | None:
    """Map a normalised host to a tunnel label (or the router itself); ``None`` if foreign."""
    # Asked per request with the same few hosts: a name's answer is kept (a bounded
    # cache of short names; anything longer than a DNS name is worked out each time).
    if len(host) <= _MAX_DNS_NAME:
        return _target_for_short_host(host, domain)
    return _target_for_host(host, domain)


_MAX_DNS_NAME = 253


@functools.lru_cache(maxsize=1024)
def _target_for_short_host(host: str, domain: str) -> HostTarget | None:
    return _target_for_host(host, domain)


def _target_for_host(host: str, domain: str) -> HostTarget | None:
    if host == domain:
        return HostTarget(label=None)
    suffix = "." + domain
    if not host.endswith(suffix):
        return None
    label = host[: -len(suffix)]
    if not _LABEL.fullmatch(label):
        return None
    return HostTarget(label=label)
