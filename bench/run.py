"""hostmux benchmark: every row side by side in one run, then the scale benchmark.

    .venv/bin/python bench/run.py            # full run -> bench/RESULTS.md, bench/results.png
    .venv/bin/python bench/run.py --quick --out /tmp/hostmux-bench   # CI smoke, < 2 minutes

See bench/README.md. Installs what it needs when missing (Debian nginx,
openssh-server/-client, wrk, curl, iproute2; matplotlib and py-spy into this
interpreter), starts every row from scratch per repeat (row order rotated),
and stops every process it started, by PID, on the way out — Ctrl-C and
errors included. Loopback only; every load step is bounded in time.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import cpu_guard  # noqa: E402
import install  # noqa: E402
from load import Target, run_curl, run_wrk, wait_for_tunnel  # noqa: E402
from machine import machine_facts  # noqa: E402
from processes import (  # noqa: E402
    Processes,
    interrupt_on_signals,
    non_loopback_listeners,
    raise_nofile_limit,
    say,
)
from rows import DOMAIN, PROJECT, ROWS, Bench, Row, RowContext, start_backend  # noqa: E402

MIB = 1024.0


def _log_sizes(paths: list[Path]) -> dict[Path, int]:
    return {p: p.stat().st_size if p.exists() else 0 for p in paths}


def _log_lines(since: dict[Path, int], limit: int = 10) -> list[str]:
    """Lines the router side logged after ``since`` (its logs' sizes then)."""
    lines: list[str] = []
    for path, offset in since.items():
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                text = f.read().decode(errors="replace")
        except OSError:
            continue
        lines += [f"{path.name}: {ln.strip()}" for ln in text.splitlines() if ln.strip()]
    return lines[:limit] + ([f"... {len(lines) - limit} more"] if len(lines) > limit else [])


def measure_row(row: Row, bench: Bench, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Start one row from scratch, time its tunnel, load it, stop it."""
    result: dict[str, Any] = {"row": row.name, "ok": False}
    with Processes(work) as procs:
        try:
            plan = row.start(RowContext(bench, work, procs))
            target = Target(plan.url, plan.host, bench.tls.ca_cert, plan.headers)
            _check_loopback(procs)
            started = time.monotonic()
            client = procs.spawn("client", plan.client, cwd=bench.code) if plan.client else None
            setup_ms = wait_for_tunnel(target, client, started)
            result["setup_ms"] = setup_ms if client else None
            _check_loopback(procs)
            # what the router side logs from here on (set-up noise such as nginx's
            # "no such socket" before ssh -R made it is left out)
            log_offsets = _log_sizes(plan.logs)
            time.sleep(1.0)

            def router_rss_mib() -> float | None:
                if not plan.router:
                    return None
                side = [*plan.router, *plan.helpers]
                return sum(p.rss_kib(tree=plan.router_tree) for p in side) / MIB

            def cpu_s() -> tuple[float, float, float]:
                """CPU time so far of the router, of its helpers and of the tunnel client."""
                router = sum(p.cpu_s(tree=plan.router_tree) for p in plan.router)
                helpers = sum(p.cpu_s(tree=plan.router_tree) for p in plan.helpers)
                return router, helpers, client.cpu_s() if client else 0.0

            result["rss_idle_mib"] = router_rss_mib()
            if args.warmup:
                run_wrk(target, duration_s=args.warmup)
            cpu_before = cpu_s()
            wrk = run_wrk(target, duration_s=args.duration)
            cpu_after = cpu_s()
            if wrk.requests and plan.router:
                router_s, helper_s, client_s = (
                    b - a for a, b in zip(cpu_before, cpu_after, strict=True)
                )
                result["router_cpu_us"] = router_s / wrk.requests * 1e6
                result["helper_cpu_us"] = helper_s / wrk.requests * 1e6 if plan.helpers else None
                result["client_cpu_us"] = client_s / wrk.requests * 1e6 if client else None
            result.update(
                requests=wrk.requests,
                rps=wrk.ok_rps,
                p50_ms=wrk.p50_ms,
                p99_ms=wrk.p99_ms,
                errors=wrk.errors,
                non2xx=wrk.non2xx,
                socket_errors=wrk.socket_errors,
            )
            if wrk.requests == 0:
                result["wrk_output"] = wrk.raw[-1500:]
            downloads = [
                run_curl(target, args.bulk_name, args.bulk_bytes, timeout_s=args.bulk_timeout)
                for _ in range(args.bulk_count)
            ]
            bad = [d for d in downloads if not d.ok]
            curl = bad[0] if bad else downloads[0]
            rates = sorted(d.mb_s for d in downloads if d.mb_s is not None)
            result.update(
                mb_s=rates[len(rates) // 2] if rates and not bad else None,
                bulk_runs=[d.mb_s for d in downloads],
                bulk_status=curl.status,
                bulk_bytes=curl.size,
                bulk_ok=not bad,
            )
            result["rss_after_mib"] = router_rss_mib()
            everyone = [*plan.router, *plan.helpers, *([client] if client else [])]
            result["died"] = [p.name for p in everyone if not p.alive()]
            result["log"] = _log_lines(log_offsets)
            result["ok"] = wrk.requests > 0 and not bad and not result["died"]
            if not result["ok"]:
                result["error"] = (
                    f"wrk requests {wrk.requests}, bulk HTTP {curl.status} {curl.size} bytes, "
                    f"died {result['died']}"
                )
        except (RuntimeError, OSError, ValueError) as exc:
            result["error"] = str(exc)[:2000]
    return result


def _check_loopback(procs: Processes) -> None:
    bad = non_loopback_listeners(procs.pids())
    if bad:
        raise RuntimeError(f"non-loopback listener(s), refusing to load: {bad}")


def profile_pass(bench: Bench, work: Path, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    """A fresh hostmux + OpenSSH row, sampled by py-spy under wrk (not a measured repeat)."""
    from router_profile import profile_router

    py_spy = install.py_spy_path()
    if py_spy is None:
        return {"error": "py-spy not found"}
    with Processes(work) as procs:
        try:
            plan = ROWS["hostmux-openssh"].start(RowContext(bench, work, procs))
            assert plan.client is not None
            client = procs.spawn("client", plan.client, cwd=bench.code)
            target = Target(plan.url, plan.host)
            wait_for_tunnel(target, client, time.monotonic())
            time.sleep(1.0)
            return profile_router(
                py_spy,
                plan.router[0].pid,
                target,
                out / "profile-router.svg",
                work,
                duration_s=args.profile_duration,
            )
        except (RuntimeError, OSError, ValueError, AssertionError) as exc:
            return {"error": str(exc)[:1000]}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="CI smoke: 2 s loads, 1 repeat, 10 MiB bulk, scale N=1,100, no profile",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=HERE,
        help="directory for RESULTS.md, results.png, results.json (default: bench/)",
    )
    p.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, of {','.join(ROWS)}")
    p.add_argument("--repeats", type=int, help="default 2 (quick: 1)")
    p.add_argument("--duration", type=int, help="wrk seconds per row (default 10, quick: 2)")
    p.add_argument("--warmup", type=int, help="wrk warm-up seconds (default 2, quick: 1)")
    p.add_argument("--bulk-mib", type=int, help="bulk file size (default 100, quick: 10)")
    p.add_argument(
        "--bulk-count", type=int, help="downloads per row and repeat, median (3, quick: 1)"
    )
    p.add_argument("--bulk-timeout", type=int, default=120, help="curl --max-time")
    p.add_argument("--nginx-workers", default="auto")
    p.add_argument(
        "--router-log-level",
        default="warning",
        choices=("debug", "info", "warning"),
        help="hostmux routers' log level (info: one access-log line per request)",
    )
    p.add_argument("--no-scale", action="store_true", help="skip the scale benchmark")
    p.add_argument(
        "--scale-steps",
        help="tunnel counts (default 1,100,1000,10000,stretch; quick: 1,100); stretch: 100,000 "
        "or what the open-files hard limit allows",
    )
    p.add_argument(
        "--keepalive-connections",
        type=int,
        help="idle keep-alive connections (default 10000, quick: 100)",
    )
    p.add_argument(
        "--profile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="py-spy the router under load (default: on, quick: off)",
    )
    p.add_argument("--profile-duration", type=int, default=10, help="py-spy seconds")
    p.add_argument("--rev", help="benchmark this git revision (a snapshot), not the working tree")
    p.add_argument(
        "--code", type=Path,
        help="benchmark the product files in this directory (an unpacked tree, e.g. where "
        "there is no git), not the working tree",
    )  # fmt: skip
    p.add_argument("--note", action="append", default=[], help="a line for RESULTS.md's notes")
    p.add_argument(
        "--max-cpu-ratio", type=float, metavar="X",
        help=f"fail when the router CPU per request of {cpu_guard.ROUTER_ROW} exceeds X times "
        f"{cpu_guard.CEILING_ROW}'s in this run (CI: {cpu_guard.DEFAULT_MAX_RATIO:g}); "
        "prints the ratio",
    )  # fmt: skip
    p.add_argument("--no-install", action="store_true", help="do not apt-get / pip install")
    p.add_argument("--keep", action="store_true", help="keep the work directory (configs, logs)")
    args = p.parse_args()  # fmt: skip
    quick = args.quick
    args.repeats = max(1, min(args.repeats or (1 if quick else 2), 10))
    args.duration = max(1, min(args.duration or (2 if quick else 10), 60))
    args.warmup = max(0, min(args.warmup if args.warmup is not None else (1 if quick else 2), 30))
    args.bulk_bytes = (args.bulk_mib or (10 if quick else 100)) << 20
    args.bulk_name = install.bulk_name(args.bulk_bytes)
    args.bulk_count = max(1, min(args.bulk_count or (1 if quick else 3), 10))
    args.scale_steps = args.scale_steps or ("1,100" if quick else "1,100,1000,10000,stretch")
    if args.keepalive_connections is None:
        args.keepalive_connections = 100 if quick else 10_000
    if args.profile is None:
        args.profile = not quick
    args.rows = [r for r in args.rows.split(",") if r]
    unknown = [r for r in args.rows if r not in ROWS]
    if unknown:
        p.error(f"unknown rows {unknown}; known: {', '.join(ROWS)}")
    if args.max_cpu_ratio is not None:
        if not args.max_cpu_ratio > 0:
            p.error("--max-cpu-ratio: must be a positive number")
        guarded = {cpu_guard.ROUTER_ROW, cpu_guard.CEILING_ROW}
        if not guarded <= set(args.rows):
            p.error(f"--max-cpu-ratio: needs the rows {', '.join(sorted(guarded))} in --rows")
    return args


def command_line() -> str:
    exe = os.path.relpath(sys.executable)
    return shlex.join([exe if not exe.startswith("..") else sys.executable, *sys.argv])


def snapshot(rev: str, dest: Path) -> Path:
    """The product's files at ``rev`` (``git archive``), to run instead of the working tree."""
    dest.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(PROJECT), "archive", rev], capture_output=True, check=True, timeout=120
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True, timeout=120)
    return dest


