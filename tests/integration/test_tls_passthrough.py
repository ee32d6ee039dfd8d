"""TLS passthrough tunnels (``ssh -R NAME:443:HOST:PORT``): real OpenSSH, real TLS, real sockets.

The backend holds its own certificate, from a CA the router never sees; a
client that trusts only that CA completes its handshake through the router's
HTTPS port, which proves the router did not terminate the connection.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import ssl
import subprocess
import time
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio
from cryptography import x509

from .conftest import LoggedProcess, Router, Stack, public_key_of
from .test_operations import METRICS, get, promtool_check, sample
from .test_ssh_abuse import start_peer
from .tls_certs import Ca, issue, make_ca

NAME = "pt"


async def tls_echo_backend(stack: Stack, ca: Ca, host: str) -> int:
    """A TLS echo server holding a certificate for ``host`` from ``ca``: it answers each
    read with ``backend:`` and the bytes."""
    leaf = issue(ca, stack.tmp, "backend", server_names=[host])
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(leaf.pem)

    async def echo(stream: trio.SSLStream[trio.SocketStream]) -> None:
        async with stream:
            try:
                while data := await stream.receive_some(65536):
                    await stream.send_all(b"backend:" + data)
            except trio.BrokenResourceError:
                pass

    listeners = await stack.nursery.start(
        partial(trio.serve_ssl_over_tcp, echo, 0, context, host="127.0.0.1")
    )
    return int(listeners[0].transport_listener.socket.getsockname()[1])


async def passthrough_tunnel(
    stack: Stack, router: Router, key: Path, name: str, target: int
) -> LoggedProcess:
    argv = stack.ssh_argv(router, key, "-R", f"{name}:443:127.0.0.1:{target}", "tunnel@127.0.0.1")
    return await stack.spawn(f"ssh-{name}", argv, stdin=subprocess.PIPE)


async def backend_round_trip(port: int, ca: Ca, server_name: str) -> dict[str, object]:
    """Handshake with SNI ``server_name`` trusting only ``ca``; one echo; the peer's cert."""
    context = ssl.create_default_context(cafile=str(ca.cert_file))
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    stream = trio.SSLStream(tcp, context, server_hostname=server_name)
    with trio.fail_after(30):
        async with stream:
            await stream.do_handshake()
            peer = stream.getpeercert()
            await stream.send_all(b"ping")
            assert await stream.receive_some(100) == b"backend:ping"
    assert peer is not None
    return dict(peer)


def subject_cn(peer: dict[str, object]) -> str:
    subject = peer["subject"]
    assert isinstance(subject, tuple)
    return str(next(value for rdn in subject for key, value in rdn if key == "commonName"))


async def world(stack: Stack, *extra: str) -> tuple[Router, Ca, Path]:
    router = await stack.start_router("--tls-passthrough", *extra)
    key = stack.new_key("alice")
    router.authorize(public_key_of(key))
    ca = make_ca(stack.tmp, "backend-ca")
    backend = await tls_echo_backend(stack, ca, f"{NAME}.localhost")
    ssh = await passthrough_tunnel(stack, router, key, NAME, backend)
    await ssh.wait_for(rf"Forwarding https://{NAME}\.localhost:\d+ \(TLS passthrough")
    return router, ca, key


async def test_passthrough_name_answers_with_the_backends_certificate(stack: Stack) -> None:
    router, ca, key = await world(stack, "--metrics-listen", "127.0.0.1:0")
    metrics_port = int(router.proc.find(r"event=router_ready .*" + METRICS)[1])  # type: ignore[index]
    app = await stack.start_app()
    await stack.openssh_tunnel(router, key, "web", app.port)

    peer = await backend_round_trip(router.https_port, ca, f"{NAME}.localhost")
    assert subject_cn(peer) == "backend"
    await router.proc.wait_for(
        rf"event=passthrough_connection name={NAME} .*outcome=closed bytes_in=\d+"
    )
    # A terminated name on the same port still gets the router's certificate and HTTP.
    response = await router.get("web", "/headers")
    assert response.status_code == 200
    text = (await get(metrics_port, "/metrics")).text
    assert await promtool_check(text) == ""
    assert sample(text, "hostmux_passthrough_connections_total", outcome="closed") == 1
    assert sample(text, "hostmux_passthrough_bytes_total", direction="in") > 200  # the hello+
    # And the router's own CA does not verify the passthrough name: it never saw its key.
    tcp = await trio.open_tcp_stream("127.0.0.1", router.https_port)
    stream = trio.SSLStream(tcp, router.ssl_context(), server_hostname=f"{NAME}.localhost")
    try:
        with trio.fail_after(30), pytest.raises(trio.BrokenResourceError) as refused:
            await stream.do_handshake()
    finally:
        await trio.aclose_forcefully(stream)
    assert isinstance(refused.value.__cause__, ssl.SSLCertVerificationError)


