"""The routers the portal lists in ``config.json``, checked where they are given.

A router is announced by its SSH address, ``host:port`` (DIT4C's
``.router.ssh.servers[]``), and pinned by its SSH host key line
(``.router.ssh.host_keys[]``, our addition: listeners never turn host key
checking off). Both come from flags at start-up or from ``PUT /admin/routers``
and both paths check them here, so a typo fails where an operator makes it,
not later in a listener on a compute node.

Every check raises ``ValueError`` with a one-line message fit to show.
"""

from __future__ import annotations

import keys

SETTING = "routers"  # the settings row that holds {"servers": [...], "host_keys": [...]}
NONE: dict[str, list[str]] = {"servers": [], "host_keys": []}


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


def router_settings(body: object) -> dict[str, list[str]]:
    """A ``PUT /admin/routers`` body, ``{"servers": [...], "host_keys": [...]}``, checked."""
    if not isinstance(body, dict):
        raise ValueError("expected a JSON object {servers, host_keys}")
    servers, host_keys = body.get("servers"), body.get("host_keys", [])
    if not isinstance(servers, list) or not isinstance(host_keys, list):
        raise ValueError("servers and host_keys are lists of strings")
    if not all(isinstance(item, str) for item in [*servers, *host_keys]):
        raise ValueError("servers and host_keys are lists of strings")
    return {
        "servers": [router_address(s) for s in servers],
        "host_keys": [router_host_key(k) for k in host_keys],
    }
