"""A plain SSH listener imports only what its transport needs (issue 18: start-up time).

Each check runs in a fresh interpreter (``sys.modules`` here holds whatever
other tests imported) and lists what importing the listener pulled in.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Generous for a cold interpreter importing asyncssh on a loaded 2-core machine.
SUBPROCESS_TIMEOUT_S = 60.0

# Needed only by the WebSocket transport, portal mode (JWT), the URL check's
# HTTP client, or an HTTP proxy: none of them before a plain tunnel is up.
NOT_FOR_PLAIN_SSH = ("websockets", "httpx", "httpcore", "jwt", "joserfc", "keys", "h11")


def modules_after(code: str) -> set[str]:
    """Top-level names of the modules loaded after running ``code`` in a fresh interpreter."""
    script = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(ROOT)}  # no *_proxy variables
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=SUBPROCESS_TIMEOUT_S, check=True,
    )  # fmt: skip
    return {name.split(".")[0] for name in json.loads(done.stdout.splitlines()[-1])}


@pytest.mark.parametrize(
    "code",
    [
        "import listener._cli, listener._run, listener._ha",
        # what a plain listener does before its first dial: the config, the key check
        "from listener._cli import _identity_problem\n"
        "from listener._config import load_config\n"
        "from listener._proxy import proxy_for\n"
        "import listener._ha, listener._run\n"
        "config = load_config(['--identity-file', '/nonexistent'])\n"
        "_identity_problem(config)\n"
        "proxy_for('127.0.0.1')",
    ],
    ids=["import", "configure"],
)
def test_a_plain_ssh_listener_loads_no_websocket_http_or_jwt_code(code: str) -> None:
    loaded = modules_after(code)
    assert "asyncssh" in loaded  # the check itself works: the SSH side is there
    assert loaded.isdisjoint(NOT_FOR_PLAIN_SSH), sorted(loaded & set(NOT_FOR_PLAIN_SSH))


def test_the_wss_transport_does_load_websockets() -> None:
    # The counter-check: the names above are the ones the other paths really use.
    loaded = modules_after("from hostmux.tunnel.websocket import WssConnector")
    assert "websockets" in loaded
