"""The routers the portal lists in ``config.json``, checked where they are given.

A router is announced by its SSH address, ``host:port`` (DIT4C's
``.router.ssh.servers[]``), and pinned by its SSH host key line
(``.router.ssh.host_keys[]``, our addition: listeners never turn host key
checking off). Both come from flags at start-up or from ``PUT /admin/routers``
and both paths check them here, so a typo fails where an operator makes it,
not later in a listener on a compute node.

The routers' domains (``--router-domain``, or ``domains`` in the same PUT)
decide which published URLs the portal accepts: exactly
``http(s)://<instance id>.<domain>[:port]`` for one of them (``is_instance_url``).

Every check raises ``ValueError`` with a one-line message fit to show.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import keys
from hostmux.names import is_dns_label

SETTING = "routers"  # the settings row that holds {"servers": [...], "host_keys": [...]}
NONE: dict[str, list[str]] = {"servers": [], "host_keys": []}
DOMAINS_SETTING = "router_domains"  # the settings row that holds the routers' domains


def router_address(text: str) -> str:
    """``host:port`` (IPv6 hosts in brackets), port 1-65535; returned stripped."""
    address = text.strip()
    host, colon, port = address.rpartition(":")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"router {text!r}: expected HOST:PORT")
    bracketed = host.startswith("[") and host.endswith("]")
    if any(c.isspace() or c in "/@" for c in host) or (":" in host and not bracketed):
        raise ValueError(f"router {text!r}: expected HOST:PORT")
    return address


def router_host_key(text: str) -> str:
    """An SSH public key line (``type base64 [comment]``); returned stripped."""
    line = text.strip()
    try:
        keys.fingerprint_of_public_line(line)
    except keys.KeysError as exc:
        raise ValueError(f"host key {text[:40]!r}: {exc}") from None
    return line


def router_domain(text: str) -> str:
    """A domain the routers serve instances under (``<id>.<domain>``), lower case."""
    domain = text.strip().lower().rstrip(".")
    if not domain or not all(is_dns_label(label) for label in domain.split(".")):
        raise ValueError(f"router domain {text!r}: expected a domain name such as tunnels.example")
    return domain


def is_instance_url(url: str, instance_id: str, domains: list[str]) -> bool:
    """Whether ``url`` is http(s)://INSTANCE_ID.DOMAIN[:PORT][/] for one of ``domains``."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises for "h:99999")
    except ValueError:
        return False
    host = parts.hostname or ""
    return (
        url.isprintable()
        and " " not in url
        and parts.scheme in ("http", "https")
        and parts.username is None
        and parts.path in ("", "/")
        and not parts.query
        and not parts.fragment
        and any(host == f"{instance_id}.{domain}" for domain in domains)
    )


def router_settings(body: object) -> dict[str, list[str]]:
    """A ``PUT /admin/routers`` body, ``{"servers": [...], "host_keys": [...]}``, checked."""
    if not isinstance(body, dict):
        raise ValueError("expected a JSON object {servers, host_keys}")
    servers, host_keys = body.get("servers"), body.get("host_keys", [])
    if not isinstance(servers, list) or not isinstance(host_keys, list):
        raise ValueError("servers and host_keys are lists of strings")
    if not all(isinstance(item, str) for item in [*servers, *host_keys]):
        raise ValueError("servers and host_keys are lists of strings")
    domains = body.get("domains", [])
    if not isinstance(domains, list) or not all(isinstance(d, str) for d in domains):
        raise ValueError("domains is a list of strings")
    return {
        "servers": [router_address(s) for s in servers],
        "host_keys": [router_host_key(k) for k in host_keys],
        "domains": [router_domain(d) for d in domains],
    }
