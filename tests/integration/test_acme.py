"""Certificates from ACME (issue 19, point 4): the router against Debian's Pebble.

Real parts: the router as a process, Pebble 2.4 validating for real (no
``PEBBLE_VA_ALWAYS_VALID``), BIND 9 serving the test zone and taking the
router's RFC 2136 updates (or ``nsupdate`` run by the hook command), stock
OpenSSH tunnels and a WebSocket through the front door. A TLS client trusts
only Pebble's root, fetched from Pebble's management API. Waits are log lines
under deadlines; nothing sleeps.
"""

from __future__ import annotations

import hashlib
import os
import re
import ssl
from pathlib import Path

import httpx
import redis
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding

from .acme_world import DOMAIN, DnsZone, Pebble, free_port, need, start_dns_zone, start_pebble
from .conftest import Router, Stack, public_key_of, websocket_and_stream
from .redis_server import RedisServer
from .test_workers import MAX_CONNECTIONS_TO_SEE_BOTH, start_workers

METRICS = r"metrics=127\.0\.0\.1:(\d+)"
INSTALLED = r'event=acme_certificate_installed names="?([^"\s]+)"? not_after=\S+ file=(\S+)'
# Reason: Pebble issues certificates valid this long in the renewal test: renewal comes at
# two thirds of it (16-18 s), after the test has set up its WebSocket, within one deadline.
SHORT_VALIDITY_S = 27


async def start_acme_router(
    stack: Stack, pebble: Pebble, *extra: str, ports: tuple[int, int, int] = (0, 0, 0)
) -> Router:
    router = await stack.start_router(
        "--domain", DOMAIN, "--acme-directory-url", pebble.directory_url,
        "--acme-ca-file", str(pebble.ca_file), "--acme-email", "ops@hostmux.test",
        *extra, ports=ports,
    )  # fmt: skip
    router.domain = DOMAIN
    return router


async def certificate_seen(router: Router, server_name: str, root: Path) -> x509.Certificate:
    """The certificate a fresh handshake gets, verified by a client trusting only ``root``."""
    context = ssl.create_default_context(cafile=os.fspath(root))
    tcp = await trio.open_tcp_stream("127.0.0.1", router.https_port)
    stream = trio.SSLStream(tcp, context, server_hostname=server_name)
    try:
        await stream.do_handshake()
        der = stream.getpeercert(binary_form=True)
        assert der is not None
        return x509.load_der_x509_certificate(der)
    finally:
        await stream.aclose()


def dns_names(certificate: x509.Certificate) -> set[str]:
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    return set(san.value.get_values_for_type(x509.DNSName))


async def test_dns01_wildcard_is_issued_served_and_renewed_without_dropping_a_websocket(
    stack: Stack, tmp_path: Path
) -> None:
    dns = await start_dns_zone(stack)
    pebble = await start_pebble(stack, dns, http_port=1, tls_port=1, validity_s=SHORT_VALIDITY_S)
    router = await start_acme_router(
        stack, pebble, "--acme-challenge", "dns-01", "--acme-dns-server", dns.server,
        "--acme-dns-tsig-key-file", str(dns.tsig_key_file),
    )  # fmt: skip
    first = await router.proc.wait_for(INSTALLED)
    assert first[1] == f"{DOMAIN},*.{DOMAIN}"
    root = router.ca_cert = await pebble.root(tmp_path / "pebble-root.pem")
    stored = Path(first[2])
    for path in (stored, stored.with_suffix(".key"), router.state_dir / "acme" / "account.key"):
        assert os.stat(path).st_mode & 0o777 == 0o600, path
    # A client trusting only Pebble's root accepts it, for a tunnel's name and the domain.
    served = await certificate_seen(router, f"demo.{DOMAIN}", root)
    assert dns_names(served) == {DOMAIN, f"*.{DOMAIN}"}
    assert (await certificate_seen(router, DOMAIN, root)).serial_number == served.serial_number
    assert dns.txt(f"_acme-challenge.{DOMAIN}") == []  # the records were taken down

    # A WebSocket through a tunnel, opened over the first certificate...
    app = await stack.start_app()
    alice = stack.new_key("alice")
    router.authorize(public_key_of(alice))
    await stack.openssh_tunnel(router, alice, "demo", app.port)
    stream, websocket = await websocket_and_stream(stack.nursery, router, "demo")
    await websocket.send_message("before")
    assert await websocket.get_message() == "before"

    # ...renewal at two thirds of the short lifetime puts a new one in place...
    renewed = await router.proc.wait_for(INSTALLED, start=router.proc.lines.index(first.string) + 1)
    assert router.proc.find(r"event=acme_renewal_scheduled", 0)
    published = [line for line in router.proc.lines if "event=acme_challenge_published" in line]
    assert len(published) == 4  # the renewal validated both names again
    new = await certificate_seen(router, f"demo.{DOMAIN}", root)
    assert new.serial_number != served.serial_number
    assert new.not_valid_after_utc > served.not_valid_after_utc
    assert renewed[2] == first[2]
    # ...and the WebSocket keeps echoing over the handshake it made before.
    assert stream.getpeercert(binary_form=True) == served.public_bytes(Encoding.DER)
    await websocket.send_message("after")
    assert await websocket.get_message() == "after"
    assert not router.proc.find(r"event=acme_failed")
    await websocket.aclose()
    await stream.aclose()


