"""Bad configuration through the real command lines: one line naming the option or file, exit 2.

Each check runs the component as a process, as an operator would; nothing
may listen, log ``router_ready`` or print a traceback first. (Every option's
range is tried in-process in tests/unit/test_option_ranges.py.)
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

import keys

from .conftest import START_TIMEOUT_S, Stack


def run(component: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", component, *argv],
        capture_output=True, text=True, timeout=START_TIMEOUT_S, check=False,
    )  # fmt: skip


def router_argv(
    state_dir: Path, *extra: str, https: str = "127.0.0.1:0", http: str = "127.0.0.1:0"
) -> list[str]:
    """Port 0 everywhere: should a check be missed, nothing fixed gets bound."""
    return [
        "--state-dir", str(state_dir), "--authorized-keys-file", str(state_dir / "keys"),
        "--ssh-listen", "127.0.0.1:0", "--https-listen", https, "--http-listen", http, *extra,
    ]  # fmt: skip


def assert_one_line_exit_2(done: subprocess.CompletedProcess[str], prog: str, line: str) -> None:
    assert done.returncode == 2, done.stderr
    assert done.stderr == f"{prog}: error: {line}\n"
    assert "router_ready" not in done.stdout + done.stderr


@pytest.mark.parametrize(
    ("component", "argv", "line"),
    [
        (
            "router",
            ["--ssh-keepalive-interval-s=-1"],
            "--ssh-keepalive-interval-s: -1 is out of range: more than 0, at most 3600",
        ),
        (
            "router",
            ["--name-reservation-s=-1"],
            "--name-reservation-s: -1 is out of range: more than 0, at most 604800",
        ),
        (
            "router",
            ["--portal-negative-cache-ttl-s=-1"],
            "--portal-negative-cache-ttl-s: -1 is out of range: 0..86400",
        ),
        ("router", ["--max-header-bytes=1048577"], "--max-header-bytes: 1048577 is out of range: "
         "1024..1048576"),
        (
            "listener",
            ["--keepalive-interval-s", "0"],
            "--keepalive-interval-s: 0 is out of range: more than 0, at most 3600",
        ),
        (
            "authhelper",
            ["--session-lifetime-s", "59", "--instance-id", "i", "--portal-url", "https://p.example",
             "--cookie-keys", "k"],
            "--session-lifetime-s: 59 is out of range: 60..2592000",
        ),
    ],
)  # fmt: skip
def test_out_of_range_option_is_one_line_and_exit_2(
    tmp_path: Path, component: str, argv: list[str], line: str
) -> None:
    if component == "router":
        argv = router_argv(tmp_path, *argv)
    assert_one_line_exit_2(run(component, *argv), f"hostmux-{component}", line)


def test_one_port_without_tls_is_refused_before_listening(tmp_path: Path) -> None:
    # It used to log router_ready, then die in an ExceptionGroup (exit 1).
    done = run("router", *router_argv(tmp_path, "--one-port-listen", "127.0.0.1:0", https=""))
    assert_one_line_exit_2(
        done, "hostmux-router",
        "one_port_listen needs TLS: an https_listen address (development CA) "
        "or tls_cert_file and tls_key_file",
    )  # fmt: skip


async def test_empty_http_listen_means_no_plain_http_door(stack: Stack, tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    router = await stack.spawn(
        "router", [sys.executable, "-m", "router", *router_argv(state_dir, http="")]
    )
    ready = await router.wait_for(r"event=router_ready .*")
    assert " http=" not in ready[0]
    assert " https=127.0.0.1:" in ready[0]
    # the line says which build of the core runs: what the install built (setup.py)
    core = "python" if os.environ.get("HOSTMUX_PURE_PYTHON") == "1" else "compiled"
    assert f" core={core} " in ready[0]
    assert await router.stop() == 0


def _write_key(path: Path, pem: bytes) -> Path:
    path.write_bytes(pem)
    return path


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[keys.TlsFiles, keys.TlsFiles]:
    """Two certificate/key pairs from two development CAs (so one's key fits not the other)."""
    first, _ = keys.ensure_dev_tls(tmp_path / "one", "example.org")
    second, _ = keys.ensure_dev_tls(tmp_path / "two", "example.org")
    return first, second


@pytest.mark.parametrize("case", ["no cert", "no key", "cert not PEM", "key not PEM",
                                  "key of another cert", "encrypted key"])  # fmt: skip
def test_bad_tls_files_name_the_file(
    tmp_path: Path, tls_files: tuple[keys.TlsFiles, keys.TlsFiles], case: str
) -> None:
    good, other = tls_files
    cert, key = good.cert, good.key
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    missing = tmp_path / "missing.pem"
    expected = {
        "no cert": f"tls_cert_file {missing}: No such file or directory",
        "no key": f"tls_key_file {missing}: No such file or directory",
        "cert not PEM": f"tls_cert_file {junk}: no PEM certificate in it",
        "key not PEM": f"tls_key_file {junk}: not a PEM private key",
        "key of another cert": f"tls_key_file {other.key} does not match the certificate in "
        f"{cert}",
        "encrypted key": f"tls_key_file {tmp_path / 'locked.pem'}: the key is encrypted "
        "(give an unencrypted one)",
    }[case]  # fmt: skip
    if case == "no cert":
        cert = missing
    elif case == "no key":
        key = missing
    elif case == "cert not PEM":
        cert = junk
    elif case == "key not PEM":
        key = junk
    elif case == "key of another cert":
        key = other.key
    else:
        private = serialization.load_pem_private_key(key.read_bytes(), password=None)
        key = _write_key(
            tmp_path / "locked.pem",
            private.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(b"secret"),
            ),
        )  # fmt: skip
    done = run(
        "router",
        *router_argv(
            tmp_path,
            "--domain",
            "example.org",
            "--tls-cert-file",
            str(cert),
            "--tls-key-file",
            str(key),
        ),
    )
    assert_one_line_exit_2(done, "hostmux-router", expected)


