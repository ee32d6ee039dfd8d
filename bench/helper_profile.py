"""Where the auth helper's CPU time goes: py-spy on the helper of a fresh auth-helper row.

    .venv/bin/python bench/helper_profile.py --out bench/profile-authhelper.svg

Starts the ``hostmux-authhelper`` row of ``run.py`` (router, example portal,
auth helper, OpenSSH ``ssh -R``), puts ``wrk -t2 -c64`` with the row's session
cookie through it, and samples the helper process with ``py-spy record``
(raw stacks summarised on stdout, then a flame graph SVG), as
``router_profile`` does for the router. ``--role router`` samples the router
of the same row instead. Every process is stopped by PID on the way out.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import install  # noqa: E402
from load import Target, wait_for_tunnel  # noqa: E402
from processes import Processes, interrupt_on_signals, raise_nofile_limit, say  # noqa: E402
from router_profile import profile_router  # noqa: E402
from rows import DOMAIN, PROJECT, ROWS, Bench, RowContext, start_backend  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=HERE / "profile-authhelper.svg")
    p.add_argument("--duration", type=int, default=10, help="py-spy seconds (twice: raw, SVG)")
    p.add_argument("--role", choices=("helper", "router"), default="helper")
    args = p.parse_args()
    interrupt_on_signals()
    raise_nofile_limit()
    py_spy = install.py_spy_path()
    if py_spy is None:
        p.error("py-spy not found (bench/run.py --profile installs it)")
    sys.path.insert(0, str(PROJECT))
    import keys

    work = Path(tempfile.mkdtemp(prefix="hostmux-helper-profile-"))
    www = Path("/tmp/hostmux-bench-cache/www")
    install.ensure_content(www, 10 << 20)
    tls, _ = keys.ensure_dev_tls(work / "tls", DOMAIN)
    with Processes(work) as procs:
        backend = start_backend(procs, work, www)
        bench = Bench(www, backend, tls)
        (work / "row").mkdir()
        plan = ROWS["hostmux-authhelper"].start(RowContext(bench, work / "row", procs))
        assert plan.client is not None
        client = procs.spawn("client", plan.client, cwd=bench.code)
        target = Target(plan.url, plan.host, tls.ca_cert, plan.headers)
        wait_for_tunnel(target, client, time.monotonic())
        pid = (plan.helpers if args.role == "helper" else plan.router)[0].pid
        say(f"py-spy on the {args.role} (pid {pid}) for 2 x {args.duration} s under wrk")
        result = profile_router(py_spy, pid, target, args.out, work, duration_s=args.duration)
    print(json.dumps(result, indent=1))
    return 0 if result.get("svg") else 1


if __name__ == "__main__":
    sys.exit(main())
