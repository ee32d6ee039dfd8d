"""The whole data path in one command: router + sample app + listener, on *.localhost.

Run it with ``./dev demo`` (or ``python -m examples.demo``). It

1. starts ``hostmux-router`` with no configuration at all — its embedded
   default: ``*.localhost`` on loopback, SSH 2222, HTTPS 8443, HTTP 8080, a
   development CA and host key in ``$XDG_STATE_HOME/hostmux``;
2. starts the sample app (HTTP page, WebSocket echo, SSE) on a free port;
3. makes a key for the demo, authorizes it, and starts ``hostmux-listener``
   pinned to the router's host key, asking for the name ``demo``;
4. prints the URL to open, and stops everything on Ctrl-C.

Every piece is a separate process, exactly as it would run on separate
machines; the demo only starts them and reads their output.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from functools import partial
from pathlib import Path

import trio

import keys

# The router and listener start in well under a second; a slow machine gets more.
START_TIMEOUT_S = 60.0

# The router's start-up line: where it listens, its host key, the dev CA.
ROUTER_READY = r"event=router_ready .*ssh=(\S+) https=(\S+) http=(\S+) host_key=(\S+) ca=(\S+)"


def _state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(base) / "hostmux"


async def _start(
    nursery: trio.Nursery, name: str, argv: list[str]
) -> tuple[trio.Process, trio.MemoryReceiveChannel[str]]:
    """Start ``argv``; its output lines go to a channel (and to our stderr, prefixed)."""
    send, receive = trio.open_memory_channel[str](1000)
    process: trio.Process = await nursery.start(
        partial(trio.run_process, argv, check=False, stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    )  # fmt: skip

    async def pump() -> None:
        assert process.stdout is not None
        buffer = b""
        async with send:
            while chunk := await process.stdout.receive_some(65536):
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for raw in lines:
                    line = raw.decode("utf-8", "replace")
                    if os.environ.get("HOSTMUX_DEMO_VERBOSE"):
                        print(f"[{name}] {line}", file=sys.stderr)
                    with contextlib.suppress(trio.WouldBlock):  # nobody reads after start-up
                        send.send_nowait(line)

    nursery.start_soon(pump)
    return process, receive


async def _wait_line(
    lines: trio.MemoryReceiveChannel[str], pattern: str, what: str
) -> re.Match[str]:
    regex = re.compile(pattern)
    with trio.move_on_after(START_TIMEOUT_S):
        async for line in lines:
            if match := regex.search(line):
                return match
            if "level=error" in line or line.startswith("hostmux-"):
                print(f"  {what}: {line}", file=sys.stderr)
    raise SystemExit(f"demo: {what} did not start (run with HOSTMUX_DEMO_VERBOSE=1 to see why)")


async def main() -> None:
    state = _state_dir()
    demo_dir = state / "demo"
    demo_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    key_path = demo_dir / "demo_key"
    if not key_path.exists():
        keys.write_keypair(keys.generate_keypair(comment="hostmux-demo"), key_path)
    public_line = key_path.with_name(key_path.name + ".pub").read_text().strip()

    async with trio.open_nursery() as nursery:
        # 1. The router, on its embedded default (no flags, no config file).
        _, router_lines = await _start(nursery, "router", [sys.executable, "-m", "router"])
        ready = await _wait_line(router_lines, ROUTER_READY, "the router")
        ssh_address, host_key, ca = ready[1], ready[4], ready[5]

        # 2. Authorize the demo key (the router re-reads the file on change).
        authorized = state / "authorized_keys"
        if public_line not in authorized.read_text():
            with authorized.open("a") as fh:
                fh.write(f'permitlisten="demo" {public_line}\n')

        # 3. The app, and the listener that exposes it as https://demo.localhost:8443.
        _, app_lines = await _start(nursery, "app", [sys.executable, "-m", "examples.sample_app"])
        app = await _wait_line(app_lines, r"listening on http://(\S+)", "the sample app")
        _, listener_lines = await _start(
            nursery, "listener",
            [sys.executable, "-m", "listener", "--router", ssh_address, "--name", "demo",
             "--identity-file", str(key_path), "--host-key-fingerprint", host_key,
             "--target", app[1]],
        )  # fmt: skip
        url = (await _wait_line(listener_lines, r"^(https://\S+)$", "the listener"))[1]

        print(
            f"\nhostmux demo is up.\n\n  Open    {url}\n"
            f"  curl    curl --cacert {ca} {url}/\n"
            f"  trust   {ca} (development CA; import it in your browser to skip the warning)\n"
            f"  ssh     ssh -p {ssh_address.rsplit(':', 1)[1]} -R myapp:80:localhost:3000 localhost"
            f"   (keys in {authorized})\n\nCtrl-C stops everything.\n",
            flush=True,
        )
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                break
        print("\nstopping...", file=sys.stderr)
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(main)
