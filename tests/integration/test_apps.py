"""Real apps behind the whole chain (issue 21, point 6): Jupyter Server and noVNC.

portal + router + listener + auth helper + the app, on loopback: Debian's
Chromium logs in through the example portal (as tests/integration/test_browser.py
does) and then uses the app as its own web client would, from the app's page
with the browser's session (fetch and WebSocket in the page: cookies, Origin and
XSRF header all real). docs/apps.md explains each setting the apps get here.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio
from selenium import webdriver

from hostmux.config.options import declared_options
from router.config import RouterConfig

from .conftest import START_TIMEOUT_S, App, Router, Stack
from .test_browser import ARTIFACTS, PASSWORDS, Browser, Pod, pod_for
from .test_portal_mode import Portal, start_portal, start_portal_router

pytestmark = pytest.mark.skipif(
    shutil.which("chromium") is None or shutil.which("chromedriver") is None,
    reason="Debian chromium + chromium-driver not installed (./dev test installs them)",
)

# The router closes a WebSocket after this long without a byte either way.
WEBSOCKET_IDLE_TIMEOUT_S = 10
# Jupyter pings its kernel WebSockets this often (its default is 30 s, more than
# the timeout above: docs/apps.md says which of the two to change).
JUPYTER_PING_INTERVAL_MS = 4000
# How long the kernel WebSocket is left idle: three router timeouts.
IDLE_WAIT_S = 30
UPLOAD_BYTES = 200 * 1024 * 1024
# Reason: the 200 MiB go browser -> router -> SSH -> listener -> helper -> Jupyter as
# 200 base64 chunks; measured ~10-20 s on a busy 2-core machine, so 4x headroom.
UPLOAD_DEADLINE_S = 80.0
CELL = "print('hello from', 'the kernel'); sum(range(10**6))"


# --- the browser side: a page script doing what JupyterLab does ---------------------

# window.hm: REST with the _xsrf cookie echoed in X-XSRFToken, a kernel WebSocket
# speaking the Jupyter message protocol (JSON frames, no subprotocol), chunked
# uploads through the contents API (1 MiB chunks numbered 1, 2, ..., the last -1,
# base64 from FileReader: JupyterLab's uploader), and a record of sockets closing.
PAGE_SCRIPT = r"""
const hm = window.hm = {opened: {}, closed: {}, sockets: {}, waiting: {}};
hm.xsrf = () => {
  const cookie = document.cookie.split('; ').find(c => c.startsWith('_xsrf='));
  if (!cookie) throw new Error('no _xsrf cookie on ' + location.href);
  return cookie.slice('_xsrf='.length);
};
hm.api = async (method, path, body) => {
  const response = await fetch(path, {
    method,
    headers: {'Content-Type': 'application/json', 'X-XSRFToken': hm.xsrf()},
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  if (!response.ok) throw new Error(`${method} ${path}: ${response.status} ${text.slice(0, 300)}`);
  return text ? JSON.parse(text) : null;
};
hm.statusWithoutXsrf = async (method, path) => (await fetch(path, {
  method, headers: {'Content-Type': 'application/json'}, body: '{}',
})).status;
hm.socket = (name, path) => new Promise((resolve, reject) => {
  const ws = new WebSocket(`wss://${location.host}${path}`);
  ws.onopen = () => { hm.opened[name] = performance.now(); hm.sockets[name] = ws; resolve(name); };
  ws.onclose = (e) => {
    hm.closed[name] = {code: e.code, afterMs: performance.now() - (hm.opened[name] ?? NaN)};
    reject(new Error(`${name}: WebSocket closed (${e.code}) before it opened`));
  };
});
hm.startKernel = async () => {
  const kernel = await hm.api('POST', '/api/kernels', {name: 'python3'});
  hm.session = crypto.randomUUID();
  await hm.socket('kernel', `/api/kernels/${kernel.id}/channels?session_id=${hm.session}`);
  hm.sockets.kernel.onmessage = (e) => {
    const msg = JSON.parse(e.data);
    const waiter = hm.waiting[msg.parent_header && msg.parent_header.msg_id];
    if (waiter) waiter(msg);
  };
  return kernel.id;
};
hm.execute = (code) => new Promise((resolve) => {
  const msgId = crypto.randomUUID();
  const out = {stream: '', result: null, error: null, reply: null, idle: false};
  hm.waiting[msgId] = (msg) => {
    const [type, content] = [`${msg.channel}/${msg.header.msg_type}`, msg.content];
    if (type === 'iopub/stream') out.stream += content.text;
    if (type === 'iopub/execute_result') out.result = content.data['text/plain'];
    if (type === 'iopub/error') out.error = `${content.ename}: ${content.evalue}`;
    if (type === 'iopub/status') out.idle = content.execution_state === 'idle';
    if (type === 'shell/execute_reply') out.reply = content.status;
    if (out.idle && out.reply) { delete hm.waiting[msgId]; resolve(out); }
  };
  hm.sockets.kernel.send(JSON.stringify({
    header: {msg_id: msgId, msg_type: 'execute_request', username: '', session: hm.session,
             date: new Date().toISOString(), version: '5.3'},
    parent_header: {}, metadata: {}, channel: 'shell', buffers: [],
    content: {code, silent: false, store_history: true, user_expressions: {},
              allow_stdin: false, stop_on_error: true},
  }));
});
hm.upload = async (path, size) => {
  const CHUNK = 1024 * 1024;
  const data = new Uint8Array(size);
  for (let i = 0; i < size; i += 65536) crypto.getRandomValues(data.subarray(i, i + 65536));
  const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', data));
  const blob = new Blob([data]);
  const name = path.split('/').pop();
  const started = performance.now();
  let chunks = 0;
  for (let offset = 0, n = 1; offset < size; offset += CHUNK, n++) {
    const content = await new Promise((ok, fail) => {
      const reader = new FileReader();
      reader.onload = () => ok(reader.result.slice(reader.result.indexOf(',') + 1));
      reader.onerror = () => fail(reader.error);
      reader.readAsDataURL(blob.slice(offset, offset + CHUNK));
    });
    const chunk = offset + CHUNK >= size ? -1 : n;
    const body = {type: 'file', format: 'base64', name, path, chunk, content};
    await hm.api('PUT', `/api/contents/${path}`, body);
    chunks += 1;
  }
  const model = await hm.api('GET', `/api/contents/${path}?content=0`);
  return {
    sha256: Array.from(digest, b => b.toString(16).padStart(2, '0')).join(''),
    chunks, size: model.size, seconds: (performance.now() - started) / 1000,
  };
};
hm.state = () => ({
  closed: hm.closed,
  open: Object.fromEntries(Object.entries(hm.sockets).map(([k, ws]) => [k, ws.readyState === 1])),
});
"""


async def page_call(browser: Browser, expression: str, timeout_s: float = START_TIMEOUT_S) -> Any:
    """Evaluate the promise ``expression`` in the page; its value, or AssertionError
    with the page's error."""
    script = (
        "const done = arguments[arguments.length - 1];"
        f"Promise.resolve().then(() => {expression})"
        ".then(value => done({value}), e => done({error: String(e && e.stack || e)}));"
    )

    def work(driver: webdriver.Chrome) -> Any:
        driver.set_script_timeout(timeout_s)
        return driver.execute_async_script(script)

    result = await browser.run(work)
    if "error" in result:
        raise AssertionError(f"browser: {expression}: {result['error']}")
    return result["value"]


# --- the chain -------------------------------------------------------------------------


@dataclass
class Chain:
    stack: Stack
    portal: Portal
    router: Router


async def start_chain(stack: Stack, *router_extra: str) -> Chain:
    """The example portal (users alice and bob) and a router in portal mode."""
    users = [arg for name, pw in PASSWORDS.items() for arg in ("--user", f"{name}:{pw}")]
    router_state = stack.path("router-state")
    ca = ["--router-ca-file", str(router_state / "tls" / "dev-ca.pem")]
    portal = await start_portal(stack, None, 0, *users, *ca)
    # authlib allows plain http only to "localhost": the browser must use that name.
    portal.url = portal.url.replace("127.0.0.1", "localhost")
    router = await start_portal_router(stack, portal, *router_extra, state_dir=router_state)
    return Chain(stack, portal, router)


async def open_browser(tmp_path: Path, router: Router) -> Browser:
    return await trio.to_thread.run_sync(Browser, tmp_path / "browser", router.ca_cert)


async def log_in_at(browser: Browser, url: str, user: str) -> None:
    """Open ``url`` in a fresh browser: the portal's login, then back to ``url``."""
    await browser.open(url)
    await browser.login(user)
    await browser.wait_until(lambda d: d.current_url == url, f"the way back to {url}")


# --- Jupyter Server ----------------------------------------------------------------------


@dataclass
class Jupyter:
    app: App
    root_dir: Path


def jupyter_config(root_dir: Path, public_host: str) -> dict[str, Any]:
    """Jupyter Server behind the auth helper (docs/apps.md explains each line)."""
    return {
        "ServerApp": {
            "ip": "127.0.0.1",  # only the auth helper reaches it
            "port": 0,
            "base_url": "/",
            "open_browser": False,
            "root_dir": str(root_dir),
            # Jupyter's DNS-rebinding check: the one public name it is served under.
            "local_hostnames": ["localhost", public_host],
            "allow_root": True,  # CI containers run as root
            "terminals_enabled": False,
            "tornado_settings": {"ws_ping_interval": JUPYTER_PING_INTERVAL_MS},
        },
        # No token or password: the auth helper lets only the portal's users in.
        "IdentityProvider": {"token": ""},
    }


async def start_jupyter(stack: Stack, public_host: str) -> Jupyter:
    home = stack.path("jupyter")
    root_dir = home / "work"
    config_dir = home / "config"
    for directory in (root_dir, config_dir):
        directory.mkdir(parents=True)
    config = jupyter_config(root_dir, public_host)
    (config_dir / "jupyter_server_config.json").write_text(json.dumps(config, indent=2))
    env = {
        **os.environ,
        "HOME": str(home),
        "JUPYTER_CONFIG_DIR": str(config_dir),
        "JUPYTER_DATA_DIR": str(home / "data"),
        "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
        "IPYTHONDIR": str(home / "ipython"),
        "JUPYTER_PLATFORM_DIRS": "1",
    }
    proc = await stack.spawn("jupyter", [sys.executable, "-m", "jupyter_server"], env=env)
    ready = await proc.wait_for(r"\] http://127\.0\.0\.1:(\d+)/$")
    return Jupyter(App(proc, int(ready[1])), root_dir)


@pytest.fixture
def needs_jupyter() -> None:
    missing = [m for m in ("jupyter_server", "ipykernel") if importlib.util.find_spec(m) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} missing: pip install -e '.[test]' (./dev test does)")


async def jupyter_pod(chain: Chain) -> tuple[Pod, Jupyter]:
    instance = await chain.portal.create_instance("alice")
    public_host = f"{instance['id']}.{chain.router.domain}"
    jupyter = await start_jupyter(chain.stack, public_host)
    pod = await pod_for(chain.stack, chain.router, instance, "alice", jupyter.app.port)
    return pod, jupyter


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


@pytest.mark.usefixtures("needs_jupyter")
async def test_jupyter_kernel_upload_and_an_idle_kernel_websocket(
    stack: Stack, tmp_path: Path
) -> None:
    """Issue 21's acceptance: a cell executed through the kernel WebSocket, a 200 MiB
    upload intact; and an idle kernel WebSocket outlives websocket_idle_timeout_s
    because Jupyter's pings (and the browser's pongs) are traffic."""
    chain = await start_chain(stack, "--websocket-idle-timeout-s", str(WEBSOCKET_IDLE_TIMEOUT_S))
    pod, jupyter = await jupyter_pod(chain)
    browser = await open_browser(tmp_path, chain.router)
    try:
        # Jupyter's own start page: it sets the _xsrf cookie, as JupyterLab's page does.
        await log_in_at(browser, pod.url + "/", "alice")
        await browser.run(lambda d: d.execute_script(PAGE_SCRIPT))
        # XSRF stays on: the same session without the X-XSRFToken header is refused.
        assert await page_call(browser, "hm.statusWithoutXsrf('POST', '/api/kernels')") == 403

        # 200 MiB through the contents API, checked byte for byte on disk.
        upload = await page_call(
            browser, f"hm.upload('upload.bin', {UPLOAD_BYTES})", UPLOAD_DEADLINE_S
        )
        on_disk = jupyter.root_dir / "upload.bin"
        assert upload["chunks"] == UPLOAD_BYTES // (1024 * 1024)
        assert upload["size"] == UPLOAD_BYTES == on_disk.stat().st_size
        assert sha256_of(on_disk) == upload["sha256"]
        print(f"upload: {UPLOAD_BYTES >> 20} MiB in {upload['seconds']:.1f} s")

        # A kernel over REST, a cell over its WebSocket.
        await page_call(browser, "hm.startKernel()")
        executed = await page_call(browser, f"hm.execute({json.dumps(CELL)})")
        assert executed == {
            "stream": "hello from the kernel\n",
            "result": str(sum(range(10**6))),
            "error": None,
            "reply": "ok",
            "idle": True,
        }

        # Idle for three router timeouts. A second WebSocket, Jupyter's event stream
        # (which Jupyter does not ping), shows the timeout is live: it is closed.
        await page_call(browser, "hm.socket('events', '/api/events/subscribe')")
        await trio.sleep(IDLE_WAIT_S)  # wall time by design: the deadline is the test
        state = await page_call(browser, "hm.state()")
        assert state["open"] == {"kernel": True, "events": False}, state
        assert "kernel" not in state["closed"], state
        closed_after_s = state["closed"]["events"]["afterMs"] / 1000
        assert WEBSOCKET_IDLE_TIMEOUT_S - 2 <= closed_after_s < IDLE_WAIT_S, state
        again = await page_call(browser, "hm.execute('6 * 7')")
        assert (again["result"], again["reply"]) == ("42", "ok")
        ARTIFACTS.mkdir(exist_ok=True)
        await browser.run(lambda d: d.save_screenshot(str(ARTIFACTS / "apps-jupyter.png")))
    finally:
        await trio.to_thread.run_sync(browser.close)
    assert not jupyter.app.proc.find(r"Blocking|Traceback")


def router_has_option(name: str) -> bool:
    return any(option.name == name for option in declared_options(RouterConfig))


# Above the kernel's start and small cells (a few KiB) and far above its pings
# (8 bytes every 4 s); below one cell printing 100 kB.
IDLE_MIN_BYTES_PER_MINUTE = 64 * 1024
IDLE_AFTER_S = 5
# Reason: idle is judged on a tick of idle_after_s / 2; three times the sum is the bound.
IDLE_EVENT_DEADLINE_S = 3 * (IDLE_AFTER_S + IDLE_AFTER_S / 2)

# While the kernel starts and runs its first cell the page polls the REST API
# (as JupyterLab does), so no gap between requests comes near idle_after_s before
# the marker request the idle time is counted from.
POLL_SCRIPT = """
hm.polling = setInterval(() => fetch('/api/kernels'), 1000);
"""


@pytest.mark.skipif(
    not router_has_option("idle_min_bytes_per_minute"),
    reason="the router has no idle_min_bytes_per_minute yet (issue 21, point 2)",
)
@pytest.mark.usefixtures("needs_jupyter")
async def test_an_idle_jupyter_is_reported_idle_despite_its_pings(
    stack: Stack, tmp_path: Path
) -> None:
    """Issue 21, point 6: with idle_min_bytes_per_minute above what Jupyter's pings
    carry, an open, pinged, unused kernel WebSocket lets the instance be reported
    idle; a cell with real output over the same socket makes it active again."""
    chain = await start_chain(
        stack,
        "--idle-after-s", str(IDLE_AFTER_S),
        "--idle-min-bytes-per-minute", str(IDLE_MIN_BYTES_PER_MINUTE),
    )  # fmt: skip
    pod, _ = await jupyter_pod(chain)
    name = pod.instance_id
    router = chain.router.proc
    browser = await open_browser(tmp_path, chain.router)
    try:
        await log_in_at(browser, pod.url + "/", "alice")
        await browser.run(lambda d: d.execute_script(PAGE_SCRIPT + POLL_SCRIPT))
        await page_call(browser, "hm.startKernel()")
        executed = await page_call(browser, "hm.execute('6 * 7')")
        assert executed["result"] == "42"
        await page_call(browser, "clearInterval(hm.polling)")
        # The last request: the idle time counts from it.
        await page_call(browser, "hm.api('GET', '/api/status?idle-from=here')")
        marker = await router.wait_for(r"event=request .*target=\S*idle-from=here")
        after = router.lines.index(marker.string) + 1
        idle = await router.wait_for(
            rf"event=portal_event_delivered kind=idle name={name}\b",
            start=after,
            timeout_s=IDLE_EVENT_DEADLINE_S,
        )
        state = await page_call(browser, "hm.state()")
        assert state["open"] == {"kernel": True}, state  # idle with the socket up and pinged
        after = router.lines.index(idle.string) + 1
        busy = await page_call(browser, "hm.execute(\"print('x' * 100_000)\")")
        assert busy["stream"] == "x" * 100_000 + "\n"
        await router.wait_for(
            rf"event=portal_event_delivered kind=active name={name}\b",
            start=after,
            timeout_s=IDLE_EVENT_DEADLINE_S,
        )
    finally:
        await trio.to_thread.run_sync(browser.close)


# --- noVNC ---------------------------------------------------------------------------

NOVNC_DIR = Path("/usr/share/novnc")
DESKTOP_RGB = (0x33, 0x66, 0xCC)  # the desktop's colour, set with xsetroot
DESKTOP_SIZE = (800, 600)


def _missing_vnc_parts() -> list[str]:
    missing = [
        package
        for command, package in (
            ("Xvnc", "tigervnc-standalone-server"),
            ("websockify", "websockify"),
            ("xsetroot", "x11-xserver-utils"),
        )
        if shutil.which(command) is None
    ]
    if not (NOVNC_DIR / "vnc.html").is_file():
        missing.append("novnc")
    return missing


async def start_vnc_desktop(stack: Stack) -> App:
    """TigerVNC's Xvnc on a free display (-displayfd), its VNC on a Unix socket only,
    a solid-colour desktop, and websockify serving noVNC in front of it."""
    home = stack.path("vnc")
    home.mkdir()
    rfb_socket = home / "rfb.sock"
    read_fd, write_fd = os.pipe()
    try:
        width, height = DESKTOP_SIZE
        await stack.spawn(
            "Xvnc",
            [
                "Xvnc", "-displayfd", str(write_fd), "-geometry", f"{width}x{height}",
                "-depth", "24", "-rfbport", "-1", "-rfbunixpath", str(rfb_socket),
                "-SecurityTypes", "None", "-nolisten", "tcp", "-desktop", "hostmux-test",
            ],
            pass_fds=(write_fd,),
        )  # fmt: skip
        os.close(write_fd)
        write_fd = -1
        display = b""
        async with trio.lowlevel.FdStream(read_fd) as pipe:
            read_fd = -1
            with trio.fail_after(START_TIMEOUT_S):
                while not display.endswith(b"\n"):
                    chunk = await pipe.receive_some(64)
                    assert chunk, "Xvnc exited before it chose a display"
                    display += chunk
    finally:
        for fd in (read_fd, write_fd):
            if fd >= 0:
                os.close(fd)
    colour = "#{:02x}{:02x}{:02x}".format(*DESKTOP_RGB)
    xsetroot = await stack.spawn(
        "xsetroot", ["xsetroot", "-display", f":{int(display)}", "-solid", colour]
    )
    assert await xsetroot.wait_exit() == 0
    # websockify takes its listening socket from stdin (--inetd): the port is ours
    # from the start, no free-port guessing.
    listening = socket.create_server(("127.0.0.1", 0))
    with listening:
        port = listening.getsockname()[1]
        proc = await stack.spawn(
            "websockify",
            ["websockify", "--inetd", "--web", str(NOVNC_DIR), "--unix-target", str(rfb_socket)],
            stdin=listening.fileno(),
        )
    return App(proc, port)


CANVAS_SCRIPT = """
const canvas = document.querySelector('#noVNC_container canvas');
if (!canvas || !document.documentElement.classList.contains('noVNC_connected')) return null;
const [x, y] = [Math.floor(canvas.width / 2), Math.floor(canvas.height / 2)];
const pixel = Array.from(canvas.getContext('2d').getImageData(x, y, 1, 1).data.slice(0, 3));
return {width: canvas.width, height: canvas.height, pixel};
"""


async def test_novnc_desktop_through_the_chain(stack: Stack, tmp_path: Path) -> None:
    """noVNC's page and its WebSocket through router, listener and auth helper: the
    framebuffer (its size from the VNC handshake, its pixels from updates) arrives."""
    if missing := _missing_vnc_parts():
        pytest.skip(f"Debian packages missing: {' '.join(missing)} (./dev test installs them)")
    chain = await start_chain(stack)
    instance = await chain.portal.create_instance("alice")
    desktop = await start_vnc_desktop(stack)
    pod = await pod_for(stack, chain.router, instance, "alice", desktop.port)
    browser = await open_browser(tmp_path, chain.router)
    try:
        await log_in_at(browser, pod.url + "/vnc.html?autoconnect=true&resize=off", "alice")
        seen: dict[str, Any] = {}

        def desktop_drawn(driver: webdriver.Chrome) -> bool:
            seen["canvas"] = driver.execute_script(CANVAS_SCRIPT)
            return bool(seen["canvas"]) and seen["canvas"]["pixel"] == list(DESKTOP_RGB)

        await browser.wait_until(desktop_drawn, "the desktop's colour on noVNC's canvas")
        width, height = DESKTOP_SIZE
        assert seen["canvas"] == {"width": width, "height": height, "pixel": list(DESKTOP_RGB)}
        status = await browser.run(
            lambda d: d.execute_script("return document.getElementById('noVNC_status').textContent")
        )
        assert "Connected" in status
        ARTIFACTS.mkdir(exist_ok=True)
        await browser.run(lambda d: d.save_screenshot(str(ARTIFACTS / "apps-novnc.png")))
    finally:
        await trio.to_thread.run_sync(browser.close)
