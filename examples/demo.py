"""The whole system in one command: portal, router, and two instances on *.localhost.

Run it with ``./dev demo`` (or ``python -m examples.demo``). It starts, each as
its own process, exactly as they would run on separate machines:

1. the example **portal** on http://localhost:8000 with two users, alice and
   bob (passwords printed below);
2. the **router** on its embedded default (``*.localhost``, SSH 2222, HTTPS
   8443, a development CA) in portal mode: it authenticates instances by the
   portal's keys and reports tunnels to the portal;
3. two **instances**, one owned by alice and one by bob, each a pod's worth of
   processes: the sample app, the **auth helper** in front of it, and the
   **listener** that dials the router, checks its URL and publishes it to the
   portal with a signed JWT.

Open the portal, log in, click an instance: the auth helper sends you through
the portal's OAuth2 login and lets you in only to your own instances (or
those shared with you). Ctrl-C stops everything.

It also makes a demo SSH key that the router accepts, and prints the plain
``ssh -R`` command that opens a tunnel of your own with it.

Only one demo runs at a time: a second one sees the first (a lock in the state
directory, then the ports it needs) and says so before it touches anything.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from functools import partial
from pathlib import Path
from urllib.request import Request, urlopen

import trio

import keys
from examples.portal.pods import instance_environment

# The pieces start in well under a second; a slow machine gets more.
START_TIMEOUT_S = 60.0
PORTAL_PORT = 8000
# The router's start-up line: where it listens, its host key, the dev CA.
ROUTER_READY = r"event=router_ready .*ssh=(\S+) https=(\S+) http=(\S+) host_key=(\S+) ca=(\S+)"
USERS = {"alice": "alice-demo-password", "bob": "bob-demo-password"}
ADMIN_TOKEN_BYTES = 24
# The auth helpers' ports, one per instance (the listeners' targets).
HELPER_PORTS = {"alice": 8101, "bob": 8102}
# The router's embedded default ports (SSH, HTTPS, HTTP) on loopback.
ROUTER_PORTS = (2222, 8443, 8080)
# The router's /metrics, /healthz and /readyz (loopback only: they are not authenticated).
METRICS_PORT = 9464


def _state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(base) / "hostmux"


class Processes:
    """Starts processes in a nursery and hands out their output lines."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery

    async def start(
        self, name: str, argv: list[str], env: dict[str, str] | None = None
    ) -> trio.MemoryReceiveChannel[str]:
        send, receive = trio.open_memory_channel[str](1000)
        process: trio.Process = await self._nursery.start(
            partial(trio.run_process, argv, check=False, stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                    env={**os.environ, **(env or {})})
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
                        with contextlib.suppress(trio.WouldBlock):  # nobody reads later on
                            send.send_nowait(line)

        self._nursery.start_soon(pump)
        return receive


async def wait_line(
    lines: trio.MemoryReceiveChannel[str], pattern: str, what: str
) -> re.Match[str]:
    regex = re.compile(pattern)
    with trio.move_on_after(START_TIMEOUT_S):
        async for line in lines:
            if match := regex.search(line):
                return match
            if "level=error" in line or "error:" in line:
                print(f"  {what}: {line}", file=sys.stderr)
    raise SystemExit(f"demo: {what} did not start (run with HOSTMUX_DEMO_VERBOSE=1 to see why)")


def claim_demo(state: Path) -> int:
    """Hold the demo lock (kept until the process exits); SystemExit if another demo runs.

    Checked before anything is deleted or started: a second demo must not wipe
    the running one's keys and then fail on its ports.
    """
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    lock = state / "demo.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = os.read(fd, 32).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise SystemExit(
            f"demo: another demo is running (pid {pid}); stop it with Ctrl-C first"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def ports_in_use(ports: list[int]) -> list[int]:
    """Which of ``ports`` something already listens on, on loopback."""
    busy = []
    for port in ports:
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do
            try:
                probe.bind(("127.0.0.1", port))
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
                busy.append(port)
    return busy


def demo_ssh_access(demo: Path, state: Path, host_key_line: str, ssh_port: int) -> str:
    """A key the demo router accepts, a known_hosts that pins it, and the ssh command.

    The router's authorized_keys file for the demo holds the demo key and the
    lines of the user's own ``STATE/authorized_keys`` (seeded from ``~/.ssh``),
    so the user's keys keep working too.
    """
    key = demo / "ssh-key"
    keys.write_keypair(keys.generate_keypair(comment="hostmux-demo"), key)
    own = state / "authorized_keys"
    lines = [key.with_suffix(".pub").read_text().strip()]
    if own.is_file():
        lines += [line for line in own.read_text().splitlines() if line.strip()]
    (demo / "authorized_keys").write_text("\n".join(lines) + "\n")
    known_hosts = demo / "known_hosts"
    known_hosts.write_text(f"[localhost]:{ssh_port} {host_key_line}\n")
    return (
        f"ssh -i {key} -o IdentitiesOnly=yes -o UserKnownHostsFile={known_hosts} "
        f"-p {ssh_port} -R myapp:80:localhost:3000 localhost"
    )


def portal_call(portal: str, token: str, method: str, path: str, body: object) -> dict[str, str]:
    request = Request(
        portal + path, method=method, data=json.dumps(body).encode(),
        headers={"authorization": f"Bearer {token}", "content-type": "application/json"},
    )  # fmt: skip
    with urlopen(request, timeout=10) as response:
        text = response.read()
    return dict(json.loads(text)) if text else {}


async def main() -> None:
    state = _state_dir()
    claim_demo(state)
    busy = ports_in_use([PORTAL_PORT, *ROUTER_PORTS, METRICS_PORT, *HELPER_PORTS.values()])
    if busy:
        raise SystemExit(
            f"demo: port {', '.join(map(str, busy))} in use on 127.0.0.1 "
            "(another program? stop it first)"
        )
    demo = state / "demo"
    shutil.rmtree(demo, ignore_errors=True)  # a fresh portal and fresh instances each run
    demo.mkdir(parents=True, mode=0o700)
    token = os.urandom(ADMIN_TOKEN_BYTES).hex()
    events_secret = os.urandom(ADMIN_TOKEN_BYTES).hex()
    portal = f"http://localhost:{PORTAL_PORT}"
    python = sys.executable

    async with trio.open_nursery() as nursery:
        procs = Processes(nursery)
        # 1. The portal, with the demo users.
        users = [arg for name, pw in USERS.items() for arg in ("--user", f"{name}:{pw}")]
        lines = await procs.start("portal", [
            python, "-m", "examples.portal", "serve", "--port", str(PORTAL_PORT),
            "--host", "127.0.0.1", "--state-dir", str(demo / "portal"), "--public-url", portal,
            "--admin-token", token, "--events-secret", events_secret, *users,
            # Instances live under localhost; revocations are pushed through the router,
            # whose development CA will be in its state directory.
            "--router-domain", "localhost", "--router-ca-file", str(state / "tls" / "dev-ca.pem"),
        ])  # fmt: skip
        await wait_line(lines, r"portal listening on", "the portal")
        ca_file = demo / "portal-ssh-ca.pub"
        ca_file.write_text((demo / "portal" / "ssh-ca.pub").read_text())

        # 2. The router on its embedded default, in portal mode; the demo's
        #    authorized_keys is filled in below, once the host key exists (the
        #    router re-reads it when it changes).
        (demo / "authorized_keys").touch(mode=0o600)
        lines = await procs.start("router", [
            python, "-m", "router", "--authorized-keys-file", str(demo / "authorized_keys"),
            "--portal-keys-url", portal + "/instances/{id}/keys",
            "--portal-ca-keys-file", str(ca_file), "--events-url", portal + "/router-events",
            "--events-secret", events_secret, "--metrics-listen", f"127.0.0.1:{METRICS_PORT}",
        ])  # fmt: skip
        ready = await wait_line(lines, ROUTER_READY, "the router")
        ssh_address, router_ca = ready[1], ready[5]
        host_key = " ".join((state / "ssh_host_key.pub").read_text().split()[:2])
        ssh_hint = demo_ssh_access(demo, state, host_key, int(ssh_address.rsplit(":", 1)[1]))
        portal_call(portal, token, "PUT", "/admin/routers",
                    {"servers": [ssh_address], "host_keys": [host_key]})  # fmt: skip

        # 3. Two instances: app + auth helper + listener each.
        urls = {}
        for owner, helper_port in HELPER_PORTS.items():
            instance = portal_call(portal, token, "POST", "/instances",
                                   {"owner": owner, "id": f"{owner}-lab"})  # fmt: skip
            pod = demo / instance["id"]
            pod.mkdir(mode=0o700)
            key = pod / "instance-key.pem"
            key.write_text(instance["private_key_pem"])
            key.chmod(0o600)
            app_lines = await procs.start(f"{owner}-app", [python, "-m", "examples.sample_app"])
            app = (await wait_line(app_lines, r"listening on http://(\S+)", "a sample app"))[1]
            env = {
                **instance_environment(instance, key),
                "DIT4C_INSTANCE_HELPER_AUTH_HOST": "127.0.0.1",
                "DIT4C_INSTANCE_HELPER_AUTH_PORT": str(helper_port),
                "HOSTMUX_ROUTER_CA_FILE": router_ca,
            }
            helper_lines = await procs.start(f"{owner}-helper", [
                python, "-m", "authhelper", "--app", app, "--cookie-keys-file",
                str(pod / "cookie-keys"), "--state-dir", str(pod / "helper-state"),
            ], env)  # fmt: skip
            await wait_line(helper_lines, r"event=authhelper_ready", "an auth helper")
            listener_lines = await procs.start(f"{owner}-listener", [python, "-m", "listener"], env)
            await wait_line(listener_lines, r"event=url_published", "a listener")
            urls[owner] = f"https://{instance['id']}.localhost:{ready[2].rsplit(':', 1)[1]}"

        print(
            f"\nhostmux demo is up.\n\n  Portal  {portal}\n"
            + "".join(f"  User    {n} / {pw}\n" for n, pw in USERS.items())
            + "".join(f"  {n}'s instance  {u}\n" for n, u in urls.items())
            + f"  Trust   {router_ca} (the router's development CA; import it in your\n"
            "          browser, or accept the warning once per instance)\n"
            f"  curl    curl --cacert {router_ca} {urls['alice']}/_hostmux/health\n"
            f"  Metrics http://127.0.0.1:{METRICS_PORT}/metrics (and /healthz, /readyz)\n"
            f"  Tunnel  {ssh_hint}\n"
            "          (then https://myapp.localhost"
            f":{ready[2].rsplit(':', 1)[1]} serves your localhost:3000)\n"
            "\nCtrl-C stops everything.\n",
            flush=True,
        )
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                break
        print("\nstopping...", file=sys.stderr)
        nursery.cancel_scope.cancel()


def run() -> int:
    """Run the demo; a reason it cannot run is one line, not a traceback."""
    try:
        trio.run(main)
    except BaseExceptionGroup as group:  # SystemExit from inside the nursery
        matched, _ = group.split(SystemExit)
        if matched is None:
            raise
        first: BaseException = matched
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        print(first, file=sys.stderr)
        return 1
    except SystemExit as stopped:
        print(stopped, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run())
