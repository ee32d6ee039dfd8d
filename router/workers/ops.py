"""One ``/metrics`` and one ``/readyz`` for a router of ``workers = N``: the supervisor's.

Each worker keeps its own figures (``router.operations``) and answers its
supervisor on a unix socket in ``state_dir/run`` (mode 0700): connect, and it
writes one JSON snapshot (its metrics text, its readiness) and closes. The
supervisor serves ``metrics_listen`` (``hostmux.ops_server``) and, on each
scrape, asks every worker at once and merges:

1. ``hostmux_*`` series are summed over the workers (counters, histogram
   buckets, gauges such as tunnels and open WebSockets): one router's figures;
   ``*_info`` series are the same in every worker and kept once; a name's
   last activity time and idle flag (``_LATEST``) are the largest any worker
   says (a sum of times means nothing);
2. per-process series (``process_*``, ``python_*``) get a ``worker`` label
   (``1``..``N``, ``supervisor`` for its own), as summing CPU seconds or
   memory of different processes would hide which one is busy;
3. ``/readyz``: 503 only when no worker is ready (the workers share the
   listening sockets: one that serves is enough); a worker that is not ready
   or does not answer makes the router "degraded", with the workers' own
   degradations (portal, registry).

Error handling: a worker that does not answer within ``WORKER_ANSWER_S`` is
left out of that scrape (and ``hostmux_workers_answering`` says so).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client import generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector, CollectorRegistry

from hostmux.config.layered import ConfigError
from hostmux.metric_values import process_registry
from hostmux.ops_server import Readiness
from router.operations import readiness_families, readiness_of

log = logging.getLogger("hostmux.router")

# Reason: within the ops server's 2 s answer time, with room for the merge.
WORKER_ANSWER_S = 1.0
# Reason: a worker's snapshot is some tens of KiB (more with metrics_per_tunnel).
MAX_SNAPSHOT_BYTES = 16 * 1024 * 1024
# The longest unix socket path Linux takes (sun_path is 108 bytes with its NUL).
_MAX_SOCKET_PATH = 107
_PER_PROCESS = ("process_", "python_")
# The supervisor's own verdict replaces its workers' (summed, they would say N).
_SUPERVISORS_OWN = frozenset({"hostmux_ready", "hostmux_degraded"})
# Per-name activity (``metrics_per_tunnel``): the latest time, idle if any worker says so.
_LATEST = frozenset({"hostmux_tunnel_last_activity_timestamp_seconds", "hostmux_tunnel_idle"})


def worker_socket_path(state_dir: Path, worker_index: int) -> Path:
    return state_dir / "run" / f"worker-{worker_index}.ops.sock"


async def serve_worker_snapshots(
    state_dir: Path, worker_index: int, snapshot: Any
) -> asyncio.AbstractServer:
    """Worker side: answer each connection with ``await snapshot()`` (JSON bytes)."""
    path = worker_socket_path(state_dir, worker_index)
    if len(str(path).encode()) > _MAX_SOCKET_PATH:
        raise ConfigError(
            f"state_dir is too long for the worker's metrics socket {path} "
            f"(unix socket paths take at most {_MAX_SOCKET_PATH} bytes)"
        )
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.unlink(missing_ok=True)  # left by a worker that was killed

    async def answer(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(await snapshot())
            await writer.drain()
        except (ConnectionError, OSError):
            pass  # the supervisor gave up on this one
        finally:
            writer.close()

    server = await asyncio.start_unix_server(answer, path=str(path))
    path.chmod(0o600)
    return server


async def ask_worker(state_dir: Path, worker_index: int) -> dict[str, Any] | None:
    """Supervisor side: worker ``worker_index``'s snapshot, or None (no answer in time)."""
    path = worker_socket_path(state_dir, worker_index)
    try:
        async with asyncio.timeout(WORKER_ANSWER_S):
            reader, writer = await asyncio.open_unix_connection(str(path))
            try:
                data = await reader.read(MAX_SNAPSHOT_BYTES)
            finally:
                writer.close()
        snapshot = json.loads(data)
    except (OSError, TimeoutError, ValueError) as exc:
        log.debug("worker %s gave no snapshot: %r", worker_index, exc)
        return None
    return snapshot if isinstance(snapshot, dict) else None


