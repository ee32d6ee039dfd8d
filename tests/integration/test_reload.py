"""SIGHUP reload and certificates chosen by SNI (issue 19, point 4).

Real parts: the router as a process (on uvloop, as an operator runs it), its
configuration in a TOML file the test rewrites, certificates from throw-away
CAs (``keys``), stock OpenSSH ``ssh -R`` tunnels, a WebSocket through the
front door, and for workers Debian's redis-server. Which certificate a
handshake got is read from the handshake itself (the peer's DER bytes). Waits
are log lines under deadlines; nothing sleeps.
"""

from __future__ import annotations

import os
import re
import signal
import ssl
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

import keys

from .conftest import LoggedProcess, Router, Stack, public_key_of, websocket_and_stream
from .redis_server import RedisServer

DOMAIN = "hostmux.test"
# Reason: the kernel hands a connection to whichever worker accepts first; this many
# fresh connections reach both workers of two many times over (each takes ~1 in 2).
MAX_CONNECTIONS_TO_SEE_BOTH = 200


@dataclass
class Certs:
    """Certificates from their own CAs, and a bundle trusting all of them."""

    directory: Path
    bundle: Path

    def issue(self, label: str, *names: str) -> keys.TlsFiles:
        """A certificate for ``names`` from a new CA named ``label``, added to the bundle."""
        ca_dir = self.directory / label
        files, _ = keys.ensure_dev_tls(ca_dir, DOMAIN)
        cert, key = ca_dir / "leaf.crt", ca_dir / "leaf.key"
        keys.issue_leaf_certificate(files.ca_cert, ca_dir / "dev-ca-key.pem", names, cert, key)
        with self.bundle.open("a") as fh:
            fh.write(files.ca_cert.read_text())
        return keys.TlsFiles(cert, key, files.ca_cert)


@pytest.fixture
def certs(tmp_path: Path) -> Certs:
    directory = tmp_path / "certs"
    directory.mkdir()
    return Certs(directory, directory / "bundle.pem")