def test_cluster_link_options_are_checked_before_listening(tmp_path: Path) -> None:
    ca = keys.ClusterCA.init(tmp_path / "ca")
    files = ca.issue("b")
    other = keys.ClusterCA.init(tmp_path / "other-ca").issue("a")
    link = ["--cluster-listen", "127.0.0.1:0", "--cluster-ca-file", str(tmp_path / "ca" / "ca.crt")]
    certs = ["--cluster-cert-file", str(files.cert), "--cluster-key-file", str(files.key)]
    registry = ["--registry", "redis://127.0.0.1:1/0"]
    cases = [
        (
            ["--cluster-listen", "127.0.0.1:0"],
            "cluster_listen, cluster_ca_file, cluster_cert_file and cluster_key_file go "
            "together: cluster_ca_file, cluster_cert_file, cluster_key_file missing",
        ),
        ([*link, *certs], "cluster_listen needs registry (routers find each other there)"),
        (
            [*link, *certs, *registry],
            "cluster_listen needs router_id (the id in its cluster certificate)",
        ),
        (
            [*link, *certs, *registry, "--router-id", "Router_B"],
            "router_id: router id 'Router_B' is not valid: use lower-case DNS labels (a-z, "
            "0-9, '-') joined by dots, at most 253 characters, e.g. router-a or router-a.1",
        ),
        (
            [*link, *certs, *registry, "--router-id", "a"],
            "cluster_cert_file: it is for 'b', which does not speak for router_id 'a' (nor b.N)",
        ),
        (
            [*link, *registry, "--router-id", "a", "--cluster-cert-file", str(other.cert),
             "--cluster-key-file", str(other.key)],
            f"cluster_cert_file: {other.cert} is not signed by the cluster CA "
            f"{tmp_path / 'ca' / 'ca.crt'}",
        ),
    ]  # fmt: skip
    for argv, line in cases:
        assert_one_line_exit_2(run("router", *router_argv(tmp_path, *argv)), "hostmux-router", line)