async def test_http01_certificate_for_the_domain(stack: Stack, tmp_path: Path) -> None:
    dns = await start_dns_zone(stack)
    http_port, https_port = free_port(), free_port()
    pebble = await start_pebble(stack, dns, http_port=http_port, tls_port=https_port)
    router = await start_acme_router(
        stack, pebble, "--acme-challenge", "http-01", ports=(0, https_port, http_port)
    )
    installed = await router.proc.wait_for(INSTALLED)
    assert installed[1] == DOMAIN
    assert router.proc.find(rf"event=acme_challenge_published name={DOMAIN} type=http-01")
    root = await pebble.root(tmp_path / "pebble-root.pem")
    served = await certificate_seen(router, DOMAIN, root)
    assert dns_names(served) == {DOMAIN}
    # Done: the token is forgotten (404); another host's /.well-known is routed as usual.
    async with httpx.AsyncClient(timeout=30) as client:
        url = f"http://127.0.0.1:{http_port}/.well-known/acme-challenge/some-token"
        mine = await client.get(url, headers={"host": DOMAIN})
        other = await client.get(url, headers={"host": f"demo.{DOMAIN}"})
    assert mine.status_code == 404 and "no such ACME challenge" in mine.text
    assert other.status_code == 404 and "no tunnel is called 'demo'" in other.text


async def test_dns01_by_the_hook_command(stack: Stack, tmp_path: Path) -> None:
    dns: DnsZone = await start_dns_zone(stack)
    pebble = await start_pebble(stack, dns, http_port=1, tls_port=1)
    calls = tmp_path / "hook-calls"
    hook = tmp_path / "dns-hook"
    hook.write_text(
        "#!/bin/sh\n"
        f'echo "$1 $2" >> {calls}\n'
        'op=add; [ "$1" = remove ] && op=delete\n'
        f"printf 'server 127.0.0.1 {dns.port}\\nupdate %s %s. 60 TXT \"%s\"\\nsend\\n' "
        f'"$op" "$2" "$3" | {need("nsupdate", "dnsutils")} -v -k {dns.tsig_key_file}\n'
    )
    hook.chmod(0o700)
    router = await start_acme_router(
        stack, pebble, "--acme-challenge", "dns-01", "--acme-dns-hook", str(hook)
    )
    installed = await router.proc.wait_for(INSTALLED)
    assert installed[1] == f"{DOMAIN},*.{DOMAIN}"
    fqdn = f"_acme-challenge.{DOMAIN}"
    said = calls.read_text().splitlines()
    assert said.count(f"add {fqdn}") == 2 and said.count(f"remove {fqdn}") == 2, said
    assert dns.txt(fqdn) == []
    root = await pebble.root(tmp_path / "pebble-root.pem")
    assert dns_names(await certificate_seen(router, f"x.{DOMAIN}", root)) == {
        DOMAIN, f"*.{DOMAIN}"
    }  # fmt: skip


