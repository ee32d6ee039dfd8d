"""Diagnostic: what one idle tunnel, or one idle keep-alive connection, costs the router.

    PYTHONPATH=bench/mem_probe .venv/bin/python bench/mem_probe/drive.py tunnels 2000
    PYTHONPATH=bench/mem_probe .venv/bin/python bench/mem_probe/drive.py keepalive 2000 --frames 0

Starts a router with ``sitecustomize``'s probe on (see there), has it report, adds
N idle tunnels (``tunnel_swarm.py``) or N idle keep-alive connections through one
tunnel (``keepalive_crowd.py``), has it report again, and prints the difference
per tunnel / connection: RSS, traced bytes, live objects by type, traced bytes
by source line. ``--frames 0``: no tracemalloc (its own overhead off the RSS).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from load import Target, wait_for_tunnel  # noqa: E402
from processes import Processes, raise_nofile_limit, say  # noqa: E402
from rows import DOMAIN, HOST, PROJECT, TUNNEL_NAME, start_backend, start_hostmux_router  # noqa: E402
from scale import LIMIT_FLAGS, PREFIX, ControlPipe  # noqa: E402


def report(router_pid: int, prefix: Path, n: int) -> dict[str, object]:
    os.kill(router_pid, signal.SIGUSR1)
    path = Path(f"{prefix}.{n}.txt")
    deadline = time.monotonic() + 120
    while not path.exists():
        if time.monotonic() > deadline:
            raise RuntimeError("no probe report")
        time.sleep(0.2)
    out: dict[str, object] = {"types": {}, "lines": {}}
    for line in path.read_text().splitlines():
        word, _, rest = line.partition(" ")
        if word == "type":
            count, name = rest.split(" ", 1)
            out["types"][name] = int(count)  # type: ignore[index]
        elif word in ("walk", "walktype"):
            out.setdefault("walk", []).append(line)  # type: ignore[attr-defined]
        elif word == "line":
            size, count, where = rest.split(" ", 2)
            out["lines"][where] = (int(size), int(count))  # type: ignore[index]
        else:
            out[word] = int(rest)
    return out


def compare(before: dict, after: dict, n: int, top: int) -> None:
    rss = (after["rss_kib"] - before["rss_kib"]) / n
    traced = (after["traced_bytes"] - before["traced_bytes"]) / n
    objs = (after["gc_objects"] - before["gc_objects"]) / n
    print(f"per unit: RSS {rss:.2f} KiB, traced {traced / 1024:.2f} KiB, gc objects {objs:.1f}")
    print(f"RSS before {before['rss_kib'] / 1024:.1f} MiB after {after['rss_kib'] / 1024:.1f} MiB")
    types = {k: after["types"].get(k, 0) - before["types"].get(k, 0) for k in after["types"]}
    print("\nlive gc-tracked objects per unit, by type:")
    for name, d in sorted(types.items(), key=lambda kv: -kv[1])[:top]:
        if d / n >= 0.5:
            print(f"  {d / n:6.2f}  {name}")
    lines = {}
    for where, (size, count) in after["lines"].items():
        b = before["lines"].get(where, (0, 0))
        lines[where] = (size - b[0], count - b[1])
    print("\ntraced bytes per unit, by line:")
    for where, (size, count) in sorted(lines.items(), key=lambda kv: -kv[1][0])[:top]:
        if size / n >= 16:
            print(f"  {size / n:8.0f} B {count / n:5.1f} blocks  {where}")


def main() -> None:
    from install import ensure_content

    import keys

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=("tunnels", "keepalive"))
    parser.add_argument("n", type=int)
    parser.add_argument("--frames", type=int, default=1, help="tracemalloc frames; 0: off")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--idle-s", type=float, default=3.0, help="idle time before the report")
    parser.add_argument("--walk", default="", help="types to walk from, e.g. SSHServerConnection")
    parser.add_argument("--code", type=Path, default=PROJECT, help="the tree the router runs")
    args = parser.parse_args()
    raise_nofile_limit()
    work = Path(tempfile.mkdtemp(prefix="hostmux-memprobe-"))
    prefix = work / "probe"
    os.environ["HOSTMUX_MEM_PROBE"] = str(prefix)
    os.environ["HOSTMUX_MEM_PROBE_FRAMES"] = str(args.frames)
    os.environ["PYTHONPATH"] = str(HERE)
    os.environ["HOSTMUX_MEM_PROBE_WALK"] = args.walk
    www = work / "www"
    ensure_content(www, 1 << 20)
    tls, _ = keys.ensure_dev_tls(work / "tls", DOMAIN)
    try:
        with Processes(work) as procs:
            port = start_backend(procs, work, www)
            router = start_hostmux_router(procs, work, tls, LIMIT_FLAGS, code=args.code)
            if args.what == "keepalive":
                listener = procs.spawn(
                    "listener", router.listener_client(TUNNEL_NAME, port), cwd=args.code
                )
                target = Target(f"http://127.0.0.1:{router.http_port}", HOST)
                wait_for_tunnel(target, listener, time.monotonic())
            time.sleep(2)
            before = report(router.proc.pid, prefix, 1)
            if args.what == "tunnels":
                argv = [
                    sys.executable, HERE.parent / "tunnel_swarm.py",
                    "--router", f"127.0.0.1:{router.ssh_port}",
                    "--identity-file", router.client_key,
                    "--known-hosts", router.known_hosts,
                    "--target", f"127.0.0.1:{port}",
                ]  # fmt: skip
                pipe = ControlPipe(procs.spawn("swarm", argv, cwd=args.code, pipes=True))
                pipe.receive(time.monotonic() + 60)
                pipe.send(f"open {PREFIX} 0 {args.n} 1")
                answer = pipe.receive(time.monotonic() + 60 + args.n / 5)
            else:
                argv = [
                    sys.executable, HERE.parent / "keepalive_crowd.py",
                    "--port", router.http_port, "--host", HOST, "--count", args.n,
                    "--hold-s", 600,
                ]  # fmt: skip
                pipe = ControlPipe(procs.spawn("crowd", argv, cwd=args.code, pipes=True))
                answer = pipe.receive(time.monotonic() + 60 + args.n / 20)
            say(f"{answer}")
            time.sleep(args.idle_s)
            after = report(router.proc.pid, prefix, 2)
            pipe.send("quit")
            compare(before, after, args.n, args.top)
            print("\n".join(after.get("walk", [])))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
