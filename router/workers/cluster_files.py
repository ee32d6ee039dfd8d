"""The workers' own cluster CA, when the operator configured no router-to-router link.

Workers forward requests to each other over the cluster link, which needs a
cluster CA and a certificate (see keys._cluster_ca). With no ``cluster_*``
options the supervisor makes them under ``<state_dir>/cluster/``: the CA once
(reused on every later start, so restarted workers still trust each other),
and one certificate for the base router id, which every worker ``<base>.<n>``
presents (a certificate for id X authorises X and X.<digits>). The
certificate is issued again when it is missing, for another id, or within
``_RENEW_BEFORE`` of its end.
"""

from __future__ import annotations

import datetime
import logging
from pathlib import Path

from cryptography import x509

import keys
from hostmux.config.layered import ConfigError
from hostmux.log import fields
from router.workers.plan import ClusterLink

log = logging.getLogger("hostmux.router")

# Where under the state dir; the CA's directory as ``hostmux-keys cluster-ca init`` makes it.
CLUSTER_DIR = "cluster"
# The CA certificate's name, as ``hostmux-keys cluster-ca init`` writes it.
_CA_CERT = "ca.crt"
# The loopback link workers use among themselves, on a port the kernel picks.
WORKERS_CLUSTER_LISTEN = "127.0.0.1:0"
# Issued again this long before it ends: a supervisor restarted in that window renews it.
_RENEW_BEFORE = datetime.timedelta(days=30)


def own_cluster_link(state_dir: Path, base_id: str) -> ClusterLink:
    """The CA and the base id's certificate under ``state_dir/cluster``, made when needed."""
    directory = state_dir / CLUSTER_DIR
    try:
        if (directory / _CA_CERT).exists():
            ca = keys.ClusterCA.load(directory)
        else:
            ca = keys.ClusterCA.init(directory)
            log.info(fields("cluster_ca_created", path=str(directory)))
        cert, key = directory / f"{base_id}.crt", directory / f"{base_id}.key"
        if not _current(ca.ca_file, cert, key, base_id):
            issued = ca.issue(base_id)
            log.info(
                fields(
                    "cluster_cert_issued", router=base_id, cert=str(issued.cert),
                    not_after=f"{issued.not_after:%Y-%m-%d}",
                )
            )  # fmt: skip
    except (OSError, keys.KeysError) as exc:
        raise ConfigError(f"workers' cluster CA in {directory}: {exc}") from None
    return ClusterLink(
        listen=WORKERS_CLUSTER_LISTEN, advertise="", ca_file=str(ca.ca_file),
        cert_file=str(cert), key_file=str(key),
    )  # fmt: skip


def _current(ca_file: Path, cert: Path, key: Path, base_id: str) -> bool:
    if not (cert.exists() and key.exists()):
        return False
    try:
        if keys.check_router_certificate(ca_file, cert) != base_id:
            return False
        not_after = x509.load_pem_x509_certificate(cert.read_bytes()).not_valid_after_utc
    except (ValueError, keys.KeysError):
        return False  # not ours, or unreadable: issue a fresh one
    return not_after - datetime.datetime.now(datetime.UTC) > _RENEW_BEFORE