def main() -> int:
    args = parse_args()
    interrupt_on_signals()
    if not args.no_install:
        install.ensure_debian_packages()
        install.ensure_pip_package("matplotlib", "matplotlib")
        if args.profile and install.py_spy_path() is None:
            install.ensure_pip_package("py_spy", "py-spy")
    _, open_files_hard = raise_nofile_limit()
    cache = Path(os.environ.get("HOSTMUX_BENCH_CACHE", "/tmp/hostmux-bench-cache"))
    install.ensure_content(cache / "www", args.bulk_bytes)
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="hostmux-bench-"))
    say(f"work dir {work}")
    results: dict[str, Any] = {"runs": []}
    try:
        code = snapshot(args.rev, work / "src") if args.rev else (args.code or PROJECT).resolve()
        sys.path.insert(0, str(code))
        import keys  # the product's (from the snapshot with --rev)

        results.update(
            command=command_line(),
            started=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            machine=machine_facts(args.rev, args.code),
            options={k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        )
        tls, _ = keys.ensure_dev_tls(work / "tls", DOMAIN)
        with Processes(work) as backend_procs:
            backend_port = start_backend(backend_procs, work, cache / "www", args.nginx_workers)
            bench = Bench(
                cache / "www", backend_port, tls, args.nginx_workers, code, args.router_log_level
            )
            say(f"backend nginx on 127.0.0.1:{backend_port}")
            for rep in range(args.repeats):
                turn = rep % len(args.rows)
                for name in args.rows[turn:] + args.rows[:turn]:
                    say(f"repeat {rep + 1}/{args.repeats}: {name}")
                    run_dir = work / f"{name}-r{rep + 1}"
                    run_dir.mkdir()
                    r = measure_row(ROWS[name], bench, run_dir, args)
                    r["repeat"] = rep + 1
                    results["runs"].append(r)
                    say("  " + _one_line(r))
            if args.profile:
                say("profile: py-spy on the router under wrk (hostmux + OpenSSH)")
                (work / "profile").mkdir()
                results["profile"] = profile_pass(bench, work / "profile", args.out, args)
                say(f"  {results['profile'].get('error') or 'ok'}")
            if not args.no_scale:
                from scale import ScaleOptions, parse_steps, run_scale

                opts = ScaleOptions(
                    steps=parse_steps(args.scale_steps, open_files_hard),
                    wrk_duration_s=2 if args.quick else 5,
                    keepalive_connections=args.keepalive_connections,
                )
                results["scale"] = run_scale(opts, work / "scale", backend_port, tls, code)
    except KeyboardInterrupt:
        say("interrupted: everything started was stopped; no report written")
        return 130
    finally:
        if args.keep:
            say(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    results["finished"] = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    results["machine"]["load_average_end"] = os.getloadavg()

    from report import write_report

    (args.out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    failed = write_report(results, args.out)
    say(f"wrote {args.out / 'RESULTS.md'}, {args.out / 'results.png'}, results.json")
    print((args.out / "RESULTS.md").read_text())
    if args.max_cpu_ratio is not None:
        from report import medians

        verdict = cpu_guard.judge(medians(results["runs"]), args.max_cpu_ratio)
        print(verdict.line(), flush=True)  # last, so the CI log ends with it
        failed = failed or not verdict.passed
    return 1 if failed else 0


def _one_line(r: dict[str, Any]) -> str:
    if not r.get("ok"):
        return f"FAILED: {r.get('error', '?')[:400]}"
    setup = f"{r['setup_ms']:.0f} ms" if r.get("setup_ms") is not None else "-"
    rss = r.get("rss_idle_mib")
    cpu, helper = r.get("router_cpu_us"), r.get("helper_cpu_us")
    return (
        f"{r['rps']:,.0f} req/s p50 {r['p50_ms']} ms p99 {r['p99_ms']} ms err {r['errors']}; "
        f"{r['mb_s']:,.0f} MB/s; setup {setup}"
        + (f"; RSS {rss:.1f} -> {r['rss_after_mib']:.1f} MiB" if rss is not None else "")
        + (f"; router CPU {cpu:.0f} us/req" if cpu is not None else "")
        + (f", helper CPU {helper:.0f} us/req" if helper is not None else "")
    )


if __name__ == "__main__":
    sys.exit(main())