async def test_readyz_says_when_acme_renewals_fail_while_the_certificate_serves(
    stack: Stack, tmp_path: Path
) -> None:
    dns = await start_dns_zone(stack)
    pebble = await start_pebble(stack, dns, http_port=1, tls_port=1, validity_s=SHORT_VALIDITY_S)
    router = await start_acme_router(
        stack, pebble, "--acme-challenge", "dns-01", "--acme-dns-server", dns.server,
        "--acme-dns-tsig-key-file", str(dns.tsig_key_file), "--metrics-listen", "127.0.0.1:0",
    )  # fmt: skip
    metrics = router.proc.find(METRICS)
    assert metrics is not None
    port = int(metrics[1])
    await router.proc.wait_for(INSTALLED)
    assert (await ops_get(port, "/readyz")).json() == {"status": "ready"}
    # The DNS server goes away: the renewal fails, the certificate in use still serves.
    assert await dns.proc.stop() == 0
    failed = await router.proc.wait_for(r"event=acme_failed .*reason=\"RFC 2136 add")
    assert 'serving="the certificate in use"' in failed.string
    answer = await ops_get(port, "/readyz")
    body = answer.json()
    assert answer.status_code == 200 and body["status"] == "degraded", body
    assert body["degraded"]["acme"].startswith("ACME renewal failing (1 tries): RFC 2136 add")
    text = (await ops_get(port, "/metrics")).text
    assert re.search(r'^hostmux_degraded\{component="acme"\} 1\.0$', text, re.MULTILINE)
    root = await pebble.root(tmp_path / "pebble-root.pem")
    assert dns_names(await certificate_seen(router, f"demo.{DOMAIN}", root)) == {
        DOMAIN, f"*.{DOMAIN}"
    }  # fmt: skip


async def ops_get(port: int, path: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10.0) as client:
        return await client.get(f"http://127.0.0.1:{port}{path}")


async def test_with_workers_the_first_orders_and_every_worker_serves_it(
    stack: Stack, tmp_path: Path, redis_server: RedisServer
) -> None:
    dns = await start_dns_zone(stack)
    pebble = await start_pebble(stack, dns, http_port=1, tls_port=1)
    workers = await start_workers(
        stack, redis_server, "--domain", DOMAIN, "--acme-directory-url", pebble.directory_url,
        "--acme-ca-file", str(pebble.ca_file), "--acme-challenge", "dns-01",
        "--acme-dns-server", dns.server, "--acme-dns-tsig-key-file", str(dns.tsig_key_file),
    )  # fmt: skip
    proc = workers.supervisor
    installed = await proc.wait_for(INSTALLED + r" worker=(\d)$")
    other = "2" if installed[3] == "1" else "1"  # the registry's lock let one order
    await proc.wait_for(rf"event=acme_certificate_loaded .* worker={other}$")
    orders = [line for line in proc.lines if "event=acme_order_created" in line]
    assert len(orders) == 1 and orders[0].endswith(f"worker={installed[3]}"), orders
    root = await pebble.root(tmp_path / "pebble-root.pem")
    # Fresh verified connections until both workers have answered one: each served it.
    start, answered_by = len(proc.lines), set()
    pattern = re.compile(rf"event=request .*host={re.escape(DOMAIN)} .* worker=(\d+)$")
    for _ in range(MAX_CONNECTIONS_TO_SEE_BOTH):
        context = ssl.create_default_context(cafile=os.fspath(root))
        async with httpx.AsyncClient(verify=context, timeout=30) as client:
            response = await client.get(
                f"https://127.0.0.1:{workers.router.https_port}/",
                headers={"host": DOMAIN}, extensions={"sni_hostname": DOMAIN},
            )  # fmt: skip
        assert response.status_code == 200
        answered_by = {m[1] for line in proc.lines[start:] if (m := pattern.search(line))}
        if answered_by == {"1", "2"}:
            break
    assert answered_by == {"1", "2"}, installed.string


