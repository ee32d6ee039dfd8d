"""A bounded soak: a real router under a mixed, disrupted load, then a leak check.

    .venv/bin/python bench/soak.py [--minutes 3] [--seed N] [--keep]
    .venv/bin/python bench/soak.py --minutes 0.5      # quick smoke

It starts a hostmux router (plain HTTP and HTTPS front doors, ``--log-level
info``, connect timeout 5 s), the sample app (``examples/sample_app``) and six
tunnels to it — three OpenSSH ``ssh -N -R`` and three ``hostmux-listener`` —
then:

1. **warm-up** (15% of the duration, at most 20 s): the traffic below, no
   disruptions; then it waits for the router to settle and records its
   **baseline**: open descriptors (``/proc/PID/fd``), VmRSS, threads, and
   asyncio tasks (from the router's ``event=stats`` line on SIGUSR1).
2. **the mix**, for ``--minutes``: keep-alive sessions and fresh connections
   (30-40% over TLS) asking for 1 KiB, ``/bytes`` downloads up to 4 MiB
   (sha256 checked), uploads up to 1 MiB (echoed sha256 checked) and
   ``/headers``; WebSockets to ``/ws`` held 2-15 s, echoing; while one
   disruption after another, in turn: a tunnel client stopped and restarted
   under its name, one restarted under a new name, ``kill -9`` of a client in
   the middle of a 256 MiB download through it, SIGSTOP of a client for 3-8 s
   then SIGCONT; and every ``min(40 s, duration/2)`` a restart of the app.
3. **settle**: every tunnel serving again, every browser connection closed;
   it samples the router each second until descriptors and tasks are back at
   the baseline or have stopped falling for 10 s (at most 90 s).

Checks (exit status 1 if any fails): descriptors and tasks within +2 of the
baseline, threads within +2, RSS within +20 MiB, no browser connection left,
no ``Traceback`` in the router's log, every request and WebSocket either
exactly right or failed in an expected way (502/504 or a dropped connection
while its tunnel or the app was being disrupted), every kind of work
succeeding at least once, the router alive throughout, listening on loopback
only, and exiting 0 on SIGTERM. It prints the table (markdown) on stdout.

Every loop is bounded in time and count; every process is started and
stopped by ``processes.Processes`` (by PID, also on Ctrl-C).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import re
import shutil
import signal
import ssl
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

import httpx  # noqa: E402
from machine import machine_facts  # noqa: E402
from processes import (  # noqa: E402
    Proc,
    Processes,
    free_port,
    interrupt_on_signals,
    non_loopback_listeners,
    rss_kib,
    run_event_loop,
    say,
)
from rows import PROJECT, HostmuxRouter, start_hostmux_router  # noqa: E402
from soak_traffic import Disruptions, Ledger, Slot, Traffic, download_then  # noqa: E402

OPENSSH_CLIENTS = 3
LISTENERS = 3
KEEPALIVE_WORKERS = 3
FRESH_WORKERS = 2
WEBSOCKET_WORKERS = 6
# Short, so requests to a SIGSTOPped tunnel client end as 504 within the stop.
CONNECT_TIMEOUT_S = 5
# A tunnel client must serve within this long after (re)starting.
UP_TIMEOUT_S = 30.0
# One disruption (restart, kill, stop) may take at most this long.
ACTION_TIMEOUT_S = 90.0
# Pause between two disruptions.
ACTION_GAP_S = (2.0, 5.0)
SIGSTOP_S = (3.0, 8.0)
MAX_ACTIONS = 10_000
# Settling: counts are sampled every second until back at the baseline, or
# unchanged-or-rising for SETTLE_STABLE_S, for at most SETTLE_DEADLINE_S.
SETTLE_DEADLINE_S = 90.0
SETTLE_STABLE_S = 10.0
STATS_TIMEOUT_S = 10.0
# How often the router is sampled during the mix, for the peak column.
SAMPLE_EVERY_S = 5.0
# Tolerances against the baseline. Descriptors and tasks: the same tunnels are
# held and no browser is connected, so they should be equal; +2 allows for a
# keepalive or sweep in flight at the moment of the sample.
FDS_TOLERANCE = 2
TASKS_TOLERANCE = 2
THREADS_TOLERANCE = 2
# Allocator high-water marks (256 KiB read buffers, 2 MiB windows) stay mapped.
RSS_TOLERANCE_MIB = 20.0


@dataclass(frozen=True)
class Snapshot:
    fds: int
    rss_kib: int
    threads: int
    tasks: int
    connections: int


def _threads(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    return 0


def _read_from(path: Path, offset: int) -> str:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")


async def snapshot(router: Proc) -> Snapshot:
    """The router's counts now: descriptors, RSS and threads from /proc, tasks from SIGUSR1."""
    offset = router.log_file.stat().st_size
    os.kill(router.pid, signal.SIGUSR1)
    deadline = time.monotonic() + STATS_TIMEOUT_S
    while time.monotonic() < deadline:
        text = _read_from(router.log_file, offset)
        if m := re.search(r"event=stats tasks=(\d+) fds=\d+ threads=\d+ connections=(\d+)", text):
            return Snapshot(
                fds=len(os.listdir(f"/proc/{router.pid}/fd")),
                rss_kib=rss_kib(router.pid),
                threads=_threads(router.pid),
                tasks=int(m[1]),
                connections=int(m[2]),
            )
        await asyncio.sleep(0.05)
    raise RuntimeError(f"no event=stats line from the router within {STATS_TIMEOUT_S:g}s")


