"""Diagnostic, not part of a normal run: what the hostmux router's memory is made of.

    PYTHONPATH=bench/mem_probe .venv/bin/python bench/mem_probe/drive.py tunnels 2000

Python imports ``sitecustomize`` at start-up from ``PYTHONPATH``; only
``python -m router`` installs the hook. With ``HOSTMUX_MEM_PROBE=PREFIX`` set,
``tracemalloc`` runs from start-up (``HOSTMUX_MEM_PROBE_FRAMES`` frames per
allocation, default 1), and each SIGUSR1 writes ``PREFIX.N.txt``: the RSS, the
live objects by type (after a full collection) and the traced bytes by line.
The driver (``drive.py``) compares two such reports.
"""

from __future__ import annotations

import collections
import gc
import os
import signal
import sys
import threading
import tracemalloc

TOP_LINES = 60  # (x5 written: the driver subtracts two reports)


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


# Where a walk from one connection stops: what every connection shares (the loop, the
# route table and through it every other tunnel, code, loggers).
_STOP = frozenset(
    (
        "Loop", "module", "type", "function", "builtin_function_or_method",
        "method_descriptor", "wrapper_descriptor", "getset_descriptor", "member_descriptor",
        "TunnelHub", "RouteTable", "SshLimits", "Authenticator", "Logger", "RootLogger",
        "Manager", "SSHAcceptor", "Server", "ConnectionCounts", "FailureLimiter",
        "ConnectionSet", "TunnelGateway", "PlaceHolder",
    )
)  # fmt: skip


_STOP |= frozenset(os.environ.get("HOSTMUX_MEM_PROBE_STOP", "").split(","))


def _reach(root: object, parents: dict[int, int] | None = None) -> dict[int, object]:
    seen: dict[int, object] = {}
    todo: collections.deque[tuple[object, int]] = collections.deque([(root, 0)])
    while todo:
        obj, parent = todo.popleft()
        if id(obj) in seen or type(obj).__name__ in _STOP:
            continue
        seen[id(obj)] = obj
        if parents is not None:
            parents[id(obj)] = parent
        todo.extend((r, id(obj)) for r in gc.get_referents(obj))
    return seen


def _path(obj_id: int, seen: dict[int, object], parents: dict[int, int]) -> str:
    steps = []
    while parents.get(obj_id):
        parent = seen[parents[obj_id]]
        obj = seen[obj_id]
        name = type(parent).__name__
        if isinstance(parent, dict):
            key = next((k for k, v in parent.items() if v is obj), None)
            name = f"[{key!r}]" if key is not None else "{key}"
        steps.append(name)
        obj_id = parents[obj_id]
    return ".".join(reversed(steps))


def _walk(kind: str) -> list[str]:
    """What one object of type ``kind`` holds alone: reachable from it and not from another."""
    found = [o for o in gc.get_objects() if type(o).__name__ == kind]
    if len(found) < 3:
        return [f"walk {kind}: only {len(found)} found"]
    parents: dict[int, int] = {}
    mine = _reach(found[len(found) // 2], parents)
    other = _reach(found[len(found) // 2 + 1])
    own = {k: v for k, v in mine.items() if k not in other}
    by_type: collections.Counter[str] = collections.Counter()
    counts: collections.Counter[str] = collections.Counter()
    for obj in own.values():
        by_type[type(obj).__qualname__] += sys.getsizeof(obj)
        counts[type(obj).__qualname__] += 1
    shared = sum(sys.getsizeof(v) for k, v in mine.items() if k in other)
    lines = [f"walk {kind}: own {sum(by_type.values())} B in {len(own)} objects; shared {shared} B"]
    lines += [f"walktype {size} {counts[name]} {name}" for name, size in by_type.most_common(60)]
    biggest = sorted(own, key=lambda k: -sys.getsizeof(own[k]))[:40]
    lines += [
        f"walk  {sys.getsizeof(own[k])} {type(own[k]).__qualname__} {_path(k, mine, parents)}"
        for k in biggest
    ]
    return lines


def _install(prefix: str) -> None:
    frames = int(os.environ.get("HOSTMUX_MEM_PROBE_FRAMES", "1"))
    if frames > 0:  # 0: RSS and object counts only (tracemalloc costs memory itself)
        tracemalloc.start(frames)
    dumps = [0]

    def dump(signum: int, frame: object) -> None:
        dumps[0] += 1
        gc.collect()
        types = collections.Counter(type(o).__qualname__ for o in gc.get_objects())
        traced = tracemalloc.get_traced_memory()[0]
        lines = [f"rss_kib {_rss_kib()}", f"traced_bytes {traced}"]
        lines += [f"gc_objects {sum(types.values())}"]
        lines += [f"type {n} {name}" for name, n in types.most_common(400)]
        if tracemalloc.is_tracing():
            snapshot = tracemalloc.take_snapshot().filter_traces(
                [tracemalloc.Filter(False, tracemalloc.__file__)]
            )
            for stat in snapshot.statistics("lineno")[: TOP_LINES * 5]:
                where = stat.traceback[0]
                lines.append(f"line {stat.size} {stat.count} {where.filename}:{where.lineno}")
        for kind in os.environ.get("HOSTMUX_MEM_PROBE_WALK", "").split(","):
            if kind:
                lines += _walk(kind)
        path = f"{prefix}.{dumps[0]}.txt"
        with open(path + ".tmp", "w") as f:
            f.write("\n".join(lines) + "\n")
        os.replace(path + ".tmp", path)

    # uvloop does not return to Python for a signal it was not asked to handle, and the
    # loop does not exist yet: block SIGUSR1 (threads started later inherit that) and
    # wait for it in a thread of our own.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})

    def wait() -> None:
        while True:
            signal.sigwait({signal.SIGUSR1})
            dump(signal.SIGUSR1, None)

    threading.Thread(target=wait, name="mem-probe", daemon=True).start()


if sys.orig_argv[1:3] == ["-m", "router"] and os.environ.get("HOSTMUX_MEM_PROBE"):
    _install(os.environ["HOSTMUX_MEM_PROBE"])