async def test_tls_alpn01_is_answered_on_the_https_port_by_the_hello(
    stack: Stack, tmp_path: Path
) -> None:
    dns = await start_dns_zone(stack)
    http_port, https_port = free_port(), free_port()
    pebble = await start_pebble(stack, dns, http_port=http_port, tls_port=https_port)
    router = await start_acme_router(
        stack, pebble, "--acme-challenge", "tls-alpn-01", ports=(0, https_port, http_port)
    )
    installed = await router.proc.wait_for(INSTALLED)
    assert installed[1] == DOMAIN
    # Pebble's validation got the challenge certificate (acme-tls/1 in its hello)...
    assert router.proc.find(rf"event=acme_tls_alpn_answered name={re.escape(DOMAIN)}")
    root = await pebble.root(tmp_path / "pebble-root.pem")
    # ...and an ordinary client gets the certificate and the front door, through the same
    # listener; a connection that is not TLS at all is only dropped.
    assert dns_names(await certificate_seen(router, DOMAIN, root)) == {DOMAIN}
    junk = await trio.open_tcp_stream("127.0.0.1", https_port)
    await junk.send_all(b"GET / HTTP/1.1\r\n\r\n")
    await junk.aclose()
    stalled = await trio.open_tcp_stream("127.0.0.1", https_port)
    await stalled.send_all(b"\x16\x03\x01\x02")  # a hello that never comes: others go on
    context = ssl.create_default_context(cafile=os.fspath(root))
    async with httpx.AsyncClient(verify=context, timeout=30) as client:
        home = await client.get(
            f"https://127.0.0.1:{https_port}/", headers={"host": DOMAIN},
            extensions={"sni_hostname": DOMAIN},
        )  # fmt: skip
    assert home.status_code == 200
    assert router.proc.process.returncode is None
    await stalled.aclose()


async def test_two_routers_on_one_registry_order_once_answer_http01_and_serve_one_certificate(
    stack: Stack, tmp_path: Path, redis_server: RedisServer
) -> None:
    dns = await start_dns_zone(stack)
    http_port = free_port()  # Pebble asks router "b" only, and "b" never orders:
    pebble = await start_pebble(stack, dns, http_port=http_port, tls_port=1)
    common = ("--acme-challenge", "http-01", "--registry", redis_server.url)
    # its CA is unreachable (its order fails and backs off for a minute), so the answer
    # Pebble gets comes from the registry, put there by "a", which orders.
    follower = await stack.start_router(
        "--domain", DOMAIN, "--acme-directory-url", "https://127.0.0.1:1/directory",
        *common, "--router-id", "b", state_dir=stack.path("router-b-state"),
        ports=(0, 0, http_port),
    )  # fmt: skip
    await follower.proc.wait_for(r"event=acme_failed .*retry_in_s=")
    orderer = await start_acme_router(stack, pebble, *common, "--router-id", "a")
    routers = [orderer, follower]
    installed = await orderer.proc.wait_for(INSTALLED)
    assert installed[1] == DOMAIN
    await follower.proc.wait_for(rf"event=acme_certificate_loaded names={DOMAIN}")
    assert orderer.proc.find(r"event=acme_challenge_valid name=" + re.escape(DOMAIN))
    orders = [line for r in routers for line in r.proc.lines if "event=acme_order_created" in line]
    assert len(orders) == 1 and not follower.proc.find("event=acme_order_created"), orders
    assert not orderer.proc.find(r"event=acme_failed")
    root = await pebble.root(tmp_path / "pebble-root.pem")
    seen = [await certificate_seen(router, DOMAIN, root) for router in routers]
    assert dns_names(seen[0]) == {DOMAIN}
    assert [c.fingerprint(hashes.SHA256()) for c in seen] == [
        seen[0].fingerprint(hashes.SHA256())
    ] * 2
    # A challenge answer put in the registry is answered by both routers (the one that
    # did not order included), and gone from both once the registry drops it.
    client = redis.Redis(host="127.0.0.1", port=redis_server.port, decode_responses=True)
    answer = hashlib.sha256(b"probe").hexdigest()
    client.hset("hostmux:acme:http", f"{DOMAIN} probe-token", answer)
    for router in routers:
        assert await challenge_answer(router, "probe-token", want=200) == answer
    client.hdel("hostmux:acme:http", f"{DOMAIN} probe-token")
    for router in routers:
        await challenge_answer(router, "probe-token", want=404)
    client.close()


async def challenge_answer(router: Router, token: str, *, want: int) -> str:
    """The body of the HTTP-01 answer for ``token``, asked until it has status ``want``
    (a router looks in the registry every second) under a deadline."""
    url = f"http://127.0.0.1:{router.http_port}/.well-known/acme-challenge/{token}"
    with trio.fail_after(10):
        async with httpx.AsyncClient(timeout=5) as client:
            while True:
                response = await client.get(url, headers={"host": DOMAIN})
                if response.status_code == want:
                    return response.text
                await trio.sleep(0.2)  # polling the router's answer under the deadline
