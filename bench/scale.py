"""The scale benchmark: one hostmux router holding 1, 100, 1,000, 10,000 idle tunnels.

    .venv/bin/python bench/scale.py [--steps 1,100,1000,10000,stretch] [--quick] [--json FILE]

The step ``stretch`` is the issue's 100,000 tunnels, or as many as the open-files
hard limit lets one router hold (the router takes a file per tunnel, and only a
process with CAP_SYS_RESOURCE may raise a hard limit): ``stretch_step``.

(``run.py`` runs it too, unless ``--no-scale``.)

1. **Tunnels.** One fresh router (connection and per-key limits raised so one
   key may hold every tunnel). ``--clients`` processes of ``tunnel_swarm.py``
   hold the tunnels, tunnel ``i`` in process ``i % clients``, each an SSH
   connection with one ``forward_remote_port("bench-i", 80, backend)`` — what
   ``hostmux-listener`` holds. The tunnel count is raised step by step; per
   step: set-up rate (tunnels added / wall time) and the router's CPU time per
   tunnel set up; the router's CPU use over 5 s of idling (keepalives) and
   then its RSS (the router process only); then ``wrk`` for a few seconds
   through ``bench-0`` (req/s, p99, errors) and the RSS again.
2. **Keep-alive connections.** A second fresh router with one
   ``hostmux-listener`` tunnel; ``keepalive_crowd.py`` opens
   ``--keepalive-connections`` connections to its plain HTTP port, one
   request each, and keeps them open: router RSS before and with them.

The keep-alive part runs first (``run_scale`` says why).

Every wait is bounded; every process is stopped (by PID) on the way out,
Ctrl-C and errors included.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import select
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from load import Target, run_wrk, wait_for_tunnel
from processes import Proc, Processes, interrupt_on_signals, raise_nofile_limit, say
from rows import DOMAIN, HOST, PROJECT, TUNNEL_NAME, start_backend, start_hostmux_router

if TYPE_CHECKING:
    import keys

HERE = Path(__file__).resolve().parent
PREFIX = "bench"
# Raised router limits: one key holds every tunnel, one address every connection
# (browser connections: the keep-alive part's 10,000 and some room), and the
# keep-alive part's burst of 10,000 channel opens down one tunnel may all be
# pending at once (the default 1,024 answers the rest 502, as it should).
LIMIT_FLAGS = (
    "--max-connections", "12000",
    "--max-connections-per-ip", "12000",
    "--max-pending-channel-opens", "12000",
    "--max-ssh-connections-per-key", "200000",
    "--max-tunnels-per-key", "200000",
)  # fmt: skip
# The stretch goal, and what it needs: files for the router's own sockets and logs
# and wrk's connections besides the tunnels; one source address per 20,000 tunnels
# (the ephemeral port range to one address and port is ~28,000 here); one swarm
# process per 15,000 tunnels (each needs a file per tunnel too).
STRETCH_TUNNELS = 100_000
_ROUTER_FILES = 500
_TUNNELS_PER_SOURCE = 20_000
_TUNNELS_PER_CLIENT = 15_000
# The slowest set-up rate waited for (tunnels/s) before a step is called failed.
SLOWEST_RATE = 20.0
SETTLE_S = 2.0
# How long the router's CPU use is watched with the tunnels idle (keepalives only).
IDLE_WINDOW_S = 5.0
MIB = 1024.0


@dataclass(frozen=True)
class ScaleOptions:
    steps: tuple[int, ...] = (1, 100, 1000, 10_000)
    clients: int = 4
    concurrency: int = 16  # handshakes in flight per client process
    keepalive_s: float = 15.0  # the idle tunnels' SSH keepalive: the listener's default
    wrk_duration_s: int = 5
    keepalive_connections: int = 10_000
    tunnel_sources: int = 0  # >0: spread tunnels over 127.0.0.1.. as source addresses


def stretch_step(open_files_hard: int) -> int:
    """The stretch step this machine allows: 100,000 tunnels, or what the limit leaves room for."""
    return max(0, min(STRETCH_TUNNELS, open_files_hard - _ROUTER_FILES))


def parse_steps(text: str, open_files_hard: int) -> tuple[int, ...]:
    """``1,100,stretch`` → ascending tunnel counts (``stretch``: ``stretch_step``)."""
    steps = [
        stretch_step(open_files_hard) if word == "stretch" else int(word)
        for word in text.split(",")
        if word
    ]
    return tuple(sorted(set(steps) - {0}))


def sized_for(opts: ScaleOptions) -> ScaleOptions:
    """``opts`` with enough swarm processes and source addresses for its largest step."""
    most = max(opts.steps, default=0)
    return replace(
        opts,
        clients=max(opts.clients, -(-most // _TUNNELS_PER_CLIENT)),
        tunnel_sources=max(opts.tunnel_sources, -(-most // _TUNNELS_PER_SOURCE)),
    )


class ControlPipe:
    """Line-based commands to a bench client process and its JSON answers, bounded in time."""

    def __init__(self, proc: Proc) -> None:
        self.proc = proc
        self._buffer = b""

    def __repr__(self) -> str:
        return f"<ControlPipe {self.proc.name}>"

    def send(self, line: str) -> None:
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def receive(self, deadline: float) -> dict[str, Any]:
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"{self.proc.name}: no answer in time")
            ready, _, _ = select.select([fd], [], [], min(left, 1.0))
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise RuntimeError(f"{self.proc.name} exited:\n{self.proc.log_tail()}")
                self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        answer: dict[str, Any] = json.loads(line)
        return answer


def _router_rss_mib(proc: Proc) -> float:
    return proc.rss_kib(tree=False) / MIB


def _log_lines(path: Path, limit: int = 20) -> list[str]:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return []
    return lines[:limit]


def scale_tunnels(
    opts: ScaleOptions, work: Path, backend_port: int, tls: keys.TlsFiles, code: Path
) -> dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"steps": []}
    with Processes(work) as procs:
        router = start_hostmux_router(procs, work, tls, LIMIT_FLAGS, code=code)
        time.sleep(SETTLE_S)
        result["router_rss_empty_mib"] = _router_rss_mib(router.proc)
        sources = ",".join(f"127.0.0.{i}" for i in range(1, 1 + opts.tunnel_sources))
        pipes = []
        argv = [
            sys.executable, HERE / "tunnel_swarm.py",
            "--router", f"127.0.0.1:{router.ssh_port}",
            "--identity-file", router.client_key,
            "--known-hosts", router.known_hosts,
            "--target", f"127.0.0.1:{backend_port}",
            "--concurrency", opts.concurrency,
            "--keepalive-s", opts.keepalive_s,
            "--sources", sources,
        ]  # fmt: skip
        for c in range(opts.clients):
            proc = procs.spawn(f"swarm{c}", argv, cwd=code, pipes=True)
            pipes.append(ControlPipe(proc))
        for pipe in pipes:
            pipe.receive(time.monotonic() + 60)  # {"ready": true}
        held = 0
        target = Target(f"http://127.0.0.1:{router.http_port}", f"{PREFIX}-0.{DOMAIN}")
        for n in opts.steps:
            if n <= held:
                continue
            added = n - held
            say(f"scale: {held} -> {n} tunnels")
            started, cpu_started = time.monotonic(), router.proc.cpu_s(tree=False)
            for c, pipe in enumerate(pipes):
                # tunnel i lives in process i % clients: this process's share of held..n-1
                first = held + (c - held) % opts.clients
                pipe.send(f"open {PREFIX} {first} {n} {opts.clients}")
            deadline = started + 60 + added / SLOWEST_RATE
            answers = [pipe.receive(deadline) for pipe in pipes]
            seconds = time.monotonic() - started
            cpu_setup = router.proc.cpu_s(tree=False) - cpu_started
            opened = sum(a["opened"] for a in answers)
            failed = sum(a["failed"] for a in answers)
            held += opened
            step: dict[str, Any] = {
                "n": n,
                "held": held,
                "added": opened,
                "failed": failed,
                "errors": sorted({e for a in answers for e in a["errors"]})[:5],
                "seconds": round(seconds, 3),
                "rate": opened / seconds if seconds > 0 else None,
                "router_cpu_ms_per_tunnel": cpu_setup / opened * 1e3 if opened else None,
            }
            cpu_idle = router.proc.cpu_s(tree=False)
            time.sleep(IDLE_WINDOW_S)
            step["router_idle_cpu_pct"] = (
                (router.proc.cpu_s(tree=False) - cpu_idle) / IDLE_WINDOW_S * 100
            )
            step["rss_mib"] = _router_rss_mib(router.proc)
            step["clients_rss_mib"] = sum(p.proc.rss_kib(tree=False) for p in pipes) / MIB
            wait_for_tunnel(target, None, time.monotonic())
            wrk = run_wrk(target, duration_s=opts.wrk_duration_s)
            step.update(
                rps=wrk.ok_rps,
                p50_ms=wrk.p50_ms,
                p99_ms=wrk.p99_ms,
                wrk_errors=wrk.errors,
                non2xx=wrk.non2xx,
            )
            step["rss_after_wrk_mib"] = _router_rss_mib(router.proc)
            result["steps"].append(step)
            say(
                f"  {opened} up, {failed} failed in {seconds:.1f}s "
                f"({step['rate'] or 0:.0f}/s); router {step['rss_mib']:.1f} MiB; "
                f"{wrk.ok_rps:,.0f} req/s p99 {wrk.p99_ms} ms err {wrk.errors}"
            )
            if failed and not opened:
                break
            if not router.proc.alive():
                raise RuntimeError(f"router exited:\n{router.proc.log_tail()}")
        for pipe in pipes:
            pipe.send("quit")
        result["router_log"] = _log_lines(router.proc.log_file)
    return result


def scale_keepalive(
    opts: ScaleOptions, work: Path, backend_port: int, tls: keys.TlsFiles, code: Path
) -> dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)
    count = opts.keepalive_connections
    with Processes(work) as procs:
        router = start_hostmux_router(procs, work, tls, LIMIT_FLAGS, code=code)
        listener = procs.spawn(
            "listener", router.listener_client(TUNNEL_NAME, backend_port), cwd=code
        )
        target = Target(f"http://127.0.0.1:{router.http_port}", HOST)
        wait_for_tunnel(target, listener, time.monotonic())
        time.sleep(SETTLE_S)
        result: dict[str, Any] = {
            "connections": count,
            "rss_before_mib": _router_rss_mib(router.proc),
        }
        say(f"scale: {count} idle keep-alive connections")
        argv = [
            sys.executable, HERE / "keepalive_crowd.py",
            "--port", router.http_port,
            "--host", HOST,
            "--count", count,
            "--hold-s", 60 + count / 50,
        ]  # fmt: skip
        crowd = procs.spawn("keepalive-crowd", argv, cwd=code, pipes=True)
        pipe = ControlPipe(crowd)
        report = pipe.receive(time.monotonic() + 60 + count / 50)
        result.update(report)
        time.sleep(SETTLE_S)
        result["rss_mib"] = _router_rss_mib(router.proc)
        say(
            f"  {report['open']} open ({report['still_open']} still open), "
            f"{report['failed']} failed in {report['seconds']:.1f}s; "
            f"router {result['rss_mib']:.1f} MiB (was {result['rss_before_mib']:.1f})"
        )
        pipe.send("quit")
        result["router_log"] = _log_lines(router.proc.log_file)
    return result


def run_scale(
    opts: ScaleOptions, work: Path, backend_port: int, tls: keys.TlsFiles, code: Path = PROJECT
) -> dict[str, Any]:
    """Both parts; a part that fails is reported with its error, the other still runs."""
    opts = sized_for(opts)
    result: dict[str, Any] = {
        "options": opts.__dict__,
        "open_files_hard": resource.getrlimit(resource.RLIMIT_NOFILE)[1],
        "stretch_tunnels": STRETCH_TUNNELS,
    }
    # The keep-alive part first: the stretch step's ~20,000 closed tunnels leave
    # as many sockets in TIME_WAIT for a minute, and with them around ~12% of the
    # keep-alive part's listener connects to its app failed at once (502); the
    # kernel's ephemeral-port search, whatever the tunnels' source address.
    for part, fn in (("keepalive", scale_keepalive), ("tunnels", scale_tunnels)):
        try:
            result[part] = fn(opts, work / part, backend_port, tls, code)
        except (RuntimeError, OSError, ValueError, KeyError) as exc:
            say(f"scale {part} FAILED: {exc}")
            result[part] = {"error": str(exc)[:2000]}
    return result


def main() -> None:
    from install import ensure_content, ensure_debian_packages

    import keys

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--steps", default="1,100,1000,10000", help="tunnel counts; 'stretch': see stretch_step"
    )
    parser.add_argument("--clients", type=int, default=4, help="tunnel client processes")
    parser.add_argument("--keepalive-connections", type=int, default=10_000)
    parser.add_argument("--wrk-duration", type=int, default=5, help="seconds per step")
    parser.add_argument("--quick", action="store_true", help="steps 1,100; 100 connections; 2 s")
    parser.add_argument("--json", type=Path, help="write the raw results here")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = parser.parse_args()
    hard = raise_nofile_limit()[1]
    opts = ScaleOptions(
        steps=parse_steps(args.steps, hard),
        clients=args.clients,
        wrk_duration_s=args.wrk_duration,
        keepalive_connections=args.keepalive_connections,
    )
    if args.quick:
        opts = ScaleOptions(steps=(1, 100), wrk_duration_s=2, keepalive_connections=100)
    interrupt_on_signals()
    ensure_debian_packages()
    work = Path(tempfile.mkdtemp(prefix="hostmux-scale-"))
    www = work / "www"
    ensure_content(www, 1 << 20)
    tls, _ = keys.ensure_dev_tls(work / "tls", DOMAIN)
    try:
        with Processes(work) as procs:
            port = start_backend(procs, work, www)
            result = run_scale(opts, work, port, tls)
    except KeyboardInterrupt:
        say("interrupted")
        raise SystemExit(130) from None
    finally:
        if args.keep:
            say(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(result, indent=1)
    if args.json:
        args.json.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
