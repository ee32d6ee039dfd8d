"""Client certificates at the front door (``[[client_cert_routes]]``): curl ``--cert``, a
Python TLS client, real OpenSSH tunnels to the sample app."""

from __future__ import annotations

import base64
import hashlib
import json
import ssl
from dataclasses import dataclass
from pathlib import Path

import trio
from cryptography.hazmat.primitives import serialization

from .conftest import Router, Stack, public_key_of
from .test_reload import reload
from .tls_certs import Ca, Leaf, issue, make_ca, revoke

# TLS handshake message type 13 (RFC 8446 4.3.2): the server asks for a certificate.
CERTIFICATE_REQUEST = 13
NAMES = ("lab-1", "strict-1", "crl-1", "open")


@dataclass
class World:
    router: Router
    lab_ca: Ca
    strict_ca: Ca
    crl_ca: Ca
    alice: Leaf  # lab_ca's client
    bob: Leaf  # strict_ca's client
    revoked: Leaf  # crl_ca's, on its CRL
    carol: Leaf  # crl_ca's, not revoked
    config: Path


def config_text(lab: Ca, strict: Ca, crl: Ca, crl_file: Path) -> str:
    return (
        f'[[client_cert_routes]]\nnames = "lab-*"\nca_file = "{lab.cert_file}"\n'
        f'[[client_cert_routes]]\nnames = ["strict-*"]\nca_file = "{strict.cert_file}"\n'
        "required_at_handshake = true\n"
        f'[[client_cert_routes]]\nnames = "crl-*"\nca_file = "{crl.cert_file}"\n'
        f'crl_file = "{crl_file}"\n'
    )


async def start_world(stack: Stack, *extra: str) -> World:
    certs = stack.path("certs")
    certs.mkdir()
    lab, strict, crl = (make_ca(certs, n) for n in ("lab-ca", "strict-ca", "crl-ca"))
    alice, bob = issue(lab, certs, "alice"), issue(strict, certs, "bob")
    revoked, carol = issue(crl, certs, "revoked"), issue(crl, certs, "carol")
    crl_file = revoke(crl, certs, revoked)
    config = stack.path("router.toml")
    config.write_text(config_text(lab, strict, crl, crl_file))
    router = await stack.start_router("--config", str(config), *extra)
    key = stack.new_key("tunnels")
    router.authorize(public_key_of(key))
    app = await stack.start_app()
    forwards = [arg for n in NAMES for arg in ("-R", f"{n}:80:127.0.0.1:{app.port}")]
    await stack.spawn(
        "ssh-tunnels", stack.ssh_argv(router, key, "-N", *forwards, "tunnel@127.0.0.1")
    )
    for name in NAMES:
        await router.proc.wait_for(rf"event=tunnel_up name={name} ")
    return World(router, lab, strict, crl, alice, bob, revoked, carol, config)


@dataclass
class CurlResult:
    code: int  # curl's exit status
    status: int  # the HTTP status (0: none)
    body: str

    def json(self) -> dict[str, list[str]]:
        found: dict[str, list[str]] = json.loads(self.body)
        return found


async def curl(
    router: Router, name: str, *args: str, cert: Leaf | None = None, path: str = "/headers"
) -> CurlResult:
    host = f"{name}.localhost"
    argv = [
        "curl", "-sS", "--max-time", "30", "--cacert", str(router.ca_cert),
        "--resolve", f"{host}:{router.https_port}:127.0.0.1",
        "-w", "\n%{http_code}", *args,
    ]  # fmt: skip
    if cert is not None:
        argv += ["--cert", str(cert.pem)]
    argv.append(f"https://{host}:{router.https_port}{path}")
    with trio.fail_after(60):
        done = await trio.run_process(argv, capture_stdout=True, capture_stderr=True, check=False)
    out = done.stdout.decode()
    body, _, status = out.rpartition("\n")
    return CurlResult(done.returncode, int(status or 0), body)


async def test_route_refuses_without_a_good_certificate_and_tells_the_app(stack: Stack) -> None:
    world = await start_world(stack)
    router = world.router
    # No certificate: a clear 403 page.
    bare = await curl(router, "lab-1", "-H", "Accept: text/html")
    assert bare.status == 403
    assert "needs a client certificate" in bare.body
    # A certificate from another CA: refused at the handshake (no HTTP at all).
    wrong = await curl(router, "lab-1", cert=world.bob)
    assert wrong.code != 0
    assert wrong.status == 0
    # A good certificate: the app sees who, and only the router's word for it.
    spoofs = (
        "-H", "X-Client-Cert-Subject: CN=mallory", "-H", "x_client_cert_subject: CN=mallory",
        "-H", "Client-Cert: :bWFsbG9yeQ==:", "-H", "X-Client-Cert-Fingerprint: 00",
        "-H", "Client_Cert_Chain: :bWFsbG9yeQ==:",
    )  # fmt: skip
    good = await curl(router, "lab-1", *spoofs, cert=world.alice)
    assert good.code == 0
    assert good.status == 200
    headers = good.json()
    assert headers["x-client-cert-subject"] == ["CN=alice,O=hostmux tests"]
    assert headers["x-client-cert-fingerprint"] == [hashlib.sha256(world.alice.der).hexdigest()]
    assert headers["client-cert"] == [":" + base64.b64encode(world.alice.der).decode() + ":"]
    ca_der = world.lab_ca.certificate.public_bytes(serialization.Encoding.DER)
    assert headers["client-cert-chain"] == [":" + base64.b64encode(ca_der).decode() + ":"]
    assert not [h for h in headers if h.startswith(("x_client", "client_cert"))]
    # A name under no route: the client-sent copies are dropped there too, and no 403.
    open_name = await curl(router, "open", *spoofs)
    assert open_name.status == 200
    assert not [h for h in open_name.json() if "client" in h and "cert" in h]


