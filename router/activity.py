"""Activity and usage per name: idle and active events, usage accounting (issue 21, 2 and 4).

Rules:

1. Activity is a finished request routed to a name (a ``RequestRecord`` with
   the name, any status but ``101``), or WebSocket (upgraded) bytes either way
   once the name's bytes in the last minute reach ``idle_min_bytes_per_minute``
   (a kernel's pings below it are not a user). Content is never looked at.
2. Cheap on the request path: a finished request is one call here (a dict
   look-up and a few additions). Bytes of open WebSockets are read by a coarse
   tick (every ``min(idle_after_s / 2, 10 s)``) from the counters the relay
   keeps already (``ConnectionSet.spliced``): no per-byte work, no timer per
   request.
3. Idle (one router): a name a tunnel holds here whose last activity, or its
   tunnel's start when it had none, is ``idle_after_s`` old gets one ``idle``
   event; its next activity one ``active`` event, at once. A tunnel that
   comes back does not make a name active: only activity does. In a cluster
   this router does not decide: it writes its activity to the registry and
   the router holding the activity lease decides (``router.activity_cluster``).
4. Usage per name per ``usage_interval_s`` (intervals aligned to the epoch,
   so every router's hours are the same hours): requests, bytes each way,
   connection-seconds (time requests were in flight, WebSockets apart) and
   WebSocket-seconds (time WebSockets were open within the interval), sent as
   one ``usage`` event per name that had any, with this router's id; a portal
   sums the routers.
5. Usage so far is written to ``STATE_DIR/usage.json`` (``usage-N.json`` for
   worker N) every ``CHECKPOINT_S`` and on exit, through a temporary file and
   a rename (a crash leaves the old file or the new one); a router starting
   reloads it, so a restart loses at most ``CHECKPOINT_S`` of counts. An
   interval that ended while the router was down is sent at start.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from hostmux.log import fields
from hostmux.relay import RequestRecord

log = logging.getLogger("hostmux.activity")

# Reason: a restart loses at most this much of the usage counts (one small write).
CHECKPOINT_S = 60.0
# Reason: the coarsest tick; idle is judged at most this late, WebSocket bytes read this often.
MAX_TICK_S = 10.0
# Reason: idle_min_bytes_per_minute is per minute.
MINUTE_S = 60.0
# The one checkpoint format this code reads and writes.
_CHECKPOINT_VERSION = 1
# Reason: a checkpoint is names and small numbers; larger is not one of ours.
_MAX_CHECKPOINT_BYTES = 64 * 1024 * 1024

# Sends one event: (kind, name, data) — ``TunnelEvents.send``.
EventSink = Callable[[str, str, dict[str, object]], None]


class SplicedCounter(Protocol):
    """An open WebSocket's live record (``hostmux.relay.records.RecordBuilder``)."""

    request_id: str
    name: str
    bytes_in: int
    bytes_out: int


def tick_interval_s(idle_after_s: float) -> float:
    """How often the tick runs: half the idle time (idle is then said at most 50% late),
    at most ``MAX_TICK_S``, at least 0.5 s."""
    if idle_after_s <= 0:
        return MAX_TICK_S
    return max(0.5, min(idle_after_s / 2, MAX_TICK_S))


def interval_start(now: float, interval_s: float) -> float:
    """The start of the usage interval ``now`` is in (aligned to the epoch)."""
    return math.floor(now / interval_s) * interval_s


