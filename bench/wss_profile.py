"""py-spy flame graphs of both ends of the WebSocket transport (issue 18).

    .venv/bin/python bench/wss_profile.py --out bench --suffix ""        # after a change
    .venv/bin/python bench/wss_profile.py --out bench --suffix -before   # (on the old code)

Starts the ``hostmux-wss`` row (router + ``hostmux-listener --transport wss``),
then samples the router and the listener at once with two ``py-spy record``
processes: first under wrk (small requests), then under bulk downloads (curl,
one after another, until py-spy is done). Writes
``profile-wss-router{suffix}.svg``, ``profile-wss-listener{suffix}.svg`` (small
requests) and ``profile-wss-*-bulk{suffix}.svg`` into ``--out``, and prints the
top own-time functions of each. Every load is bounded in time; every process
started is stopped by PID on the way out.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import install  # noqa: E402
from load import Target, wait_for_tunnel  # noqa: E402
from processes import Processes, interrupt_on_signals, say  # noqa: E402
from router_profile import summarise_raw  # noqa: E402
from rows import DOMAIN, PROJECT, ROWS, Bench, RowContext, start_backend  # noqa: E402


def _record(py_spy: str, pid: int, out: Path, fmt: str, duration_s: int) -> subprocess.Popen[str]:
    cmd = [py_spy, "record", "--pid", str(pid), "--duration", str(duration_s), "--rate", "200"]
    return subprocess.Popen(
        [*cmd, "--format", fmt, "-o", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _sample_both(
    py_spy: str, pids: dict[str, int], out: Path, tag: str, fmt: str, duration_s: int
) -> dict[str, Path]:
    ext = "svg" if fmt == "flamegraph" else "raw"
    files = {name: out / f"profile-wss-{name}{tag}.{ext}" for name in pids}
    spies = [_record(py_spy, pid, files[name], fmt, duration_s) for name, pid in pids.items()]
    for spy in spies:
        _, err = spy.communicate(timeout=duration_s + 60)
        if spy.returncode != 0:
            say(f"py-spy: {err.strip()[:300]}")
    return files


def _summary(raw: Path) -> None:
    if not raw.exists():
        return
    s = summarise_raw(raw.read_text())
    say(f"{raw.name}: {s['samples']} samples")
    for row in s["own"][:12]:
        say(f"  {row['pct']:5.1f}%  {row['function']} ({row['file']})")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=HERE)
    p.add_argument("--suffix", default="")
    p.add_argument("--duration", type=int, default=8, help="py-spy seconds per pass")
    p.add_argument("--bulk-mib", type=int, default=50)
    p.add_argument("--py-spy", default=None, help="py-spy to use (default: venv, PATH)")
    args = p.parse_args()
    interrupt_on_signals()
    py_spy = args.py_spy or install.py_spy_path()
    if py_spy is None:
        say("py-spy not found")
        return 1
    cache = Path("/tmp/hostmux-bench-cache")
    bulk_bytes = args.bulk_mib * 1024 * 1024
    install.ensure_content(cache / "www", bulk_bytes)
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="hostmux-wss-profile-"))
    sys.path.insert(0, str(PROJECT))
    import keys

    tls, _ = keys.ensure_dev_tls(work / "tls", DOMAIN)
    with Processes(work) as procs:
        backend_port = start_backend(procs, work, cache / "www", 1)
        bench = Bench(cache / "www", backend_port, tls, 1, PROJECT, "warning")
        plan = ROWS["hostmux-wss"].start(RowContext(bench, work, procs))
        assert plan.client is not None
        client = procs.spawn("client", plan.client, cwd=PROJECT)
        target = Target(plan.url, plan.host)
        wait_for_tunnel(target, client, time.monotonic())
        pids = {"router": plan.router[0].pid, "listener": client.pid}
        wrk_s = 2 * args.duration + 6
        cmd = ["wrk", "-t2", "-c64", f"-d{wrk_s}s", "-H", f"Host: {target.host}"]
        load = subprocess.Popen(
            [*cmd, f"{target.url}/1k"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        time.sleep(1.0)
        raws = _sample_both(py_spy, pids, work, "", "raw", args.duration)
        _sample_both(py_spy, pids, args.out, args.suffix, "flamegraph", args.duration)
        out, _ = load.communicate(timeout=wrk_s + 30)
        say("wrk: " + " ".join(ln.strip() for ln in out.splitlines() if "Requests/sec" in ln))
        for raw in raws.values():
            _summary(raw)
        # bulk: downloads one after another for as long as py-spy samples
        for fmt, out_dir, tag in (("raw", work, "-bulk"), ("flamegraph", args.out, "-bulk")):
            url = f"{target.url}/{install.bulk_name(bulk_bytes)}"
            curl = ["curl", "-s", "-o", "/dev/null", "--max-time", "60", "-H"]
            script = (
                f'while [ "$(date +%s)" -lt {int(time.time()) + args.duration + 4} ]; do '
                f'{" ".join(curl)} "Host: {target.host}" -w "%{{speed_download}}\\n" {url}; done'
            )
            bulk = subprocess.Popen(["sh", "-c", script], stdout=subprocess.PIPE, text=True)
            time.sleep(0.5)
            files = _sample_both(py_spy, pids, out_dir, tag + (args.suffix if fmt != "raw" else ""),
                                 fmt, args.duration)  # fmt: skip
            speeds, _ = bulk.communicate(timeout=args.duration + 90)
            rates = [float(s) / 1e6 for s in speeds.split()]
            say(f"bulk ({fmt}): MB/s per download {[round(r) for r in rates]}")
            if fmt == "raw":
                for raw in files.values():
                    _summary(raw)
    return 0


if __name__ == "__main__":
    sys.exit(main())
