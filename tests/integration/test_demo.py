"""``./dev demo``: one demo at a time, and the ssh command it prints works.

The demo itself needs fixed ports (the router's embedded default, 8000 for the
portal); these tests start only what each point needs, in a state directory of
their own (``XDG_STATE_HOME``), and never a second full demo.
"""

from __future__ import annotations

import fcntl
import os
import shlex
import socket
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from examples.demo import HELPER_PORTS, PORTAL_PORT, ROUTER_PORTS, demo_ssh_access

from .conftest import Stack

ALL_PORTS = [PORTAL_PORT, *ROUTER_PORTS, *HELPER_PORTS.values()]


async def _run_demo(stack: Stack, state_home: Path) -> tuple[int, str]:
    env = {**os.environ, "XDG_STATE_HOME": str(state_home)}
    proc = await stack.spawn("demo", [sys.executable, "-m", "examples.demo"], env=env)
    code = await proc.wait_exit()
    await proc.wait_for(r"^demo: ")  # its one line may still be on its way through the pipe
    return code, "\n".join(proc.lines)


def _running_demo_state(state_home: Path) -> Path:
    """A state directory as a running demo leaves it: keys under demo/."""
    demo = state_home / "hostmux" / "demo"
    demo.mkdir(parents=True)
    (demo / "alice-lab").mkdir()
    (demo / "alice-lab" / "instance-key.pem").write_text("the running demo's key\n")
    return demo


@contextmanager
def _listening_on_a_demo_port() -> Iterator[int | None]:
    """Listen on the first demo port that is free (None: all are taken already)."""
    with ExitStack() as stack:
        for port in ALL_PORTS:
            sock = stack.enter_context(socket.socket())
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            sock.listen()
            yield port
            return
        yield None


async def test_a_second_demo_leaves_the_running_one_alone(stack: Stack, tmp_path: Path) -> None:
    demo = _running_demo_state(tmp_path)
    lock = tmp_path / "hostmux" / "demo.lock"
    with lock.open("w") as held:  # the running demo holds this lock
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("4242\n")
        held.flush()
        code, output = await _run_demo(stack, tmp_path)
    assert code == 1
    assert output == "demo: another demo is running (pid 4242); stop it with Ctrl-C first"
    assert (demo / "alice-lab" / "instance-key.pem").read_text() == "the running demo's key\n"


async def test_a_demo_whose_ports_are_taken_says_which_and_deletes_nothing(
    stack: Stack, tmp_path: Path
) -> None:
    demo = _running_demo_state(tmp_path)
    with _listening_on_a_demo_port() as port:
        code, output = await _run_demo(stack, tmp_path)
    assert code == 1
    assert len(output.splitlines()) == 1, output
    assert output.startswith("demo: port ") and "in use" in output
    if port is not None:
        assert str(port) in output
    assert (demo / "alice-lab" / "instance-key.pem").exists()


async def test_the_printed_ssh_command_opens_a_tunnel(stack: Stack, tmp_path: Path) -> None:
    """The hint works for a user with no ~/.ssh keys: the demo makes a key for it."""
    demo = tmp_path / "demo"
    demo.mkdir()
    authorized = demo / "authorized_keys"
    authorized.touch()
    router = await stack.start_router("--authorized-keys-file", str(authorized))
    app = await stack.start_app()
    host_key = " ".join((router.state_dir / "ssh_host_key.pub").read_text().split()[:2])

    hint = demo_ssh_access(demo, router.state_dir, host_key, router.ssh_port)

    argv = shlex.split(hint)
    assert argv[0] == "ssh" and argv[-1] == "localhost"
    assert "myapp:80:localhost:3000" in argv  # the user's app on 3000; the test's app elsewhere
    argv = [a.replace("localhost:3000", f"127.0.0.1:{app.port}") for a in argv]
    mark = len(router.proc.lines)
    await stack.spawn("ssh-hint", [argv[0], "-F", "none", "-o", "BatchMode=yes", *argv[1:]])
    await router.proc.wait_for(r"event=tunnel_up name=myapp ", start=mark)
    assert (await router.get("myapp", "/")).status_code == 200