@dataclass(slots=True)
class Usage:
    """One name's usage (an interval's, or the totals since start)."""

    requests: int = 0
    bytes_in: int = 0  # from browsers
    bytes_out: int = 0  # to browsers
    connection_s: float = 0.0
    websocket_s: float = 0.0

    def __bool__(self) -> bool:
        return bool(self.requests or self.bytes_in or self.bytes_out or self.websocket_s)

    def add(self, other: Usage) -> None:
        self.requests += other.requests
        self.bytes_in += other.bytes_in
        self.bytes_out += other.bytes_out
        self.connection_s += other.connection_s
        self.websocket_s += other.websocket_s

    def to_json(self) -> dict[str, int | float]:
        return {
            "requests": self.requests, "bytes_in": self.bytes_in, "bytes_out": self.bytes_out,
            "connection_s": round(self.connection_s, 3), "websocket_s": round(self.websocket_s, 3),
        }  # fmt: skip

    @classmethod
    def from_json(cls, value: object) -> Usage:
        """Raises ValueError for anything but what ``to_json`` wrote."""
        if not isinstance(value, dict):
            raise ValueError("a usage entry is not an object")
        try:
            usage = cls(
                requests=int(value["requests"]), bytes_in=int(value["bytes_in"]),
                bytes_out=int(value["bytes_out"]), connection_s=float(value["connection_s"]),
                websocket_s=float(value["websocket_s"]),
            )  # fmt: skip
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"a usage entry is not usable: {exc!r}") from None
        if min(usage.requests, usage.bytes_in, usage.bytes_out) < 0:
            raise ValueError("a usage entry has a negative count")
        return usage


@dataclass(slots=True)
class NameActivity:
    """What is known of one name's activity here."""

    last: float  # Unix time of its last activity (or when it was first seen)
    idle: bool = False  # an idle event was sent (a cluster: the registry says so)
    written: float = 0.0  # a cluster: when ``last`` was last written to the registry
    dirty: bool = False  # a cluster: activity newer than what was written
    cluster_last: float | None = None  # a cluster: the registry's value, as last read
    # WebSocket bytes of the last minute, (time, bytes) per tick that saw some
    # (only with idle_min_bytes_per_minute).
    recent: deque[tuple[float, int]] | None = None
    usage: Usage = field(default_factory=Usage)  # this interval's
    earlier: Usage = field(default_factory=Usage)  # the intervals before, since start

    def total(self) -> Usage:
        """Usage since the router started (metrics): the intervals sent and this one."""
        total = Usage()
        total.add(self.earlier)
        total.add(self.usage)
        return total

    def last_seen(self) -> float:
        """The latest activity known anywhere (a cluster's value, when read, may be newer)."""
        return max(self.last, self.cluster_last or 0.0)


@dataclass(slots=True)
class _Sample:
    """An open WebSocket's counters when the tick last read them."""

    bytes_in: int
    bytes_out: int
    at: float


