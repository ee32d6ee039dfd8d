"""When a router of ``workers = N`` is ready, and when its workers may be signalled.

Each worker is told its supervisor's ``NOTIFY_SOCKET`` (``hostmux.systemd``'s
``NotifyReceiver``) and says ``READY=1`` there as a router of its own says it
to systemd: after ``router_ready``, once it serves every listening socket,
with its signal handlers long in place. The rules, kept by ``WorkerStarts``:

1. The router is ready, and the supervisor sends systemd ``READY=1`` (once),
   when every one of its N workers has said ``READY=1``: systemd's "started"
   then means the whole router serves, as a single router's does; a worker
   that never gets there keeps the unit "activating" until its
   ``TimeoutStartSec`` says why, rather than hiding it. (``/readyz`` is kinder:
   one worker that serves is enough, see ``router.workers.ops``.) A worker
   started again later does not take the readiness back.
2. A stop signal reaches a worker only once it has said ``READY=1``: before
   that, Python may not even run yet, and SIGTERM's default action would end
   it on the spot (no graceful stop, no lease released). A worker that says
   it after the stop was asked for gets the signal then, and stops as a
   router does; a worker that never says it is killed at the supervisor's
   deadline. SIGUSR1 and SIGUSR2 (a drain), whose default action ends a
   process too, wait for each worker's readiness the same way
   (``signal_when_ready``).
3. A ``READY=1`` may arrive before the supervisor has recorded the process it
   comes from (the spawn's await): it is kept by pid until then, from a child
   of the supervisor only (``NotifyReceiver`` checks), and forgotten with it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Protocol


class _Process(Protocol):
    @property
    def pid(self) -> int: ...

    def send_signal(self, signum: int) -> None: ...


class WorkerStarts:
    """Rules 1-3 for ``count`` worker slots; ``on_ready()`` once they all said READY=1."""

    def __init__(self, count: int, on_ready: Callable[[], None]) -> None:
        self._count = count
        self._on_ready = on_ready
        self._running: dict[int, _Process] = {}  # pid -> a worker process not yet ended
        self._said_ready: set[int] = set()  # pids that said READY=1 (rule 3: maybe unknown yet)
        self._stop_signal: int | None = None
        self._stop_sent: set[int] = set()
        self._held: dict[int, list[int]] = {}  # pid -> signals for it once ready
        self.ready = False  # rule 1, once

    def __repr__(self) -> str:
        ready = sum(1 for pid in self._running if pid in self._said_ready)
        return f"<WorkerStarts {ready}/{self._count} ready={self.ready} stop={self._stop_signal}>"

    def started(self, process: _Process) -> None:
        self._running[process.pid] = process
        self._changed()

    def ended(self, process: _Process) -> None:
        self._running.pop(process.pid, None)
        self._said_ready.discard(process.pid)
        self._stop_sent.discard(process.pid)
        self._held.pop(process.pid, None)

    def message(self, pid: int, fields: dict[str, str]) -> None:
        """A worker's sd_notify message (``NotifyReceiver``'s callback)."""
        if fields.get("READY") == "1":
            self._said_ready.add(pid)
            self._changed()

    def stop(self, signum: int) -> None:
        """Rule 2: ``signum`` to every worker that is ready, and to the others once they are."""
        self._stop_signal = signum
        self._changed()

    def signal_when_ready(self, signum: int) -> None:
        """``signum`` to every worker running now: at once if it said READY=1, else once
        it does (rule 2's SIGUSR1 and SIGUSR2)."""
        for pid, process in self._running.items():
            if pid in self._said_ready:
                _send(process, signum)
            elif signum not in (held := self._held.setdefault(pid, [])):  # pending once,
                held.append(signum)  # as the kernel keeps a signal

    def _ready_processes(self) -> list[_Process]:
        return [p for pid, p in self._running.items() if pid in self._said_ready]

    def _changed(self) -> None:
        ready = self._ready_processes()
        for process in ready:
            for signum in self._held.pop(process.pid, []):
                _send(process, signum)
        if self._stop_signal is not None:
            for process in ready:
                if process.pid not in self._stop_sent:
                    self._stop_sent.add(process.pid)
                    _send(process, self._stop_signal)
        elif not self.ready and len(ready) == self._count:
            self.ready = True
            self._on_ready()


def _send(process: _Process, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # it ended; its slot will see
        process.send_signal(signum)