async def test_host_header_cannot_reach_a_passthrough_name(stack: Stack) -> None:
    router, ca, key = await world(stack)
    app = await stack.start_app()
    await stack.openssh_tunnel(router, key, "web", app.port)
    async with router.client() as client:
        # Terminated for web.localhost (SNI), Host names the passthrough tunnel: 421.
        request = client.build_request(
            "GET", f"https://127.0.0.1:{router.https_port}/headers",
            headers={"host": f"{NAME}.localhost"}, extensions={"sni_hostname": "web.localhost"},
        )  # fmt: skip
        spoofed = await client.send(request)
        plain = await client.send(router.request(client, "GET", NAME, "/", tls=False))
    assert spoofed.status_code == 421
    assert "TLS passthrough" in spoofed.text
    assert plain.status_code == 421
    # The other way: SNI of the passthrough name goes to the backend whatever the Host says
    # (the router never reads it): the backend answers, not the app behind "web".
    peer = await backend_round_trip(router.https_port, ca, f"{NAME}.localhost")
    assert subject_cn(peer) == "backend"


async def test_passthrough_in_one_port_mode(stack: Stack) -> None:
    router, ca, _ = await world(stack, "--one-port-listen", "127.0.0.1:0")
    one_port = int(
        (await router.proc.wait_for(r"event=router_ready .*one_port=127\.0\.0\.1:(\d+)"))[1]
    )
    peer = await backend_round_trip(one_port, ca, f"{NAME}.localhost")
    assert subject_cn(peer) == "backend"


