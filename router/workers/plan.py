"""The supervisor's decisions, as pure functions: how many workers, their ids, their
command lines, and when a dead one is started again.

Nothing here touches a process, a socket or a file; ``supervisor`` does, and
the unit tests (tests/unit/test_workers_plan.py) check these rules exactly:

1. ``workers = 0`` is one worker per usable CPU (the process's affinity mask,
   not the machine's core count: a container or ``taskset`` may allow fewer),
   at most ``MAX_WORKERS``.
2. Worker ``n`` (1..N) is router ``<base>.<n>``; ``base`` is ``router_id``,
   else ``router_name``, else ``router``. Each id must pass
   ``keys.check_router_id`` (it names the worker's cluster certificate's holder).
3. A worker's configuration is the supervisor's own (same flags, same
   environment, same file) plus flags appended after them (flags win, the last
   one of a flag wins): ``--worker-index``, ``--router-id``, ``--listen-fds``
   and, once the router has a cluster link, its ``--cluster-*`` options.
4. A worker that dies is started again after a back-off: 1 s, doubling to
   30 s, back to 1 s once a worker has lived 60 s.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from hostmux.config.layered import parse_host_port
from router.config import MAX_WORKERS

# The default base id when neither router_id nor router_name is set.
DEFAULT_BASE_ID = "router"
# First restart delay: soon enough that a crash costs little, slow enough not to spin.
BACKOFF_FIRST_S = 1.0
# Longest restart delay: a crash loop costs at most one start every 30 s.
BACKOFF_MAX_S = 30.0
# A worker that lived this long was healthy: its next crash starts the back-off afresh.
BACKOFF_RESET_AFTER_S = 60.0


def usable_workers(requested: int, usable_cpus: int) -> int:
    """``workers`` as configured → the number of processes (0: one per usable CPU)."""
    if requested == 0:
        return max(1, min(usable_cpus, MAX_WORKERS))
    return requested


def base_router_id(router_id: str, router_name: str) -> str:
    return router_id or router_name or DEFAULT_BASE_ID


def worker_router_id(base: str, n: int) -> str:
    return f"{base}.{n}"


def worker_cluster_address(address: str, n: int, where: str) -> str:
    """Worker ``n``'s HOST:PORT for an operator's cluster address: port + n - 1 (0 stays 0)."""
    host, port = parse_host_port(address, where)
    shown = f"[{host}]" if ":" in host else host
    return f"{shown}:{port + n - 1 if port else 0}"


@dataclass(frozen=True)
class ClusterLink:
    """The router-to-router options every worker gets (``cluster_*``)."""

    listen: str  # the operator's cluster_listen (shifted per worker), or 127.0.0.1:0
    advertise: str  # the operator's cluster_advertise (shifted per worker), or empty
    ca_file: str
    cert_file: str
    key_file: str


def worker_flags(
    n: int, base: str, listen_fds: Mapping[str, Sequence[int]], cluster: ClusterLink | None
) -> list[str]:
    """The flags appended to the supervisor's own for worker ``n`` (rule 3)."""
    flags = ["--worker-index", str(n), "--router-id", worker_router_id(base, n)]
    for kind, fds in listen_fds.items():
        flags += [arg for fd in fds for arg in ("--listen-fds", f"{kind}={fd}")]
    if cluster is not None:
        flags += ["--cluster-listen", worker_cluster_address(cluster.listen, n, "cluster_listen")]
        if cluster.advertise:
            shifted = worker_cluster_address(cluster.advertise, n, "cluster_advertise")
            flags += ["--cluster-advertise", shifted]
        flags += ["--cluster-ca-file", cluster.ca_file, "--cluster-cert-file", cluster.cert_file]
        flags += ["--cluster-key-file", cluster.key_file]
    return flags


class RestartBackoff:
    """Rule 4 for one worker slot: ``delay_after(lived_s)`` → seconds before the next start."""

    def __init__(self) -> None:
        self._next_s = BACKOFF_FIRST_S

    def __repr__(self) -> str:
        return f"<RestartBackoff next={self._next_s:g}s>"

    def delay_after(self, lived_s: float) -> float:
        if lived_s >= BACKOFF_RESET_AFTER_S:
            self._next_s = BACKOFF_FIRST_S
        delay = self._next_s
        self._next_s = min(self._next_s * 2, BACKOFF_MAX_S)
        return delay


def describe_exit(returncode: int) -> str:
    """A worker's end as an operator reads it: ``exit 1`` or ``signal SIGKILL``."""
    if returncode >= 0:
        return f"exit {returncode}"
    try:
        return f"signal {signal.Signals(-returncode).name}"
    except ValueError:
        return f"signal {-returncode}"


def usable_cpus() -> int:
    """The CPUs this process may run on (``os.sched_getaffinity``; else the machine's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