class Activity:
    """Per-name activity, idle state and usage of this router (rules 1-5).

    ``decides``: this router sends idle and active events itself (no registry);
    False in a cluster, where ``router.activity_cluster`` decides.
    """

    def __init__(
        self,
        *,
        idle_after_s: float,
        min_bytes_per_minute: int,
        usage_interval_s: float,
        router_id: str | None = None,
        send: EventSink | None = None,
        decides: bool = True,
        checkpoint: Path | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.idle_after_s = idle_after_s
        self.min_bytes = min_bytes_per_minute
        self.usage_interval_s = usage_interval_s
        self.router_id = router_id
        self.send = send
        self.decides = decides
        self.checkpoint = checkpoint
        self.clock = clock
        self.names: dict[str, NameActivity] = {}
        self._spliced: dict[str, _Sample] = {}
        self.interval_start = interval_start(clock(), usage_interval_s)
        self._checkpointed = clock()
        # The checkpoint was read (or there was none): only then may it be rewritten, so
        # a router that fails to start does not overwrite its last run's counts.
        self.loaded = False

    def __repr__(self) -> str:
        return f"<Activity {len(self.names)} names idle_after_s={self.idle_after_s:g}>"

    # -- the request path (rule 2) -------------------------------------------

    def on_request(self, record: RequestRecord) -> None:
        """The front door's per-request callback: a finished request (or WebSocket)."""
        name = record.name
        if not name or name[0] == "_":  # no tunnel's (the router's own endpoints)
            return
        now = self.clock()
        entry = self.names.get(name)
        if entry is None:
            entry = self.names[name] = NameActivity(last=now)
        usage = entry.usage
        usage.requests += 1
        if record.status == 101:  # a WebSocket ended: what the tick did not see yet
            sample = self._spliced.pop(record.request_id, None)
            started = now - record.duration_ms / 1000 if sample is None else sample.at
            seen_in, seen_out = (0, 0) if sample is None else (sample.bytes_in, sample.bytes_out)
            self._websocket(name, entry, record.bytes_in - seen_in,
                            record.bytes_out - seen_out, now - started, now)  # fmt: skip
            return
        usage.bytes_in += record.bytes_in
        usage.bytes_out += record.bytes_out
        usage.connection_s += record.duration_ms / 1000
        entry.last = now
        entry.dirty = True
        if entry.idle and self.decides:
            self._active(name, entry, now)

    def _active(self, name: str, entry: NameActivity, now: float) -> None:
        entry.last = now
        entry.dirty = True
        if entry.idle and self.decides:
            entry.idle = False
            self.emit("active", name, {"last_activity": round(now, 3)})

    def _websocket(
        self,
        name: str,
        entry: NameActivity,
        bytes_in: int,
        bytes_out: int,
        open_s: float,
        now: float,
    ) -> None:
        moved = max(bytes_in, 0) + max(bytes_out, 0)
        usage = entry.usage
        usage.bytes_in += max(bytes_in, 0)
        usage.bytes_out += max(bytes_out, 0)
        usage.websocket_s += max(open_s, 0.0)
        if moved == 0:
            return
        if self.min_bytes <= 0:
            self._active(name, entry, now)
            return
        recent = entry.recent
        if recent is None:
            recent = entry.recent = deque()
        recent.append((now, moved))
        while recent and recent[0][0] <= now - MINUTE_S:
            recent.popleft()
        if sum(moved for _, moved in recent) >= self.min_bytes:
            self._active(name, entry, now)

    # -- the tick --------------------------------------------------------------

    def tick(self, spliced: Iterable[SplicedCounter], held: Iterable[tuple[str, float]]) -> None:
        """Read open WebSockets' counters, judge idleness (``decides``), send usage
        whose interval ended, checkpoint when due. ``held``: (name, Unix time its
        tunnel came up) for each name a tunnel holds here."""
        now = self.clock()
        self.sample(spliced, now)
        held_names = set()
        for name, since in held:
            held_names.add(name)
            entry = self.names.get(name)
            if entry is None:
                entry = self.names[name] = NameActivity(last=since)
                entry.dirty = True  # a cluster: the name is written once (rule 3)
            idle_for = now - entry.last
            if self.decides and 0 < self.idle_after_s <= idle_for and not entry.idle:
                entry.idle = True
                self.emit("idle", name, {
                    "last_activity": round(entry.last, 3), "idle_after_s": self.idle_after_s,
                })  # fmt: skip
        if now >= self.interval_start + self.usage_interval_s:
            self.end_interval(now, held_names)
        if self.checkpoint is not None and now - self._checkpointed >= CHECKPOINT_S:
            self.save()

    def sample(self, spliced: Iterable[SplicedCounter], now: float) -> None:
        """Rule 2: the bytes each open WebSocket moved since the last tick."""
        still_open = {}
        for record in spliced:
            name = record.name
            if not name or name.startswith("_"):
                continue
            entry = self.names.get(name)
            if entry is None:
                entry = self.names[name] = NameActivity(last=now)
            rid = record.request_id
            before = self._spliced.get(rid)
            if before is None:  # first seen: its bytes so far, its time from now
                before = _Sample(0, 0, now)
            self._websocket(
                name, entry, record.bytes_in - before.bytes_in, record.bytes_out - before.bytes_out,
                now - before.at, now,
            )  # fmt: skip
            still_open[rid] = _Sample(record.bytes_in, record.bytes_out, now)
        self._spliced = still_open

    def end_interval(self, now: float, held: set[str]) -> None:
        """Send each name's usage of the interval that ended (rule 4); forget names
        no tunnel holds here that had nothing to send (idle ones too: a tunnel that
        comes back after that starts active, and may be said idle again)."""
        start = self.interval_start
        end = start + self.usage_interval_s
        for name, entry in list(self.names.items()):
            if entry.usage:
                self._send_usage(name, entry.usage, start, end)
                entry.earlier.add(entry.usage)
                entry.usage = Usage()
            elif name not in held:
                del self.names[name]
        self.interval_start = interval_start(now, self.usage_interval_s)

    def _send_usage(self, name: str, usage: Usage, start: float, end: float) -> None:
        self.emit("usage", name, {
            "start": start, "end": end, "interval_s": self.usage_interval_s,
            "router_id": self.router_id, **usage.to_json(),
        })  # fmt: skip

    def emit(self, kind: str, name: str, data: dict[str, object]) -> None:
        log.info(
            fields(
                f"name_{kind}",
                name=name,
                **{k: v for k, v in data.items() if k in ("last_activity", "requests")},
            )
        )
        if self.send is not None:
            self.send(kind, name, data)

    # -- the checkpoint (rule 5) --------------------------------------------------

    def save(self) -> None:
        """Write this interval's usage so far (atomically); an error is logged, not raised."""
        assert self.checkpoint is not None
        self._checkpointed = self.clock()
        body = {
            "v": _CHECKPOINT_VERSION,
            "interval_start": self.interval_start,
            "interval_s": self.usage_interval_s,
            "usage": {name: e.usage.to_json() for name, e in self.names.items() if e.usage},
        }
        partial = self.checkpoint.with_name(self.checkpoint.name + ".new")
        try:
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(body, fh, separators=(",", ":"))
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(partial, self.checkpoint)
        except OSError as exc:
            log.error(fields("usage_checkpoint_failed", path=self.checkpoint, error=str(exc)))

    def load(self) -> None:
        """Read the checkpoint a previous run left (rule 5); a missing file is a first
        start, a bad one is logged and set aside (``.bad``): counts are not worth a
        router that will not start."""
        assert self.checkpoint is not None
        self.loaded = True
        try:
            with self.checkpoint.open("rb") as fh:
                raw = fh.read(_MAX_CHECKPOINT_BYTES + 1)
        except FileNotFoundError:
            return
        except OSError as exc:
            log.error(fields("usage_checkpoint_unreadable", path=self.checkpoint, error=str(exc)))
            return
        try:
            if len(raw) > _MAX_CHECKPOINT_BYTES:
                raise ValueError("too large")
            start, interval_s, usage = parse_checkpoint(raw)
        except ValueError as exc:
            log.error(fields("usage_checkpoint_bad", path=self.checkpoint, error=str(exc)))
            os.replace(self.checkpoint, self.checkpoint.with_name(self.checkpoint.name + ".bad"))
            return
        now = self.clock()
        ended = start + interval_s <= now
        for name, counts in usage.items():
            if ended:  # the interval ended while this router was down: its events now
                self.emit("usage", name, {
                    "start": start, "end": start + interval_s, "interval_s": interval_s,
                    "router_id": self.router_id, **counts.to_json(),
                })  # fmt: skip
                continue
            entry = self.names.get(name)
            if entry is None:
                entry = self.names[name] = NameActivity(last=now)
            entry.usage.add(counts)
        if not ended:
            self.interval_start = start
        log.info(fields("usage_checkpoint_loaded", names=len(usage), interval_ended=ended))


def parse_checkpoint(raw: bytes) -> tuple[float, float, dict[str, Usage]]:
    """(interval start, interval length, usage per name) of a checkpoint; ValueError if bad."""
    try:
        body: Any = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(body, dict) or body.get("v") != _CHECKPOINT_VERSION:
        raise ValueError(f"not a version-{_CHECKPOINT_VERSION} usage checkpoint")
    start, interval_s, usage = body.get("interval_start"), body.get("interval_s"), body.get("usage")
    if not isinstance(start, int | float) or not isinstance(interval_s, int | float):
        raise ValueError("interval_start and interval_s are numbers")
    if interval_s <= 0 or not isinstance(usage, dict):
        raise ValueError("interval_s is positive and usage an object")
    return (
        float(start),
        float(interval_s),
        {str(name): Usage.from_json(counts) for name, counts in usage.items()},
    )


def checkpoint_path(state_dir: Path, worker_index: int) -> Path:
    """Where this process keeps its usage checkpoint (each worker its own file)."""
    return state_dir / (f"usage-{worker_index}.json" if worker_index else "usage.json")