async def handshake_in_pieces(port: int, context: ssl.SSLContext, server_name: str) -> bytes:
    """A TLS handshake whose ClientHello is sent one byte per TCP segment; then one echo.
    Returns the peer's certificate (DER)."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=server_name)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    with trio.fail_after(60):
        async with stream:
            with contextlib.suppress(ssl.SSLWantReadError):
                tls.do_handshake()
            hello = outgoing.read()
            assert len(hello) > 200
            for at in range(len(hello)):
                await stream.send_all(hello[at : at + 1])
                await trio.sleep(0.001)  # pacing: one segment per byte, not a wait for anything
            while True:
                data = await stream.receive_some(65536)
                assert data, "the router closed the connection during the handshake"
                incoming.write(data)
                try:
                    tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    if pending := outgoing.read():
                        await stream.send_all(pending)
            if pending := outgoing.read():
                await stream.send_all(pending)
            der = tls.getpeercert(binary_form=True)
            assert der is not None
            return der


async def test_client_hello_split_into_one_byte_segments(stack: Stack) -> None:
    router, ca, key = await world(stack)
    app = await stack.start_app()
    await stack.openssh_tunnel(router, key, "web", app.port)
    context = ssl.create_default_context(cafile=str(ca.cert_file))
    der = await handshake_in_pieces(router.https_port, context, f"{NAME}.localhost")
    assert x509.load_der_x509_certificate(der).subject.rfc4514_string().startswith("CN=backend")
    # A terminated name read in pieces too: the router's certificate for it.
    der = await handshake_in_pieces(router.https_port, router.ssl_context(), "web.localhost")
    names = (
        x509.load_der_x509_certificate(der)
        .extensions.get_extension_for_class(x509.SubjectAlternativeName)
        .value.get_values_for_type(x509.DNSName)
    )
    assert "web.localhost" in names


async def test_unfinished_client_hello_is_closed_at_the_deadline(stack: Stack) -> None:
    router, _, _ = await world(stack, "--tls-handshake-timeout-s", "2")
    context = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=f"{NAME}.localhost")
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    hello = outgoing.read()
    stream = await trio.open_tcp_stream("127.0.0.1", router.https_port)
    started = time.monotonic()
    with trio.fail_after(30):
        async with stream:
            await stream.send_all(hello[:40])  # a record header and a little: never the rest
            with contextlib.suppress(trio.BrokenResourceError):  # a reset is a close too
                assert await stream.receive_some(100) == b""
    waited = time.monotonic() - started
    assert 1.5 <= waited < 20, waited
    await router.proc.wait_for(r"event=tls_hello_dropped .*no complete ClientHello within 2 s")


async def test_passthrough_names_are_owned_and_need_the_option(stack: Stack) -> None:
    router, _, _ = await world(stack)
    mallory = stack.new_key("mallory")
    router.authorize(public_key_of(mallory))
    thief = await passthrough_tunnel(stack, router, mallory, NAME, 9)
    assert await thief.wait_exit() != 0
    await router.proc.wait_for(rf"event=forward_refused .*reason=\"the name '{NAME}' is in use")
    # A router without tls_passthrough refuses -R NAME:443 in words.
    plain = await stack.start_router()
    plain.authorize(public_key_of(mallory))
    refused = await passthrough_tunnel(stack, plain, mallory, "other", 9)
    assert await refused.wait_exit() != 0
    await plain.proc.wait_for(r"event=forward_refused .*TLS passthrough .* is off on this router")


async def test_https_still_serves_http_names_with_passthrough_on(stack: Stack) -> None:
    router, _, key = await world(stack)
    app = await stack.start_app()
    await stack.openssh_tunnel(router, key, "web", app.port)
    async with httpx.AsyncClient(verify=router.ssl_context(), timeout=30) as client:
        for _ in range(3):
            response = await client.send(router.request(client, "GET", "web", "/headers"))
            assert response.status_code == 200
            assert response.json()["x-forwarded-proto"] == ["https"]


async def test_listener_tls_passthrough(stack: Stack) -> None:
    router = await stack.start_router("--tls-passthrough")
    key = stack.new_key("pod")
    router.authorize(public_key_of(key))
    ca = make_ca(stack.tmp, "pod-ca")
    backend = await tls_echo_backend(stack, ca, "pod.localhost")
    listener = await stack.listener(router, key, backend, "--name", "pod", "--tls-passthrough")
    await listener.wait_for(r"^https://pod\.localhost:\d+$")
    peer = await backend_round_trip(router.https_port, ca, "pod.localhost")
    assert subject_cn(peer) == "backend"


# --- hostile input ----------------------------------------------------------------------


async def test_a_tunnel_that_never_opens_its_channel_is_given_up(stack: Stack) -> None:
    router = await stack.start_router("--tls-passthrough", "--connect-timeout-s", "2")
    key = stack.new_key("stuck")
    router.authorize(public_key_of(key))
    peer = await start_peer(stack, router, [key], "--label-port", "443", "never-confirm", "stuck")
    await peer.wait_for(r"forwarding stuck")
    context = ssl.create_default_context()
    tcp = await trio.open_tcp_stream("127.0.0.1", router.https_port)
    stream = trio.SSLStream(tcp, context, server_hostname="stuck.localhost")
    started = time.monotonic()
    try:
        with trio.fail_after(30), pytest.raises(trio.BrokenResourceError):
            await stream.do_handshake()  # the hello goes nowhere; the router closes at 2 s
    finally:
        await trio.aclose_forcefully(stream)
    assert 1.5 <= time.monotonic() - started < 20
    await router.proc.wait_for(
        r"event=passthrough_connection name=stuck .*outcome=unavailable "
        r"reason=\"the tunnel client did not open a channel in time\""
    )
    assert router.proc.find(r"Traceback") is None


async def test_oversized_or_garbled_hellos_are_refused_and_the_router_goes_on(
    stack: Stack,
) -> None:
    router, ca, _ = await world(stack, "--tls-handshake-timeout-s", "3")
    # A handshake record announcing a 16 MiB ClientHello: over the reader's bound at once.
    for opening in (
        b"\x16\x03\x01\x40\x00\x01\xff\xff\xff" + b"\x03\x03" + b"\x00" * 200,
        b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00",  # a ServerHello, not a ClientHello
        b"\x16\x03\x01\x00\x00",  # an empty record
    ):
        stream = await trio.open_tcp_stream("127.0.0.1", router.https_port)
        with trio.fail_after(30):
            async with stream:
                await stream.send_all(opening)
                with contextlib.suppress(trio.BrokenResourceError):
                    while await stream.receive_some(4096):  # an alert, perhaps; then the end
                        pass
    # Still serving, passthrough and all.
    peer = await backend_round_trip(router.https_port, ca, f"{NAME}.localhost")
    assert subject_cn(peer) == "backend"
    assert router.proc.find(r"Traceback") is None


async def test_a_drain_stops_accepting_on_the_peeking_listener(stack: Stack) -> None:
    router, _, _ = await world(stack, "--shutdown-grace-s", "1")
    held = await trio.open_tcp_stream("127.0.0.1", router.https_port)  # accepted before
    router.proc.process.send_signal(signal.SIGUSR2)
    await router.proc.wait_for(r"event=drain_done")
    with trio.fail_after(30), pytest.raises(OSError, match="all attempts to connect"):
        await trio.open_tcp_stream("127.0.0.1", router.https_port)
    await held.aclose()
    assert router.proc.process.returncode is None  # drained, not stopped
    assert router.proc.find(r"Traceback") is None