def der_of(cert_file: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(cert_file.read_text())


def install(files: keys.TlsFiles, cert: Path, key: Path) -> None:
    """Put ``files`` where the router's config points (renamed in, as a deploy would)."""
    for source, target in ((files.cert, cert), (files.key, key)):
        staged = target.with_name(target.name + ".new")
        staged.write_bytes(source.read_bytes())
        os.replace(staged, target)


def write_config(path: Path, **options: object) -> None:
    lines = []
    for name, value in options.items():
        if isinstance(value, list):
            text = "[" + ", ".join(f'"{v}"' for v in value) + "]"
        elif isinstance(value, int | float):
            text = str(value)
        else:
            text = f'"{value}"'
        lines.append(f"{name} = {text}")
    path.write_text("\n".join(lines) + "\n")


async def start_router_from_file(stack: Stack, config: Path, state_dir: Path) -> Router:
    """The router with only ``--config``: every option a reload may change lives in the file."""
    proc = await stack.spawn("router", [sys.executable, "-m", "router", "--config", str(config)])
    ready = await proc.wait_for(
        r"event=router_ready .*ssh=127\.0\.0\.1:(\d+) https=127\.0\.0\.1:(\d+) "
        r"http=127\.0\.0\.1:(\d+) host_key=(\S+)"
    )
    return Router(
        proc=proc, state_dir=state_dir, authorized_keys=state_dir / "authorized_keys",
        ssh_port=int(ready[1]), https_port=int(ready[2]), http_port=int(ready[3]),
        host_key_fingerprint=ready[4], ca_cert=Path(os.devnull), domain=DOMAIN,
    )  # fmt: skip


async def peer_certificate(
    port: int, server_name: str | None, *, trust: Path | None = None
) -> bytes:
    """The DER certificate a fresh handshake to ``port`` gets (SNI ``server_name``)."""
    if trust is not None:
        context = ssl.create_default_context(cafile=os.fspath(trust))
    else:  # only which certificate came matters here, not whether it fits the name
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    stream = trio.SSLStream(tcp, context, server_hostname=server_name)
    try:
        await stream.do_handshake()
        der: bytes | None = stream.getpeercert(binary_form=True)
        assert der is not None
        return der
    finally:
        await stream.aclose()


async def get_over_tls(
    port: int, server_name: str, target: str, trust: Path
) -> tuple[bytes, bytes]:
    """One GET on a fresh TLS connection: the certificate it got and the response's head."""
    context = ssl.create_default_context(cafile=os.fspath(trust))
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    stream = trio.SSLStream(tcp, context, server_hostname=server_name)
    try:
        await stream.do_handshake()
        der: bytes | None = stream.getpeercert(binary_form=True)
        assert der is not None
        await stream.send_all(
            f"GET {target} HTTP/1.1\r\nHost: {server_name}\r\nConnection: close\r\n\r\n".encode()
        )
        received = b""
        with trio.fail_after(30):
            while b"\r\n\r\n" not in received and (chunk := await stream.receive_some(65536)):
                received += chunk
        return der, received.partition(b"\r\n\r\n")[0]
    finally:
        await stream.aclose()


async def reload(proc: LoggedProcess, pattern: str = r"event=reloaded") -> int:
    """SIGHUP, then wait for ``pattern`` in the lines logged after it; the mark."""
    mark = len(proc.lines)
    proc.process.send_signal(signal.SIGHUP)
    await proc.wait_for(pattern, start=mark)
    return mark


async def test_sighup_swaps_the_certificate_and_keeps_tunnels_and_websockets(
    stack: Stack, certs: Certs, tmp_path: Path
) -> None:
    first = certs.issue("first", DOMAIN, f"*.{DOMAIN}")
    second = certs.issue("second", DOMAIN, f"*.{DOMAIN}")
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    (state_dir / "authorized_keys").touch()
    cert, key = tmp_path / "live.crt", tmp_path / "live.key"
    install(first, cert, key)
    config = tmp_path / "router.toml"
    options: dict[str, object] = {
        "domain": DOMAIN, "state_dir": state_dir, "ssh_listen": ["127.0.0.1:0"],
        "https_listen": ["127.0.0.1:0"], "http_listen": ["127.0.0.1:0"],
        "tls_cert_file": cert, "tls_key_file": key,
    }  # fmt: skip
    write_config(config, **options)
    router = await start_router_from_file(stack, config, state_dir)
    router.ca_cert = certs.bundle
    app = await stack.start_app()
    alice = stack.new_key("alice")
    router.authorize(public_key_of(alice))
    ssh = await stack.openssh_tunnel(router, alice, "demo", app.port)
    stream, websocket = await websocket_and_stream(stack.nursery, router, "demo")
    await websocket.send_message("before")
    assert await websocket.get_message() == "before"
    assert await peer_certificate(router.https_port, f"demo.{DOMAIN}") == der_of(first.cert)
    padded = {"x-pad": "a" * 2000}
    assert (await router.get("demo", "/", headers=padded)).status_code == 200

    # New files, another authorized_keys file and a smaller header limit, then SIGHUP.
    install(second, cert, key)
    bob = stack.new_key("bob")
    more_keys = tmp_path / "more_keys"
    more_keys.write_text(public_key_of(alice).read_text() + public_key_of(bob).read_text())
    write_config(config, **options, max_header_bytes=1024, authorized_keys_file=more_keys)
    tunnel_lines = len(router.proc.lines)
    mark = await reload(router.proc)
    assert router.proc.find(r"event=reloaded changed=authorized_keys_file,max_header_bytes$", mark)
    await stack.openssh_tunnel(router, bob, "bobs", app.port)  # the new file lets bob in
    # A new handshake sees the new certificate (and a client trusting it verifies it)...
    assert await peer_certificate(
        router.https_port, f"demo.{DOMAIN}", trust=second.ca_cert
    ) == der_of(second.cert)
    assert await peer_certificate(router.https_port, None) == der_of(second.cert)  # no SNI
    # ...while the WebSocket opened before keeps echoing over its first handshake,
    assert stream.getpeercert(binary_form=True) == der_of(first.cert)
    await websocket.send_message("after")
    assert await websocket.get_message() == "after"
    # the OpenSSH tunnel stays up and serves, and new connections get the new limit.
    assert (await router.get("demo", "/")).status_code == 200
    assert (await router.get("demo", "/", headers=padded)).status_code == 431
    assert ssh.process.returncode is None
    assert router.proc.find(r"event=tunnel_down", tunnel_lines) is None

    # A bad new certificate keeps the old one, and one line names the file.
    cert.write_text("not a certificate\n")
    mark = await reload(router.proc)
    kept = router.proc.find(r"event=reload_kept what=certificates reason=(.*)$", mark)
    assert kept is not None
    assert f"tls_cert_file {cert}: no PEM certificate in it" in kept[1]
    assert await peer_certificate(router.https_port, f"demo.{DOMAIN}") == der_of(second.cert)

    # A changed listen address needs a restart: one line names it; the old one serves on.
    install(second, cert, key)
    write_config(config, **{**options, "ssh_listen": ["127.0.0.1:1"], "shutdown_grace_s": 5.0})
    mark = await reload(router.proc)
    restart = [line for line in router.proc.lines[mark:] if "reload_needs_restart" in line]
    assert len(restart) == 1
    assert re.search(r"level=warning event=reload_needs_restart options=ssh_listen,"
                     r"shutdown_grace_s$", restart[0])  # fmt: skip
    await websocket.send_message("still")
    assert await websocket.get_message() == "still"
    assert (await router.get("demo", "/")).status_code == 200
    await stream.aclose()
    assert await router.proc.stop() == 0


async def test_sni_picks_the_exact_the_wildcard_or_the_default_certificate(
    stack: Stack, certs: Certs, tmp_path: Path
) -> None:
    default = certs.issue("default", DOMAIN, f"*.{DOMAIN}")
    exact = certs.issue("exact", f"app.{DOMAIN}")
    wildcard = certs.issue("wildcard", f"*.team.{DOMAIN}", f"team.{DOMAIN}")
    later = certs.issue("later", f"new.{DOMAIN}")
    cert_dir = tmp_path / "per-host"
    cert_dir.mkdir()
    # NAME.crt + NAME.key, and NAME.pem holding both.
    (cert_dir / "app.crt").write_bytes(exact.cert.read_bytes())
    (cert_dir / "app.key").write_bytes(exact.key.read_bytes())
    (cert_dir / "team.pem").write_bytes(wildcard.cert.read_bytes() + wildcard.key.read_bytes())
    router = await stack.start_router(
        "--domain", DOMAIN, "--tls-cert-file", str(default.cert),
        "--tls-key-file", str(default.key), "--tls-cert-dir", str(cert_dir),
    )  # fmt: skip
    port, bundle = router.https_port, certs.bundle
    assert await peer_certificate(port, f"app.{DOMAIN}", trust=bundle) == der_of(exact.cert)
    assert await peer_certificate(port, f"x.team.{DOMAIN}", trust=bundle) == der_of(wildcard.cert)
    assert await peer_certificate(port, f"team.{DOMAIN}", trust=bundle) == der_of(wildcard.cert)
    # One label only under a wildcard; other names and no SNI: the default.
    assert await peer_certificate(port, f"a.b.team.{DOMAIN}") == der_of(default.cert)
    assert await peer_certificate(port, f"other.{DOMAIN}", trust=bundle) == der_of(default.cert)
    assert await peer_certificate(port, "elsewhere.example") == der_of(default.cert)
    assert await peer_certificate(port, None) == der_of(default.cert)

    # The directory is read again on SIGHUP: a new file serves its name.
    assert await peer_certificate(port, f"new.{DOMAIN}") == der_of(default.cert)
    (cert_dir / "new.crt").write_bytes(later.cert.read_bytes())
    (cert_dir / "new.key").write_bytes(later.key.read_bytes())
    await reload(router.proc)
    assert await peer_certificate(port, f"new.{DOMAIN}", trust=bundle) == der_of(later.cert)
    # A certificate without its key keeps the directory as it was, and says which file.
    (cert_dir / "broken.crt").write_bytes(later.cert.read_bytes())
    mark = await reload(router.proc)
    assert router.proc.find(
        rf"event=reload_kept what=certificates reason=\"tls_cert_dir {re.escape(str(cert_dir))}"
        r"/broken\.crt: no broken\.key beside it\"",
        mark,
    )
    assert await peer_certificate(port, f"app.{DOMAIN}", trust=bundle) == der_of(exact.cert)
    assert await peer_certificate(port, f"new.{DOMAIN}", trust=bundle) == der_of(later.cert)
    assert await router.proc.stop() == 0


async def test_workers_reload_in_place_and_every_worker_serves_the_new_certificate(
    stack: Stack, certs: Certs, redis_server: RedisServer, tmp_path: Path
) -> None:
    first = certs.issue("first", DOMAIN, f"*.{DOMAIN}")
    second = certs.issue("second", DOMAIN, f"*.{DOMAIN}")
    cert, key = tmp_path / "live.crt", tmp_path / "live.key"
    install(first, cert, key)
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    proc = await stack.spawn(
        "supervisor",
        [
            sys.executable, "-m", "router", "--state-dir", str(state_dir), "--domain", DOMAIN,
            "--authorized-keys-file", str(state_dir / "authorized_keys"),
            "--ssh-listen", "127.0.0.1:0", "--https-listen", "127.0.0.1:0",
            "--http-listen", "127.0.0.1:0", "--workers", "2", "--registry", redis_server.url,
            "--router-id", "edge", "--tls-cert-file", str(cert), "--tls-key-file", str(key),
        ],
    )  # fmt: skip
    bound = await proc.wait_for(r"event=supervisor_ready .* https=127\.0\.0\.1:(\d+) ")
    port = int(bound[1])
    pids = {}
    for n in (1, 2):
        ready = await proc.wait_for(rf"event=router_ready .* pid=(\d+) .*worker={n}$")
        pids[n] = int(ready[1])
    app = await stack.start_app()
    alice = stack.new_key("alice")
    (state_dir / "authorized_keys").write_text(public_key_of(alice).read_text())
    router = Router(
        proc=proc, state_dir=state_dir, authorized_keys=state_dir / "authorized_keys",
        ssh_port=0, https_port=port, http_port=0, host_key_fingerprint="",
        ca_cert=certs.bundle, domain=DOMAIN,
    )  # fmt: skip
    ssh_port = int((await proc.wait_for(r"event=supervisor_ready .*ssh=127\.0\.0\.1:(\d+)"))[1])
    router.ssh_port = ssh_port
    ssh = await stack.openssh_tunnel(router, alice, "demo", app.port)

    install(second, cert, key)
    mark = len(proc.lines)
    proc.process.send_signal(signal.SIGHUP)
    for n in (1, 2):
        await proc.wait_for(rf"event=reloaded .*worker={n}$", start=mark)
    # Reloaded in place: the same processes, none started again, the tunnel still up.
    assert proc.find(r"event=worker_(started|exited)", mark) is None
    assert proc.find(r"event=reload_needs_restart", mark) is None  # nothing else changed
    assert ssh.process.returncode is None
    for pid in pids.values():
        os.kill(pid, 0)  # still there
    # Fresh connections until both workers answered one; each saw the new certificate. (A
    # name nobody holds: the worker that made the handshake answers 404 itself.)
    answered_by: set[str] = set()
    pattern = re.compile(r"event=request .*host=nobody\.hostmux\.test .* worker=(\d+)$")
    for _ in range(MAX_CONNECTIONS_TO_SEE_BOTH):
        der, head = await get_over_tls(port, f"nobody.{DOMAIN}", "/", second.ca_cert)
        assert der == der_of(second.cert)
        assert head.startswith(b"HTTP/1.1 404 ")
        answered_by = {m[1] for line in proc.lines[mark:] if (m := pattern.search(line))}
        if answered_by == {"1", "2"}:
            break
    assert answered_by == {"1", "2"}
    assert await proc.stop() == 0