async def test_required_at_handshake_is_a_tls_alert(stack: Stack) -> None:
    world = await start_world(stack)
    bare = await curl(world.router, "strict-1")
    assert bare.code != 0
    assert bare.status == 0
    good = await curl(world.router, "strict-1", cert=world.bob)
    assert good.status == 200
    assert good.json()["x-client-cert-subject"] == ["CN=bob,O=hostmux tests"]


async def test_revoked_certificate_is_refused(stack: Stack) -> None:
    world = await start_world(stack)
    revoked = await curl(world.router, "crl-1", cert=world.revoked)
    assert revoked.code != 0
    assert revoked.status == 0
    carol = await curl(world.router, "crl-1", cert=world.carol)
    assert carol.status == 200
    assert carol.json()["x-client-cert-subject"] == ["CN=carol,O=hostmux tests"]


async def handshake_messages(router: Router, server_name: str, cert: Leaf) -> list[int]:
    """The handshake message types a Python TLS client (with a certificate it could
    send) received for SNI ``server_name``."""
    received: list[int] = []
    context = router.ssl_context()
    context.load_cert_chain(cert.pem)

    def on_message(
        _conn: object, direction: str, _version: object, content: object, message: object, _: bytes
    ) -> None:
        if direction == "read" and content == ssl._TLSContentType.HANDSHAKE:  # type: ignore[attr-defined]
            received.append(int(message))  # type: ignore[call-overload]

    context._msg_callback = on_message  # type: ignore[attr-defined]
    tcp = await trio.open_tcp_stream("127.0.0.1", router.https_port)
    stream = trio.SSLStream(tcp, context, server_hostname=server_name)
    with trio.fail_after(30):
        async with stream:
            await stream.do_handshake()
            request = f"GET /headers HTTP/1.1\r\nHost: {server_name}\r\nConnection: close\r\n\r\n"
            await stream.send_all(request.encode())
            while await stream.receive_some(65536):
                pass
    return received


async def test_names_without_a_route_are_never_asked_for_a_certificate(stack: Stack) -> None:
    world = await start_world(stack)
    asked = await handshake_messages(world.router, "lab-1.localhost", world.alice)
    assert CERTIFICATE_REQUEST in asked
    not_asked = await handshake_messages(world.router, "open.localhost", world.alice)
    assert CERTIFICATE_REQUEST not in not_asked
    assert not_asked  # the callback saw the handshake (ServerHello and the rest)


async def request_with_sni(
    router: Router, server_name: str, host: str, cert: Leaf | None
) -> tuple[int, bytes]:
    context = router.ssl_context()
    if cert is not None:
        context.load_cert_chain(cert.pem)
    tcp = await trio.open_tcp_stream("127.0.0.1", router.https_port)
    stream = trio.SSLStream(tcp, context, server_hostname=server_name)
    answer = b""
    with trio.fail_after(30):
        async with stream:
            await stream.do_handshake()
            await stream.send_all(
                f"GET /headers HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
            )
            while data := await stream.receive_some(65536):
                answer += data
    status = int(answer.split(b" ", 2)[1])
    return status, answer


async def test_host_header_cannot_borrow_another_names_certificate(stack: Stack) -> None:
    world = await start_world(stack)
    router = world.router
    # Made for a name under no route (no certificate asked), Host under a route: 403.
    status, _ = await request_with_sni(router, "open.localhost", "lab-1.localhost", None)
    assert status == 403
    # A certificate verified for lab-* does not open strict-* by its Host header.
    status, _ = await request_with_sni(router, "lab-1.localhost", "strict-1.localhost", world.alice)
    assert status == 403
    # Same route, another of its names: served.
    status, body = await request_with_sni(router, "lab-1.localhost", "lab-1.localhost", world.alice)
    assert status == 200
    assert b"CN=alice" in body


async def test_sighup_reads_the_ca_files_again(stack: Stack) -> None:
    world = await start_world(stack)
    router = world.router
    assert (await curl(router, "lab-1", cert=world.alice)).status == 200
    newer = make_ca(stack.path("newer").parent, "newer-ca")
    dave = issue(newer, stack.tmp, "dave")
    world.lab_ca.cert_file.write_bytes(newer.cert_file.read_bytes())  # the file, replaced
    await reload(router.proc)
    assert (await curl(router, "lab-1", cert=dave)).status == 200
    refused = await curl(router, "lab-1", cert=world.alice)
    assert refused.status == 0
    assert refused.code != 0
    # A CA file that no longer loads keeps the routes in use.
    world.lab_ca.cert_file.write_text("not a certificate\n")
    await reload(router.proc, r"event=reload_kept what=client_cert_routes")
    assert (await curl(router, "lab-1", cert=dave)).status == 200


async def test_one_port_mode_asks_the_same(stack: Stack) -> None:
    world = await start_world(stack, "--one-port-listen", "127.0.0.1:0")
    router = world.router
    one_port = int(
        (await router.proc.wait_for(r"event=router_ready .*one_port=127\.0\.0\.1:(\d+)"))[1]
    )
    router.https_port = one_port  # curl() dials the router's HTTPS port: the one port now
    assert (await curl(router, "lab-1")).status == 403
    good = await curl(router, "lab-1", cert=world.alice)
    assert good.status == 200
    assert good.json()["x-client-cert-subject"] == ["CN=alice,O=hostmux tests"]
    asked = await handshake_messages(router, "open.localhost", world.alice)
    assert CERTIFICATE_REQUEST not in asked
