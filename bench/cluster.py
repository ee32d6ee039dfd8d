"""The cluster benchmark: one router against cluster members and workers, side by side in one run.

    .venv/bin/python bench/cluster.py                  # -> the cluster section of bench/RESULTS.md
    .venv/bin/python bench/cluster.py --quick --out /tmp/hostmux-cluster   # smoke, ~2 minutes
    .venv/bin/python bench/cluster.py --scale 1,2,4,8  # how req/s grows with workers (many cores)

1. **Rows** (``cluster_rows``), each started from scratch per repeat, row order
   rotated, medians: one router (``hostmux-openssh``, no registry), a cluster
   member serving its own tunnel, a request forwarded from router ``b`` to the
   router ``a`` that holds the tunnel, and ``--workers 2`` with a listener
   holding the name through both workers. Same load and measures as
   ``run.py`` (``run.measure_row``): wrk -t2 -c64 req/s and p99, router CPU
   per request, curl bulk MB/s.
2. **A name moves.** Routers ``a``, ``b`` and ``c`` on one registry;
   ``hostmux-listener`` holds the name through ``a`` and ``b``; a probe asks
   ``c`` for it (a new connection every ``PROBE_EVERY_S``) while ``a`` gets
   SIGTERM or SIGKILL. Measured: from the signal to the registry no longer
   listing ``a`` as a live holder, and the probes that failed meanwhile.
3. **Workers scale** (``--scale``): ``--workers N`` with the listener holding
   the name through N workers, loaded by ``--load-procs`` wrk processes at
   -c64 and -c256, next to sshd + nginx under the same load. Meaningful only
   on a machine with many free cores (``bench/device_*.sh`` bundle it).

Every process is stopped by PID on the way out; every wait is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import http.client
import json
import os
import re
import shutil
import signal
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import install  # noqa: E402
from cluster_rows import (  # noqa: E402
    CLUSTER_ROWS,
    LEASE_TTL_S,
    ha_listener,
    member,
    start_cluster,
    workers_router,
)
from load import Target, WrkResult, run_wrk, wait_for_tunnel  # noqa: E402
from machine import machine_facts  # noqa: E402
from processes import Processes, interrupt_on_signals, raise_nofile_limit, say  # noqa: E402
from rows import ANCHOR, DOMAIN, PROJECT, ROWS, TUNNEL_NAME, Bench, RowContext, pin_line  # noqa: E402
from run import command_line, measure_row  # noqa: E402

# Reason: a probe per 20 ms resolves a move to tens of ms without loading two shared cores.
PROBE_EVERY_S = 0.02
# Reason: after the registry shows the move, keep probing a while to catch late failures.
PROBE_AFTER_S = 1.0
BEGIN, END = "<!-- cluster:begin -->", "<!-- cluster:end -->"


class RegistryWatch:
    """The product's own registry client, to see a name's live holders as the routers do."""

    def __init__(self, url: str) -> None:
        from router.registry.redis_store import RedisRegistry  # the code under test's

        self._loop = asyncio.new_event_loop()
        self._registry = RedisRegistry.from_url(url, reservation_s=600, lease_ttl_s=LEASE_TTL_S)

    def holders(self, name: str) -> set[str]:
        route = self._loop.run_until_complete(self._registry.lookup(name))
        return {h.router_id for h in route.holders} if route else set()

    def close(self) -> None:
        self._loop.run_until_complete(self._registry.aclose())
        self._loop.close()


def probe(port: int, host: str) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2.0)
    try:
        conn.request("GET", "/1k", headers={"Host": host})
        response = conn.getresponse()
        return response.status == 200 and len(response.read()) == 1024
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def wait_until(check: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not within {timeout_s:g} s")
        time.sleep(PROBE_EVERY_S)


def name_move(bench: Bench, work: Path, how: signal.Signals) -> dict[str, Any]:
    """Routers a, b, c; the listener on a and b; ``how`` to a; the probe through c."""
    result: dict[str, Any] = {"signal": how.name, "ok": False}
    with Processes(work) as procs:
        watch: RegistryWatch | None = None
        try:
            ctx = RowContext(bench, work, procs)
            cluster = start_cluster(ctx)
            a = member(ctx, cluster, "a")
            # One host key for the cluster, as the docs ask: b and c start with a's.
            for router_id in ("b", "c"):
                state = work / router_id / "hostmux"
                state.mkdir(parents=True)
                for suffix in ("", ".pub"):
                    key = a.state / f"ssh_host_key{suffix}"
                    (state / key.name).write_bytes(key.read_bytes())
                    (state / key.name).chmod(0o600)
            b, c = member(ctx, cluster, "b"), member(ctx, cluster, "c")
            known = work / "known_hosts"
            known.write_text(
                "".join(pin_line(r.ssh_port, a.state / "ssh_host_key.pub") for r in (a, b))
            )
            argv = a.listener_client(TUNNEL_NAME, bench.backend_port)
            argv = [*argv, "--router", f"127.0.0.1:{b.ssh_port}", "--known-hosts", str(known)]
            client = procs.spawn("listener", argv, cwd=bench.code)
            host = c.host(TUNNEL_NAME)
            wait_for_tunnel(
                Target(f"http://127.0.0.1:{c.http_port}", host), client, time.monotonic()
            )
            watch = RegistryWatch(cluster.redis_url)
            wait_until(lambda: watch.holders(TUNNEL_NAME) == {"a", "b"}, 30, "held on a and b")
            for _ in range(20):  # c has looked the name up and pooled its links
                probe(c.http_port, host)
            sent = failed = 0
            last_failure_ms: float | None = None
            moved_ms: float | None = None
            os.kill(a.proc.pid, how)
            signalled = time.monotonic()
            deadline = signalled + LEASE_TTL_S + 10
            while time.monotonic() < deadline:
                now_ms = (time.monotonic() - signalled) * 1e3
                if moved_ms is None and "a" not in watch.holders(TUNNEL_NAME):
                    moved_ms = now_ms
                sent += 1
                if not probe(c.http_port, host):
                    failed += 1
                    last_failure_ms = now_ms
                if moved_ms is not None and now_ms > moved_ms + PROBE_AFTER_S * 1e3:
                    break
                time.sleep(PROBE_EVERY_S)
            result.update(
                moved_ms=moved_ms, probes=sent, failed=failed, last_failure_ms=last_failure_ms,
                ok=moved_ms is not None and client.alive() and b.proc.alive() and c.proc.alive(),
            )  # fmt: skip
        except (RuntimeError, OSError, ValueError) as exc:
            result["error"] = str(exc)[:1000]
        finally:
            if watch is not None:
                watch.close()
    return result


def wrk_many(target: Target, *, procs: int, connections: int, duration_s: int) -> dict[str, Any]:
    """``procs`` wrk processes at once, ``connections`` in all; summed req/s, worst p99."""
    share = max(1, connections // procs)
    with ThreadPoolExecutor(procs) as pool:
        runs: list[WrkResult] = list(
            pool.map(
                lambda _: run_wrk(target, duration_s=duration_s, threads=2, connections=share),
                range(procs),
            )
        )
    p99s = [r.p99_ms for r in runs if r.p99_ms is not None]
    return {
        "rps": sum(r.ok_rps for r in runs),
        "requests": sum(r.requests for r in runs),
        "p99_ms": max(p99s) if p99s else None,
        "errors": sum(r.errors for r in runs),
    }


def scale_step(bench: Bench, work: Path, workers: int, args: argparse.Namespace) -> dict[str, Any]:
    """``--workers N`` (0: the anchor, sshd + nginx) under -c64 and -c256."""
    result: dict[str, Any] = {"workers": workers, "ok": False}
    with Processes(work) as procs:
        try:
            ctx = RowContext(bench, work, procs)
            if workers:
                router = workers_router(ctx, workers)
                argv = ha_listener(router, bench.backend_port, workers)
                target = Target(f"http://127.0.0.1:{router.http_port}", router.host(TUNNEL_NAME))
                side = [router.proc]
            else:
                plan = ROWS[ANCHOR].start(ctx)
                assert plan.client is not None
                argv, target, side = plan.client, Target(plan.url, plan.host), plan.router
            client = procs.spawn("client", argv, cwd=bench.code)
            wait_for_tunnel(target, client, time.monotonic())
            time.sleep(1.0)  # the listener's other connections come up (a bench, not a test)
            for connections in (64, 256):
                cpu = sum(p.cpu_s() for p in side)
                load = wrk_many(
                    target, procs=args.load_procs, connections=connections,
                    duration_s=args.duration,
                )  # fmt: skip
                used = sum(p.cpu_s() for p in side) - cpu
                load["router_cpu_us"] = used / load["requests"] * 1e6 if load["requests"] else None
                result[f"c{connections}"] = load
            result["ok"] = True
        except (RuntimeError, OSError, ValueError, AssertionError) as exc:
            result["error"] = str(exc)[:1000]
    return result


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke: 2 s loads, 1 repeat, 10 MiB")
    p.add_argument("--out", type=Path, default=HERE, help="where RESULTS.md is (default bench/)")
    p.add_argument("--repeats", type=int, help="rows and moves (default 2, quick 1)")
    p.add_argument("--duration", type=int, help="wrk seconds (default 10, quick 2)")
    p.add_argument("--scale", default="", help="workers steps, e.g. 1,2,4,8 (default: none)")
    p.add_argument("--load-procs", type=int, default=max(1, (os.cpu_count() or 2) // 4))
    p.add_argument("--no-install", action="store_true")
    args = p.parse_args()
    args.repeats = max(1, min(args.repeats or (1 if args.quick else 2), 5))
    args.duration = max(1, min(args.duration or (2 if args.quick else 10), 60))
    args.warmup = 1 if args.quick else 2
    args.bulk_bytes = (10 if args.quick else 100) << 20
    args.bulk_name = install.bulk_name(args.bulk_bytes)
    args.bulk_count, args.bulk_timeout = (1 if args.quick else 3), 120
    args.scale = [int(s) for s in args.scale.split(",") if s.strip()]
    return args


def main() -> int:
    args = parse_args()
    interrupt_on_signals()
    if not args.no_install:
        install.ensure_debian_packages()
    raise_nofile_limit()
    cache = Path(os.environ.get("HOSTMUX_BENCH_CACHE", "/tmp/hostmux-bench-cache"))
    install.ensure_content(cache / "www", args.bulk_bytes)
    sys.path.insert(0, str(PROJECT))
    from rows import start_backend

    import keys  # the product's (after the path)

    work = Path(tempfile.mkdtemp(prefix="hostmux-cluster-"))
    results: dict[str, Any] = {
        "command": command_line(), "machine": machine_facts(None, None), "runs": [],
        "moves": [], "scale": [], "duration": args.duration,
        "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    }  # fmt: skip
    rows = {"hostmux-openssh": ROWS["hostmux-openssh"], **CLUSTER_ROWS}
    try:
        tls, _ = keys.ensure_dev_tls(work / "tls", DOMAIN)
        with Processes(work) as backend_procs:
            port = start_backend(backend_procs, work, cache / "www")
            bench = Bench(cache / "www", port, tls)
            names = list(rows)
            for rep in range(args.repeats):
                turn = rep % len(names)
                for name in names[turn:] + names[:turn]:
                    say(f"repeat {rep + 1}/{args.repeats}: {name}")
                    (run_dir := work / f"{name}-r{rep + 1}").mkdir()
                    r = measure_row(rows[name], bench, run_dir, args)
                    results["runs"].append(r)
                    say(f"  {r.get('rps', 0):.0f} req/s ok={r['ok']} {r.get('error', '')}")
                for how in (signal.SIGTERM, signal.SIGKILL):
                    say(f"repeat {rep + 1}: name move after {how.name}")
                    (run_dir := work / f"move-{how.name}-r{rep + 1}").mkdir()
                    m = name_move(bench, run_dir, how)
                    results["moves"].append(m)
                    say(f"  {m}")
            for workers in [0, *args.scale] if args.scale else []:
                say(f"scale: {'sshd + nginx' if workers == 0 else f'--workers {workers}'}")
                (run_dir := work / f"scale-{workers}").mkdir()
                results["scale"].append(scale_step(bench, run_dir, workers, args))
    except KeyboardInterrupt:
        say("interrupted: everything started was stopped")
        return 130
    finally:
        shutil.rmtree(work, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cluster-results.json").write_text(json.dumps(results, indent=1, default=str))
    section = render(results)
    write_section(args.out / "RESULTS.md", section)
    print(section)
    failed = [r for r in results["runs"] + results["moves"] + results["scale"] if not r["ok"]]
    return 1 if failed else 0


def _med(values: list[Any]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def _f(v: float | None, digits: int = 0) -> str:
    return "—" if v is None else f"{v:,.{digits}f}"


def render(results: dict[str, Any]) -> str:
    runs, machine = results["runs"], results["machine"]
    by_row: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        by_row.setdefault(r["row"], []).append(r)
    m = {
        name: {k: _med([r.get(k) for r in rs]) for k in ("rps", "p99_ms", "router_cpu_us", "mb_s")}
        for name, rs in by_row.items()
    }
    base = m.get("hostmux-openssh", {})
    lines = [
        BEGIN, "", "## Cluster: one router, cluster members, workers", "",
        f"Command: `{results['command']}` ({results['started']}; "
        f"{machine.get('cpu', '?')}, {machine.get('cpus_usable', '?')} usable CPUs, "
        f"hostmux {machine.get('hostmux_commit', '?')}). "
        "Medians of the repeats; each row started from scratch.", "",
        "| row | req/s | p99 ms | router CPU µs/req | CPU vs one router | MB/s |",
        "|---|---:|---:|---:|---:|---:|",
    ]  # fmt: skip
    all_rows = {"hostmux-openssh": ROWS["hostmux-openssh"], **CLUSTER_ROWS}
    for name, v in m.items():
        cpu, base_cpu = v["router_cpu_us"], base.get("router_cpu_us")
        ratio = cpu / base_cpu if cpu and base_cpu else None
        lines.append(
            f"| {all_rows[name].label} | {_f(v['rps'])} | {_f(v['p99_ms'], 1)} | "
            f"{_f(v['router_cpu_us'], 1)} | {_f(ratio, 2)}x | {_f(v['mb_s'])} |"
        )
    local_cpu = m.get("cluster-local", {}).get("router_cpu_us")
    forwarded_cpu = m.get("cluster-forwarded", {}).get("router_cpu_us")
    if local_cpu and forwarded_cpu:
        ratio = forwarded_cpu / local_cpu
        verdict = "met" if ratio <= 1.3 else "NOT met"
        lines += ["", f"Goal: forwarding costs at most 1.3x the router CPU of a local request: "
                  f"{ratio:.2f}x — {verdict}."]  # fmt: skip
    lines += ["", "### A name moves", "",
              "| signal to `a` | registry: `a` gone, ms | probes via `c` | failed "
              "| last failure, ms | goal |",
              "|---|---:|---:|---:|---:|---|"]  # fmt: skip
    for mv in results["moves"]:
        limit = 1000 if mv["signal"] == "SIGTERM" else (LEASE_TTL_S + 1) * 1000
        moved = mv.get("moved_ms")
        goal = "—" if moved is None else ("met" if moved < limit else "NOT met")
        lines.append(
            f"| {mv['signal']} | {_f(moved)} | {mv.get('probes', '—')} | {mv.get('failed', '—')} "
            f"| {_f(mv.get('last_failure_ms'))} | < {limit} ms: {goal} |"
            + (f" {mv['error'][:120]}" if "error" in mv else "")
        )
    if results["scale"]:
        lines += ["", "### Workers scale", "",
                  "| stack | req/s -c64 | p99 ms | req/s -c256 | p99 ms "
                  "| router CPU µs/req (-c64) |",
                  "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
        for s in results["scale"]:
            label = "sshd + nginx, keepalive" if s["workers"] == 0 else f"--workers {s['workers']}"
            c64, c256 = s.get("c64", {}), s.get("c256", {})
            lines.append(
                f"| {label} | {_f(c64.get('rps'))} | {_f(c64.get('p99_ms'), 1)} | "
                f"{_f(c256.get('rps'))} | {_f(c256.get('p99_ms'), 1)} | "
                f"{_f(c64.get('router_cpu_us'), 1)} |"
                + (f" {s['error'][:120]}" if "error" in s else "")
            )
    if results["scale"]:
        cpus = machine.get("cpus_usable") or 0
        lines += ["", (
            f"Each scale step loads for {results.get('duration', '?')} s after a 1 s settle, no "
            "warm-up; wrk shares the machine. "
            + (
                f"With {cpus} usable CPUs this table cannot show scaling: the goals (4 workers at "
                "least 3x one; 4 workers at least 1.0x sshd + nginx at -c64 and -c256) need "
                "at least "
                "8 free cores and are unmeasured here."
                if cpus < 8 else ""
            )
        )]  # fmt: skip
    lines += ["", END]
    return "\n".join(lines) + "\n"


def write_section(path: Path, section: str) -> None:
    """Replace the cluster section of RESULTS.md (or append it)."""
    text = path.read_text() if path.exists() else ""
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END) + "\n?", re.S)
    text = (
        pattern.sub(lambda _: section, text)
        if pattern.search(text)
        else text.rstrip() + "\n\n" + section
    )
    path.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
