"""Where a forwarded request's router CPU goes: py-spy on both routers of the forwarded row.

    .venv/bin/python bench/cluster_profile.py --out bench   # -> profile-forward-{sender,holder}.svg

Starts ``cluster_rows``' ``cluster-forwarded`` row (router ``a`` holds the
OpenSSH tunnel, load goes to router ``b``, which forwards every request over
the router link) and, with ``--local``, the ``cluster-local`` row too. Under
wrk -t2 -c64 on the 1 KiB file, ``py-spy record`` samples each router at the
same time, once as raw stacks (summarised into ``cluster-profile.json`` by
``router_profile.summarise_raw``) and once as a flame graph. It also counts
the link connections the sender dialled (``ss``), to check that a keep-alive
browser connection keeps one link stream for all its requests.

py-spy is the bench's profiler (``install.py_spy_path``: ``pip install
py-spy`` into the bench's interpreter); it is not a dependency of hostmux.
Every process is stopped by PID on the way out; every wait is bounded.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import install  # noqa: E402
from cluster_rows import CLUSTER_ROWS  # noqa: E402
from load import Target, wait_for_tunnel  # noqa: E402
from processes import Processes, interrupt_on_signals, raise_nofile_limit, say  # noqa: E402
from router_profile import summarise_raw  # noqa: E402
from rows import DOMAIN, PROJECT, Bench, RowContext, start_backend  # noqa: E402

# Reason: py-spy's default; enough samples in 8 s for shares to within a percent or two.
RATE_HZ = 200


def _record(py_spy: str, pid: int, out: Path, fmt: str, duration_s: int) -> subprocess.Popen[str]:
    cmd = [py_spy, "record", "--pid", str(pid), "--duration", str(duration_s)]
    cmd += ["--rate", str(RATE_HZ), "--format", fmt, "-o", str(out)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _link_connections(port: int) -> int:
    """Established TCP connections to the holder's link port (the sender's pool)."""
    out = subprocess.run(
        ["ss", "-Htn", "state", "established", f"( dport = :{port} )"],
        capture_output=True, text=True, timeout=10, check=False,
    ).stdout  # fmt: skip
    return len([line for line in out.splitlines() if line.strip()])


def profile_row(
    row: str, bench: Bench, work: Path, out: Path, py_spy: str, duration_s: int
) -> dict[str, Any]:
    """One fresh row; each router sampled for ``duration_s`` (raw, then flame graph)."""
    result: dict[str, Any] = {"row": row}
    with Processes(work) as procs:
        plan = CLUSTER_ROWS[row].start(RowContext(bench, work, procs))
        assert plan.client is not None
        client = procs.spawn("client", plan.client, cwd=bench.code)
        target = Target(plan.url, plan.host)
        wait_for_tunnel(target, client, time.monotonic())
        roles = ["holder", "sender"] if len(plan.router) == 2 else ["local"]
        wrk_s = 2 * duration_s + 6
        cmd = ["wrk", "-t2", "-c64", f"-d{wrk_s}s", "--latency", "-H", f"Host: {target.host}"]
        load = subprocess.Popen(
            [*cmd, f"{target.url}/1k"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        try:
            time.sleep(2.0)  # past wrk's connection set-up (a bench, not a test)
            cpu0 = [p.cpu_s() for p in plan.router]
            for fmt, suffix in (("raw", "raw"), ("flamegraph", "svg")):
                files = [work / f"{role}.{suffix}" for role in roles]
                samplers = [
                    _record(py_spy, p.pid, f, fmt, duration_s)
                    for p, f in zip(plan.router, files, strict=True)
                ]
                for s in samplers:
                    s.communicate(timeout=duration_s + 60)
                for role, f in zip(roles, files, strict=True):
                    if not f.exists():
                        result[f"{role}_error"] = "py-spy wrote nothing"
                    elif fmt == "raw":
                        result[role] = summarise_raw(f.read_text())
                    else:
                        name = f"profile-forward-{role}.svg" if row != "cluster-local" else (
                            "profile-cluster-local.svg"
                        )  # fmt: skip
                        shutil.copyfile(f, out / name)
                        result[f"{role}_svg"] = name
            result["router_cpu_s"] = [p.cpu_s() - c for p, c in zip(plan.router, cpu0, strict=True)]
            if len(plan.router) == 2:
                holder_argv = " ".join(plan.router[0].argv)
                link = re.search(r"--cluster-listen 127\.0\.0\.1:(\d+)", holder_argv)
                if link:
                    result["link_connections"] = _link_connections(int(link.group(1)))
            text, _ = load.communicate(timeout=wrk_s + 30)
        finally:
            if load.poll() is None:
                load.kill()
                load.wait(timeout=10)
        m = re.search(r"(\d+) requests in", text)
        requests = int(m.group(1)) if m else 0
        result["wrk_requests"] = requests
        m = re.search(r"Requests/sec:\s+([\d.]+)", text)
        result["wrk_rps"] = float(m.group(1)) if m else None
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=HERE, help="where the SVGs and JSON go")
    p.add_argument("--duration", type=int, default=8, help="py-spy seconds per format")
    p.add_argument("--local", action="store_true", help="also profile the cluster-local row")
    args = p.parse_args()
    interrupt_on_signals()
    raise_nofile_limit()
    py_spy = install.py_spy_path()
    if py_spy is None:
        print("py-spy not found: .venv/bin/pip install py-spy", file=sys.stderr)
        return 2
    cache = Path(os.environ.get("HOSTMUX_BENCH_CACHE", "/tmp/hostmux-bench-cache"))
    install.ensure_content(cache / "www", 10 << 20)
    sys.path.insert(0, str(PROJECT))
    import keys

    work = Path(tempfile.mkdtemp(prefix="hostmux-cluster-profile-"))
    results = []
    try:
        tls, _ = keys.ensure_dev_tls(work / "tls", DOMAIN)
        with Processes(work) as backend_procs:
            port = start_backend(backend_procs, work, cache / "www")
            bench = Bench(cache / "www", port, tls)
            for row in ["cluster-forwarded"] + (["cluster-local"] if args.local else []):
                say(f"profile: {row}")
                (run_dir := work / row).mkdir()
                results.append(profile_row(row, bench, run_dir, args.out, py_spy, args.duration))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cluster-profile.json").write_text(json.dumps(results, indent=1))
    for r in results:
        say(f"{r['row']}: {r.get('wrk_rps')} req/s, link connections {r.get('link_connections')}")
        for role in ("sender", "holder", "local"):
            if role in r:
                say(f"  {role}: {r[role]['samples']} samples; top own:")
                for f in r[role]["own"][:12]:
                    say(f"    {f['pct']:5.1f}%  {f['function']} ({f['file']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
