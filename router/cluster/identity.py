"""Who is at the other end of a cluster link: certificates and router ids.

A cluster certificate issued for id ``X`` (``hostmux-keys cluster-ca issue
DIR X``) speaks for router ``X`` and for its workers ``X.1``, ``X.2``, ...
(a machine's workers share one certificate). Both ends check:

- the holder (TLS server) accepts only clients whose certificate the
  cluster CA signed (``CERT_REQUIRED``; ``keys.cluster_tls_contexts``);
- the sender (TLS client) checks that the certificate the server presented
  speaks for the router id the registry named as the holder
  (``authorises``), so another member cannot answer for it. Python's host
  name check cannot express "X or X.<digits>", so it is done here instead,
  right after the handshake and before a byte of a request is sent.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import keys


class PeerRefused(Exception):
    """The peer's certificate does not speak for the router we meant to reach."""


def authorises(certificate_id: str, router_id: str) -> bool:
    """Whether a cluster certificate for ``certificate_id`` speaks for ``router_id``."""
    if router_id == certificate_id:
        return True
    base, dot, worker = router_id.rpartition(".")
    return bool(dot) and base == certificate_id and worker.isdigit() and worker[0] != "0"


def link_contexts(
    ca_file: Path, cert_file: Path, key_file: Path
) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server, client) contexts for the link; KeyFileError names a bad file.

    The client's host name check is ``authorises`` (after the handshake);
    the chain to the cluster CA is still required by OpenSSL on both sides.
    """
    server, client = keys.cluster_tls_contexts(ca_file, cert_file, key_file)
    client.check_hostname = False
    return server, client


def peer_id(ssl_object: object) -> str:
    """The verified peer's certificate id; PeerRefused if it has none."""
    if not isinstance(ssl_object, ssl.SSLObject | ssl.SSLSocket):
        raise PeerRefused("the link is not TLS")
    try:
        return keys.peer_router_id(ssl_object)
    except keys.KeysError as error:
        raise PeerRefused(str(error)) from None
