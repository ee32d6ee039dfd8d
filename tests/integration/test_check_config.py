"""``hostmux-router check-config``, ``--version`` and ``log_format = "json"`` (issue 19, point 6).

Each runs the component as a process, as an operator would.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import keys

from .conftest import ROOT, START_TIMEOUT_S, Router, Stack


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *argv],
        capture_output=True, text=True, timeout=START_TIMEOUT_S, check=False,
    )  # fmt: skip


def test_check_config_prints_the_effective_config_with_secrets_masked(tmp_path: Path) -> None:
    tls, _ = keys.ensure_dev_tls(tmp_path / "tls", "example.org")
    config = tmp_path / "router.toml"
    config.write_text(
        'domain = "example.org"\n'
        'registry = "redis://app:hunter2@127.0.0.1:6379/0"\n'
        "workers = 2\n"
        'events_url = "https://portal.example/events"\n'
        'events_secret = "s3cret-value"\n'
        f'tls_cert_file = "{tls.cert}"\n'
        f'tls_key_file = "{tls.key}"\n'
    )
    done = run(
        "router", "check-config", "--config", str(config), "--state-dir", str(tmp_path / "s"),
        "--max-connections", "500",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    lines = done.stdout.splitlines()
    # Every layer counts: the file, the flags; secrets never shown, key paths are.
    assert 'domain = "example.org"' in lines
    assert "max_connections = 500" in lines
    assert "workers = 2" in lines
    assert 'registry = "redis://app:********@127.0.0.1:6379/0"' in lines
    assert 'events_secret = "********"' in lines
    assert f'tls_key_file = "{tls.key}"' in lines
    assert "# tls_cert_dir is not set" in lines
    assert "hunter2" not in done.stdout and "s3cret" not in done.stdout
    assert "PRIVATE KEY" not in done.stdout
    # Nothing was created: check-config only reads.
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["--workers", "2"], "workers: 2 workers need a registry (registry = redis://...); "
         "without one a router is one process"),
        (["--tls-cert-file", "{junk}", "--tls-key-file", "{junk}"],
         "tls_cert_file {junk}: no PEM certificate in it"),
        (["--tls-cert-dir", "{missing}"], "tls_cert_dir {missing}: No such file or directory"),
        (["--config", "{missing}"], "{missing}: no such config file"),
        (["--acme-directory-url", "https://ca/dir", "--acme-dns-server", "127.0.0.1",
          "--acme-dns-tsig-key-file", "{junk}"],
         "acme_dns_tsig_key_file {junk}: no key \"NAME\" {{ algorithm ...; secret \"...\"; }}; "
         "in it"),
        (["--acme-directory-url", "https://ca/dir", "--acme-challenge", "http-01",
          "--acme-ca-file", "{missing}"], "acme_ca_file {missing}: No such file or directory"),
    ],
)  # fmt: skip
def test_check_config_refuses_a_bad_config_in_one_line(
    tmp_path: Path, argv: list[str], line: str
) -> None:
    junk, missing = tmp_path / "junk.pem", tmp_path / "missing"
    junk.write_text("not a certificate\n")
    values = {"junk": junk, "missing": missing}
    done = run(
        "router", "check-config", "--state-dir", str(tmp_path),
        *(arg.format(**values) for arg in argv),
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr == f"hostmux-router check-config: error: {line.format(**values)}\n"


@pytest.mark.parametrize(
    ("component", "prog"),
    [("router", "hostmux-router"), ("listener", "hostmux-listener"),
     ("authhelper", "hostmux-authhelper"), ("keys", "hostmux-keys")],
)  # fmt: skip
def test_version(component: str, prog: str) -> None:
    done = run(component, "--version")
    assert done.returncode == 0, done.stderr
    name, version = done.stdout.split()
    assert name == prog
    assert version[0].isdigit() and version.count(".") >= 2


async def test_json_log_lines_parse_with_the_logfmt_fields(stack: Stack, tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    proc = await stack.spawn(
        "router",
        [
            sys.executable, "-m", "router", "--log-format", "json", "--state-dir", str(state_dir),
            "--ssh-listen", "127.0.0.1:0", "--https-listen", "127.0.0.1:0",
            "--http-listen", "127.0.0.1:0",
        ],
    )  # fmt: skip
    ready = json.loads((await proc.wait_for(r'^\{.*"event": "router_ready"')).string)
    assert list(ready)[:3] == ["ts", "level", "event"]
    assert ready["level"] == "info"
    assert ready["domain"] == "localhost"
    router = Router(
        proc=proc, state_dir=state_dir, authorized_keys=state_dir / "authorized_keys",
        ssh_port=int(ready["ssh"].rpartition(":")[2]),
        https_port=int(ready["https"].rpartition(":")[2]),
        http_port=int(ready["http"].rpartition(":")[2]),
        host_key_fingerprint=ready["host_key"], ca_cert=Path(ready["ca"]),
    )  # fmt: skip
    assert (await router.get("nobody", '/?q="x y"')).status_code == 404
    request = json.loads((await proc.wait_for(r'"event": "request"')).string)
    # The same fields as the logfmt line, values as strings (a quoted value unquoted).
    assert request["status"] == "404"
    assert request["host"] == "nobody.localhost"
    assert request["target"] == "/?q=%22x%20y%22"
    assert {"rid", "peer", "method", "bytes_in", "bytes_out", "ms"} <= set(request)
    assert await proc.stop() == 0
    for line in proc.lines:  # every line the router wrote is one JSON object
        assert isinstance(json.loads(line), dict), line


@pytest.mark.parametrize(("component", "prog"), [("router", "hostmux-router"),
                                                 ("listener", "hostmux-listener")])  # fmt: skip
def test_an_unknown_log_format_is_one_line_and_exit_2(component: str, prog: str) -> None:
    done = run(component, "--log-format", "yaml")
    assert done.returncode == 2
    assert done.stderr == f"{prog}: error: log_format: 'yaml' is not logfmt or json\n"


def test_acme_without_its_extra_is_one_line_and_exit_2(tmp_path: Path) -> None:
    # The acme extra not installed: an import of aioacme that fails, as it would.
    done = subprocess.run(
        [
            sys.executable, "-c",
            "import sys; sys.modules['aioacme'] = None; from router.cli import main; "
            "sys.exit(main(sys.argv[1:]))",
            "check-config", "--state-dir", str(tmp_path), "--acme-directory-url",
            "https://ca/dir", "--acme-challenge", "http-01",
        ],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr == (
        "hostmux-router check-config: error: acme_directory_url needs the acme extra: "
        "pip install 'hostmux[acme]' (aioacme and dnspython)\n"
    )
