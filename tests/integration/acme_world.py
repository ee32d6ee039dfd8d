"""An ACME world on loopback: Debian's Pebble (the CA) and Debian's BIND 9 (the zone).

* ``DnsZone``: ``named`` serving the test domain on a free loopback port, from a
  zone with ``@`` and ``*`` pointing at 127.0.0.1, taking RFC 2136 updates of
  TXT records signed with a TSIG key made by ``tsig-keygen`` (BIND's format:
  the file the router is given). Pebble resolves through it (``-dnsserver``), so
  HTTP-01 finds the router and DNS-01 sees the records the router added.
* ``Pebble``: Pebble 2.4 with its own HTTPS certificate (Debian ships none: a
  throw-away CA and a leaf for localhost, made by ``keys``), validating HTTP-01
  on the router's HTTP port (``httpPort``) and TLS-ALPN-01 on its HTTPS port
  (``tlsPort``), issuing certificates valid ``certificateValidityPeriod``
  seconds (a short one makes renewal come within a test). Validation is real:
  ``PEBBLE_VA_NOSLEEP`` only removes Pebble's random wait before validating;
  ``PEBBLE_VA_ALWAYS_VALID`` is never set, and ``PEBBLE_AUTHZREUSE=0`` makes
  every order (a renewal too) validate again rather than reuse an earlier
  authorization half the time. Its issuing root is fetched from the
  management API (``/roots/0``): a client trusting it trusts what Pebble issued.

Readiness is a log line under a deadline; the processes belong to the test's
``Stack`` and are ended by PID with it.
"""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trio

import keys

from .conftest import START_TIMEOUT_S, LoggedProcess, Stack

DOMAIN = "hostmux.test"
TSIG_KEY_NAME = "hostmux-acme"


def free_port() -> int:
    """A loopback port free for both TCP and UDP now (a DNS server needs both)."""
    for _ in range(50):
        with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            tcp.bind(("127.0.0.1", 0))
            port: int = tcp.getsockname()[1]
            try:
                udp.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError("no loopback port free for both TCP and UDP")


def need(binary: str, package: str) -> str:
    found = shutil.which(binary) or shutil.which(binary, path="/usr/sbin:/sbin")
    if found is None:
        pytest.fail(f"{binary} is missing: run ./dev (it installs Debian's {package})")
    return found


@dataclass
class DnsZone:
    proc: LoggedProcess
    port: int
    tsig_key_file: Path
    domain: str = DOMAIN

    @property
    def server(self) -> str:
        return f"127.0.0.1:{self.port}"

    def txt(self, fqdn: str) -> list[str]:
        """The TXT records at ``fqdn`` as the server answers now (dig)."""
        done = subprocess.run(
            [need("dig", "dnsutils"), "+short", "+tcp", "@127.0.0.1", "-p", str(self.port),
             "TXT", fqdn],
            capture_output=True, text=True, check=True, timeout=10,
        )  # fmt: skip
        return [line.strip('"') for line in done.stdout.split()]


async def start_dns_zone(stack: Stack) -> DnsZone:
    directory = stack.path("bind9")
    directory.mkdir()
    key_file = directory / "tsig.key"
    made = await trio.run_process(
        [need("tsig-keygen", "bind9-utils"), "-a", "hmac-sha256", TSIG_KEY_NAME],
        capture_stdout=True,
    )
    key_file.write_bytes(made.stdout)
    key_file.chmod(0o600)
    (directory / "zone").write_text(
        "$TTL 60\n"
        f"@ IN SOA ns.{DOMAIN}. hostmaster.{DOMAIN}. ( 1 60 60 600 60 )\n"
        f"@ IN NS ns.{DOMAIN}.\n"
        "ns IN A 127.0.0.1\n@ IN A 127.0.0.1\n* IN A 127.0.0.1\n"
    )
    port = free_port()
    (directory / "named.conf").write_text(
        f'include "{key_file}";\n'
        f'options {{ directory "{directory}"; pid-file none; session-keyfile none;\n'
        f"  listen-on port {port} {{ 127.0.0.1; }}; listen-on-v6 {{ none; }};\n"
        "  recursion no; allow-query { any; }; dnssec-validation no; };\n"
        "controls { };\n"
        f'zone "{DOMAIN}" {{ type primary; file "{directory / "zone"}";\n'
        f"  update-policy {{ grant {TSIG_KEY_NAME} zonesub TXT; }}; }};\n"
    )
    proc = await stack.spawn(
        "named", [need("named", "bind9"), "-g", "-n", "1", "-c", str(directory / "named.conf")]
    )
    await proc.wait_for(r"\brunning$")
    return DnsZone(proc=proc, port=port, tsig_key_file=key_file)


async def until_listening(proc: LoggedProcess, port: int) -> None:
    """Return once 127.0.0.1:``port`` accepts a connection; fail if ``proc`` ends first."""
    with trio.fail_after(START_TIMEOUT_S):
        while True:
            try:
                stream = await trio.open_tcp_stream("127.0.0.1", port)
            except OSError:
                if proc.process.returncode is not None:
                    raise AssertionError(f"{proc.name} exited: {proc.lines[-5:]}") from None
                await trio.sleep(0.02)  # polling a readiness condition, under the deadline
            else:
                await stream.aclose()
                return


@dataclass
class Pebble:
    proc: LoggedProcess
    directory_url: str
    management_url: str
    ca_file: Path  # trusts Pebble's own HTTPS (for the router's acme_ca_file)

    async def root(self, destination: Path) -> Path:
        """Pebble's issuing root (new on every start), written to ``destination``."""
        trust = ssl.create_default_context(cafile=str(self.ca_file))
        async with httpx.AsyncClient(verify=trust, timeout=30) as client:
            response = await client.get(f"{self.management_url}/roots/0")
        response.raise_for_status()
        destination.write_bytes(response.content)  # noqa: ASYNC240 (a small file, set-up)
        return destination


async def start_pebble(
    stack: Stack, dns: DnsZone, *, http_port: int, tls_port: int, validity_s: int = 3600
) -> Pebble:
    directory = stack.path("pebble")
    directory.mkdir()
    ca_files, _ = keys.ensure_dev_tls(directory / "ca", "localhost")
    cert, key = directory / "pebble.crt", directory / "pebble.key"
    keys.issue_leaf_certificate(
        ca_files.ca_cert, directory / "ca" / "dev-ca-key.pem", ["localhost", "127.0.0.1"],
        cert, key,
    )  # fmt: skip
    acme_port, management_port = free_port(), free_port()
    config = {
        "pebble": {
            "listenAddress": f"127.0.0.1:{acme_port}",
            "managementListenAddress": f"127.0.0.1:{management_port}",
            "certificate": str(cert),
            "privateKey": str(key),
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
            "certificateValidityPeriod": validity_s,
        }
    }
    (directory / "pebble.json").write_text(json.dumps(config))
    proc = await stack.spawn(
        "pebble",
        [need("pebble", "pebble"), "-config", str(directory / "pebble.json"),
         "-dnsserver", dns.server],
        env={"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_AUTHZREUSE": "0", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    # Pebble says this just before it binds: ready is both ports answering.
    await proc.wait_for(r"ACME directory available at")
    for port in (acme_port, management_port):
        await until_listening(proc, port)
    return Pebble(
        proc=proc,
        directory_url=f"https://localhost:{acme_port}/dir",
        management_url=f"https://localhost:{management_port}",
        ca_file=ca_files.ca_cert,
    )