class Soak:
    """The processes of one soak and the disruptions done to them.

    Resource handling: every process is spawned in ``procs``, which stops
    them all when its block ends. Error handling: a tunnel that does not serve
    again within ``UP_TIMEOUT_S`` raises, and the soak fails with that reason.
    """

    def __init__(self, procs: Processes, router: HostmuxRouter, seed: int) -> None:
        self.procs = procs
        self.router = router
        self.rng = random.Random(seed)
        self.app_port = free_port()
        self.app = self._spawn_app()
        kinds = ["openssh"] * OPENSSH_CLIENTS + ["listener"] * LISTENERS
        self.slots = [Slot(i, kind, f"{kind[:3]}{i}") for i, kind in enumerate(kinds)]
        self.clients: dict[int, Proc] = {}
        self.disruptions = Disruptions()
        self.actions: Counter[str] = Counter()
        ca = router.state / "tls" / "dev-ca.pem"
        self.tls = ssl.create_default_context(cafile=str(ca))

    def __repr__(self) -> str:
        return f"<Soak slots={self.slots} app_port={self.app_port}>"

    def _spawn_app(self) -> Proc:
        argv = [sys.executable, "-m", "examples.sample_app", "--port", str(self.app_port)]
        return self.procs.spawn("sample-app", argv, cwd=PROJECT, wait_for=[self.app_port])

    def _spawn_client(self, slot: Slot, name: str) -> Proc:
        if slot.kind == "openssh":
            argv = self.router.openssh_client(name, self.app_port)
        else:
            argv = self.router.listener_client(name, self.app_port, "--backoff-max-s", "2")
        label = f"{slot.kind}-{slot.index}-{self.actions.total()}"
        return self.procs.spawn(label, argv, cwd=PROJECT)

    async def start_tunnels(self) -> None:
        for slot in self.slots:
            self.clients[slot.index] = self._spawn_client(slot, slot.name)
        for slot in self.slots:
            await self.wait_serving(slot, slot.name)

    async def wait_serving(self, slot: Slot, name: str) -> None:
        """Poll ``GET /bytes?n=16`` on NAME until it answers exactly, within ``UP_TIMEOUT_S``."""
        deadline = time.monotonic() + UP_TIMEOUT_S
        url = f"http://127.0.0.1:{self.router.http_port}/bytes?n=16&seed=up"
        last = "nothing yet"
        async with httpx.AsyncClient(timeout=5.0) as client:
            while time.monotonic() < deadline:
                try:
                    response = await client.get(url, headers={"host": self.router.host(name)})
                    if response.status_code == 200 and len(response.content) == 16:
                        return
                    last = f"HTTP {response.status_code}"
                except httpx.HTTPError as exc:
                    last = repr(exc)
                proc = self.clients.get(slot.index)
                if proc is not None and not proc.alive():
                    raise RuntimeError(f"{proc.name} exited:\n{proc.log_tail()}")
                await asyncio.sleep(0.1)
        raise RuntimeError(f"{name} not serving within {UP_TIMEOUT_S:g}s (last: {last})")

    # -- disruptions ----------------------------------------------------------------------

    async def restart_client(self, slot: Slot, *, new_name: bool) -> None:
        """SIGTERM the client, start it again (under a new name if asked), wait until served."""
        await asyncio.to_thread(self.procs.stop, self.clients[slot.index])
        name = slot.name
        if new_name:
            slot.generation += 1
            name = f"{slot.kind[:3]}{slot.index}-g{slot.generation}"
        self.clients[slot.index] = self._spawn_client(slot, name)
        await self.wait_serving(slot, name)
        slot.name = name

    async def kill_mid_download(self, slot: Slot, traffic: Traffic) -> None:
        proc = self.clients[slot.index]

        def kill() -> None:
            if proc.alive():  # not reaped yet, so the PID is still this process's
                os.kill(proc.pid, signal.SIGKILL)

        detail = await download_then(traffic, slot, kill)
        say(f"  kill -9 {proc.name} mid-download: {detail}")
        await asyncio.to_thread(self.procs.stop, proc)
        self.clients[slot.index] = self._spawn_client(slot, slot.name)
        await self.wait_serving(slot, slot.name)

    async def stop_and_continue(self, slot: Slot) -> None:
        proc = self.clients[slot.index]
        os.kill(proc.pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(self.rng.uniform(*SIGSTOP_S))
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        await self.wait_serving(slot, slot.name)

    async def restart_app(self) -> None:
        await asyncio.to_thread(self.procs.stop, self.app)
        self.app = await asyncio.to_thread(self._spawn_app)
        await self.wait_serving(self.slots[0], self.slots[0].name)

    async def chaos(self, traffic: Traffic, duration_s: float) -> None:
        """One disruption after another until the mix ends; each kind in turn."""
        app_every_s = min(40.0, duration_s / 2)
        next_app = time.monotonic() + app_every_s
        kinds = ["restart", "kill -9", "restart, new name", "SIGSTOP"]
        turn = 0
        for _ in range(MAX_ACTIONS):
            await asyncio.sleep(self.rng.uniform(*ACTION_GAP_S))
            if not traffic.running():
                return
            if time.monotonic() >= next_app:
                kind, key, slot = "app restart", "app", None
                next_app = time.monotonic() + app_every_s
            else:
                slot = self.rng.choice(self.slots)
                kind, key = kinds[turn % len(kinds)], slot.key
                turn += 1
            self.disruptions.begin(key)
            try:
                async with asyncio.timeout(ACTION_TIMEOUT_S):
                    if slot is None:
                        await self.restart_app()
                    elif kind == "kill -9":
                        await self.kill_mid_download(slot, traffic)
                    elif kind == "SIGSTOP":
                        await self.stop_and_continue(slot)
                    else:
                        await self.restart_client(slot, new_name=kind.endswith("new name"))
            finally:
                self.disruptions.end(key)
            self.actions[kind] += 1
            say(f"  {kind} {slot.name if slot else self.app.name}: done")

    async def ensure_all_serving(self) -> None:
        for slot in self.slots:
            if not self.clients[slot.index].alive():
                say(f"  {slot!r}: client gone, restarting it")
                await asyncio.to_thread(self.procs.stop, self.clients[slot.index])
                self.clients[slot.index] = self._spawn_client(slot, slot.name)
            await self.wait_serving(slot, slot.name)


# -- the run --------------------------------------------------------------------------------


def _traffic(soak: Soak, ledger: Ledger, duration_s: float) -> Traffic:
    return Traffic(
        http_port=soak.router.http_port,
        https_port=soak.router.https_port,
        domain=soak.router.domain,
        tls=soak.tls,
        slots=soak.slots,
        disruptions=soak.disruptions,
        ledger=ledger,
        deadline=time.monotonic() + duration_s,
    )


async def _run_traffic(
    traffic: Traffic, seed: int, chaos: Soak | None, duration_s: float, peaks: list[Snapshot]
) -> None:
    async with asyncio.TaskGroup() as tg:
        for i in range(KEEPALIVE_WORKERS):
            tg.create_task(traffic.keepalive_worker(seed * 1000 + i))
        for i in range(FRESH_WORKERS):
            tg.create_task(traffic.fresh_worker(seed * 1000 + 100 + i))
        for i in range(WEBSOCKET_WORKERS):
            tg.create_task(traffic.websocket_worker(seed * 1000 + 200 + i))
        if chaos is not None:
            tg.create_task(chaos.chaos(traffic, duration_s))
            tg.create_task(_sample(chaos.router.proc, traffic, peaks))


async def _sample(router: Proc, traffic: Traffic, peaks: list[Snapshot]) -> None:
    """The router's counts every ``SAMPLE_EVERY_S`` during the mix (for the peak column)."""
    while traffic.running():
        await asyncio.sleep(SAMPLE_EVERY_S)
        peaks.append(await snapshot(router))


def _peak(samples: list[Snapshot]) -> Snapshot:
    return Snapshot(
        *(max((getattr(s, f) for s in samples), default=0) for f in Snapshot.__dataclass_fields__)
    )


async def settle(router: Proc, baseline: Snapshot | None) -> tuple[Snapshot, float]:
    """Sample each second until back at ``baseline`` or no longer falling; (last, seconds)."""
    started = time.monotonic()
    last = await snapshot(router)
    low, fell_at = (last.fds, last.tasks), started
    while time.monotonic() - started < SETTLE_DEADLINE_S:
        if (
            baseline is not None
            and last.connections == 0
            and last.fds <= baseline.fds
            and last.tasks <= baseline.tasks
        ):
            break
        if time.monotonic() - fell_at >= SETTLE_STABLE_S:
            break
        await asyncio.sleep(1.0)
        last = await snapshot(router)
        if last.fds < low[0] or last.tasks < low[1]:
            low, fell_at = (min(low[0], last.fds), min(low[1], last.tasks)), time.monotonic()
    return last, time.monotonic() - started


@dataclass
class Result:
    baseline: Snapshot
    peak: Snapshot
    after: Snapshot
    settle_s: float
    ledger: Ledger
    warmup: Ledger
    actions: Counter[str]
    details: Counter[str]
    seconds: float


async def soak_main(soak: Soak, minutes: float, seed: int) -> Result:
    duration_s = minutes * 60
    warmup_s = min(20.0, 0.15 * duration_s)
    await soak.start_tunnels()
    say(f"tunnels up: {', '.join(s.name for s in soak.slots)}; warm-up {warmup_s:.0f}s")
    warmup = Ledger()
    await _run_traffic(_traffic(soak, warmup, warmup_s), seed, None, warmup_s, [])
    baseline, _ = await settle(soak.router.proc, None)
    say(f"baseline {baseline}; mixing for {duration_s:.0f}s")
    ledger = Ledger()
    traffic = _traffic(soak, ledger, duration_s)
    started = time.monotonic()
    samples: list[Snapshot] = []
    await _run_traffic(traffic, seed + 1, soak, duration_s, samples)
    seconds = time.monotonic() - started
    say("mix done; every tunnel serving again, then settling")
    await soak.ensure_all_serving()
    after, settle_s = await settle(soak.router.proc, baseline)
    say(f"after {after} ({settle_s:.0f}s to settle)")
    peak = _peak(samples)
    return Result(
        baseline, peak, after, settle_s, ledger, warmup, soak.actions, traffic.details, seconds
    )


# -- the report -----------------------------------------------------------------------------


Row = tuple[str, str, str, str, str, bool]


def checks(
    result: Result, log_text: str, router_alive: bool, loopback: list[str], exit_code: int | None
) -> list[Row]:
    """(what, baseline, peak during the mix, after, limit, passed) rows."""
    b, p, a = result.baseline, result.peak, result.after
    tracebacks = log_text.count("Traceback")
    kinds = ["http small", "http download", "http upload", "http headers", "websocket session"]
    unsucceeded = [k for k in kinds if result.ledger.counts[(k, "ok")] == 0]
    rss_delta = (a.rss_kib - b.rss_kib) / 1024
    return [
        (
            "open fds", str(b.fds), str(p.fds), str(a.fds), f"≤ +{FDS_TOLERANCE}",
            a.fds <= b.fds + FDS_TOLERANCE,
        ),
        (
            "asyncio tasks", str(b.tasks), str(p.tasks), str(a.tasks), f"≤ +{TASKS_TOLERANCE}",
            a.tasks <= b.tasks + TASKS_TOLERANCE,
        ),
        (
            "threads", str(b.threads), str(p.threads), str(a.threads),
            f"≤ +{THREADS_TOLERANCE}", a.threads <= b.threads + THREADS_TOLERANCE,
        ),
        (
            "RSS MiB", f"{b.rss_kib / 1024:.1f}", f"{p.rss_kib / 1024:.1f}",
            f"{a.rss_kib / 1024:.1f} ({rss_delta:+.1f})", f"≤ +{RSS_TOLERANCE_MIB:g}",
            rss_delta <= RSS_TOLERANCE_MIB,
        ),
        (
            "browser connections", str(b.connections), str(p.connections), str(a.connections),
            "0", a.connections == 0,
        ),
        ("`Traceback` in router log", "", "", str(tracebacks), "0", tracebacks == 0),
        (
            "unexpected outcomes", "", "", str(result.ledger.total("unexpected")), "0",
            result.ledger.total("unexpected") == 0,
        ),
        ("kinds never ok", "", "", ", ".join(unsucceeded) or "none", "none", not unsucceeded),
        ("router alive after the mix", "", "", str(router_alive), "True", router_alive),
        ("non-loopback listeners", "", "", str(len(loopback)), "0", not loopback),
        ("router exit on SIGTERM", "", "", str(exit_code), "0", exit_code == 0),
    ]  # fmt: skip


def report(result: Result, rows: list[Row], log_text: str) -> str:
    facts = machine_facts()
    out = [
        f"Mix {result.seconds:.0f} s, settled in {result.settle_s:.0f} s. "
        f"Machine: {facts['cpu']}, {facts['cpus_usable']} CPUs usable, "
        f"{facts['memory_gib']} GiB, {facts['os']}, Python {facts['python']}, "
        f"asyncssh {facts['asyncssh']}, {facts['openssh']}, hostmux {facts['hostmux_commit']}, "
        f"load average at the end {os.getloadavg()[0]:.1f}.",
        "",
        "| check | baseline | peak in the mix | after | limit | result |",
        "|---|---|---|---|---|---|",
    ]
    for what, before, peak, after, limit, ok in rows:
        verdict = "PASS" if ok else "FAIL"
        out.append(f"| {what} | {before} | {peak} | {after} | {limit} | {verdict} |")
    out += ["", "| work | ok | failed, expected | unexpected |", "|---|---:|---:|---:|"]
    kinds = sorted({k for k, _ in result.ledger.counts})
    for kind in kinds:
        c = result.ledger.counts
        out.append(
            f"| {kind} | {c[(kind, 'ok')]:,} | {c[(kind, 'expected')]:,} "
            f"| {c[(kind, 'unexpected')]:,} |"
        )
    out += ["", "| disruption | count |", "|---|---:|"]
    out += [f"| {kind} | {n} |" for kind, n in sorted(result.actions.items())]
    out += ["", "Expected failures by reason: " + ", ".join(
        f"{why} {n}" for why, n in result.details.most_common()
    )]  # fmt: skip
    out.append(f"Warm-up (not in the table): {result.warmup.total('ok'):,} ok, "
               f"{result.warmup.total('unexpected')} unexpected.")  # fmt: skip
    levels = Counter(re.findall(r"level=(warning|error|critical) event=(\w+)", log_text))
    out.append(
        "Router warning/error lines by event: "
        + (", ".join(f"{lv} {ev} {n}" for (lv, ev), n in levels.most_common()) or "none")
    )
    if result.ledger.examples:
        out += [
            "",
            "Unexpected outcomes (first ones):",
            *(f"- {e}" for e in result.ledger.examples),
        ]
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=3.0, help="length of the mix (3)")
    parser.add_argument("--seed", type=int, default=1, help="random seed (1)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = parser.parse_args()
    if not 0 < args.minutes <= 120:
        parser.error("--minutes must be in (0, 120]")
    interrupt_on_signals()
    work = Path(tempfile.mkdtemp(prefix="hostmux-soak-"))
    passed = False
    try:
        with Processes(work) as procs:
            extra = ["--log-level", "info", "--connect-timeout-s", str(CONNECT_TIMEOUT_S)]
            router = start_hostmux_router(procs, work, None, extra)
            soak = Soak(procs, router, args.seed)
            try:
                result = _run(soak, args.minutes, args.seed)
            except (RuntimeError, TimeoutError) as exc:  # a tunnel or the app did not come back
                say(f"soak aborted: {exc!r}")
                return 1
            finally:
                alive = router.proc.alive()
                loopback = non_loopback_listeners(procs.pids())
                procs.stop_all()  # newest first: clients and app, then the router
                exit_code = router.proc.popen.returncode
            log_text = router.proc.log_file.read_text(errors="replace")
            rows = checks(result, log_text, alive, loopback, exit_code)
            others = {
                p.name: p.read_text(errors="replace").count("Traceback")
                for p in sorted(work.glob("*.log"))
                if p != router.proc.log_file
            }
            print(report(result, rows, log_text), flush=True)
            print(
                f"`Traceback` in the other {len(others)} logs (app, tunnel clients): "
                + (", ".join(f"{k} {n}" for k, n in others.items() if n) or "none"),
                flush=True,
            )
            passed = all(ok for *_, ok in rows)
    except KeyboardInterrupt:
        say("interrupted")
        return 130
    finally:
        if args.keep or not passed:
            say(f"logs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    say("PASS" if passed else "FAIL")
    return 0 if passed else 1


def _run(soak: Soak, minutes: float, seed: int) -> Result:
    box: list[Result] = []

    async def go() -> None:
        box.append(await soak_main(soak, minutes, seed))

    run_event_loop(go())
    return box[0]


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
