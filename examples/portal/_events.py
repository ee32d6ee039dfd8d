"""Tunnel events from routers: HMAC-SHA256 signed JSON bodies.

A router POSTs ``{"v": 1, "event", "name", "router", "ts", "data": {...}}``;
``tunnel_up`` / ``tunnel_down`` carry ``data.url`` (in a cluster also
``data.router_id`` and ``data.generation``: a name is up while any router holds
it); ``idle`` / ``active`` carry ``data.last_activity`` and ``usage`` one
router's interval (``data.requests``, ``bytes_in``, ``bytes_out``,
``connection_s``, ``websocket_s``, ``start``, ``end``, ``router_id``: the portal
sums the routers); kinds this portal does not know are answered 204 and
ignored, as the contract asks. Each comes with the header ``X-Hostmux-Signature: sha256=<hex>``, the
HMAC-SHA256 of the exact body under the secret both sides share (the
GitHub-webhook scheme). The portal recomputes it and compares in constant
time; without a configured secret every event is refused.
"""

from __future__ import annotations

import hashlib
import hmac


def sign_event_body(secret: bytes, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def event_signature_ok(secret: bytes | None, body: bytes, header: str | None) -> bool:
    if not secret or not header:
        return False
    return hmac.compare_digest(sign_event_body(secret, body), header.strip())