def merge_metrics(sources: Iterable[tuple[str, str]]) -> list[Metric]:
    """``(worker label, exposition text)`` of each process, merged (rules 1 and 2)."""
    merged: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for worker, text in sources:
        for family in text_string_to_metric_families(text):
            if family.name in _SUPERVISORS_OWN:
                continue
            per_process = family.name.startswith(_PER_PROCESS)
            if family.name not in merged:
                merged[family.name] = Metric(family.name, family.documentation, family.type)
                values[family.name] = {}
            found = values[family.name]
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue  # a process's start time, meaningless summed
                labels = dict(sample.labels)
                if per_process:
                    labels["worker"] = worker
                key = (sample.name, tuple(sorted(labels.items())))
                if family.type == "info" or sample.name.endswith("_info"):
                    found[key] = sample.value
                elif family.name in _LATEST:
                    found[key] = max(found.get(key, sample.value), sample.value)
                else:
                    found[key] = found.get(key, 0.0) + sample.value
    for name, metric in merged.items():
        for (sample_name, label_pairs), value in values[name].items():
            metric.add_sample(sample_name, dict(label_pairs), value)
    return list(merged.values())


def combined_readiness(workers: dict[int, dict[str, Any] | None]) -> Readiness:
    """Rule 3: the router's verdict from its workers' snapshots (None: no answer)."""
    verdicts = {n: readiness_of(s) if s is not None else None for n, s in workers.items()}
    ready = [n for n, v in verdicts.items() if v is not None and v.ready]
    degraded: dict[str, str] = {}
    for n, verdict in sorted(verdicts.items()):
        if verdict is None:
            degraded[f"worker {n}"] = "did not answer"
        elif not verdict.ready:
            degraded[f"worker {n}"] = verdict.reason
        else:
            for component, why in verdict.degraded.items():
                degraded.setdefault(component, f"worker {n}: {why}")
    if not ready:
        reasons = sorted({v.reason for v in verdicts.values() if v is not None} - {""})
        reason = "no worker is ready" + (f": {reasons[0]}" if reasons else " (none answered)")
        return Readiness(reason=reason)
    return Readiness(degraded=degraded)


class SupervisorOps:
    """The supervisor's ``/metrics`` and ``/readyz``, from its workers' snapshots."""

    def __init__(self, state_dir: Path, workers: int) -> None:
        self._state_dir = state_dir
        self._workers = workers
        self._own = process_registry("router-supervisor")

    def __repr__(self) -> str:
        return f"<SupervisorOps workers={self._workers}>"

    async def _snapshots(self) -> dict[int, dict[str, Any] | None]:
        indexes = range(1, self._workers + 1)
        answers = await asyncio.gather(*(ask_worker(self._state_dir, n) for n in indexes))
        return dict(zip(indexes, answers, strict=True))

    async def metrics(self) -> bytes:
        snapshots = await self._snapshots()
        sources = [("supervisor", generate_latest(self._own).decode())]
        sources += [(str(n), str(s.get("metrics", ""))) for n, s in snapshots.items() if s]
        readiness = combined_readiness(snapshots)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Fixed([*merge_metrics(sources), *self._own_families(snapshots)]))
        families = list(readiness_families(readiness))
        registry.register(_Fixed(families))
        return generate_latest(registry)

    async def readiness(self) -> Readiness:
        return combined_readiness(await self._snapshots())

    def _own_families(self, snapshots: dict[int, dict[str, Any] | None]) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "hostmux_workers", "worker processes configured", value=self._workers
        )
        yield GaugeMetricFamily(
            "hostmux_workers_answering", "workers that answered this scrape",
            value=sum(1 for s in snapshots.values() if s is not None),
        )  # fmt: skip


class _Fixed(Collector):
    """Families made for one scrape."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


def remove_worker_socket(state_dir: Path, worker_index: int) -> None:
    with contextlib.suppress(OSError):
        worker_socket_path(state_dir, worker_index).unlink()


__all__ = [
    "SupervisorOps", "ask_worker", "combined_readiness", "merge_metrics",
    "serve_worker_snapshots", "worker_socket_path",
]  # fmt: skip
