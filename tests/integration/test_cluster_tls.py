"""TLS passthrough and client certificates in a cluster (issue 20, points 3-4 across routers).

Real parts: Debian's redis-server, routers as processes linked by the cluster
CA (``cluster_world``), stock OpenSSH ``ssh -R`` clients, a TLS backend with a
certificate from a CA no router sees (``test_tls_passthrough``), curl
``--cert`` with client certificates (``test_client_certs``).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import trio

from .cluster_world import ClusterCA, link_line, start_member
from .conftest import Stack, public_key_of
from .redis_server import RedisServer
from .test_client_certs import curl
from .test_tls_passthrough import (
    NAME,
    backend_round_trip,
    passthrough_tunnel,
    subject_cn,
    tls_echo_backend,
)
from .test_workers import MAX_CONNECTIONS_TO_SEE_BOTH, start_workers
from .tls_certs import issue, make_ca


async def test_a_passthrough_name_held_on_one_router_answers_through_another(
    stack: Stack, redis_server: RedisServer, tmp_path: Path
) -> None:
    ca = ClusterCA.create(tmp_path / "cluster-ca")
    alice = stack.new_key("alice")
    one = await start_member(stack, redis_server, ca, "r1", "--tls-passthrough", keys=(alice,))
    two = await start_member(stack, redis_server, ca, "r2", "--tls-passthrough", keys=(alice,))
    backend_ca = make_ca(stack.tmp, "backend-ca")
    backend = await tls_echo_backend(stack, backend_ca, f"{NAME}.localhost")
    ssh = await passthrough_tunnel(stack, one.router, alice, NAME, backend)
    await ssh.wait_for(rf"Forwarding https://{NAME}\.localhost:\d+ \(TLS passthrough")
    app = await stack.start_app()
    await stack.openssh_tunnel(one.router, alice, "web", app.port)

    # Router 2 holds nothing: the raw TLS (its hello included) crosses the link to router 1,
    # and the client, trusting only the backend's CA, completes its handshake.
    peer = await backend_round_trip(two.router.https_port, backend_ca, f"{NAME}.localhost")
    assert subject_cn(peer) == "backend"
    await two.router.proc.wait_for(
        rf"event=passthrough_connection name={NAME} .*outcome=closed bytes_in=\d+"
    )
    assert link_line(one, NAME) is not None
    # Its Host header cannot reach it through router 2 (a connection terminated for another
    # SNI, or plain HTTP): 421, decided by the route's kind, not by router 1.
    async with two.router.client() as client:
        request = client.build_request(
            "GET", f"https://127.0.0.1:{two.router.https_port}/headers",
            headers={"host": f"{NAME}.localhost"}, extensions={"sni_hostname": "web.localhost"},
        )  # fmt: skip
        misdirected = await client.send(request)
        plain = await client.send(two.router.request(client, "GET", NAME, "/", tls=False))
    assert misdirected.status_code == 421
    assert "TLS passthrough" in misdirected.text
    assert plain.status_code == 421
    # An HTTP name held on router 1 is still terminated by router 2 and forwarded.
    forwarded = await two.router.get("web", "/headers")
    assert forwarded.status_code == 200
    assert link_line(one, "web") is not None
    # A name is HTTP or passthrough cluster-wide: its own key cannot hold it as HTTP
    # elsewhere while it is held as passthrough.
    argv = stack.ssh_argv(
        two.router, alice, "-o", "ExitOnForwardFailure=yes", "-R",
        f"{NAME}:80:127.0.0.1:{app.port}", "tunnel@127.0.0.1",
    )  # fmt: skip
    await stack.spawn("ssh-http-pt", argv, stdin=subprocess.PIPE)
    await two.router.proc.wait_for(
        r"event=forward_refused .*reason=.*by this key as a TLS passthrough name"
    )


async def test_client_certificate_routes_hold_across_the_router_link(
    stack: Stack, redis_server: RedisServer, tmp_path: Path
) -> None:
    certs = stack.path("certs")
    certs.mkdir()
    lab, other = make_ca(certs, "lab-ca"), make_ca(certs, "other-ca")
    alice = issue(lab, certs, "alice")
    config = stack.path("routes.toml")
    config.write_text(f'[[client_cert_routes]]\nnames = "lab-*"\nca_file = "{lab.cert_file}"\n')
    ca = ClusterCA.create(tmp_path / "cluster-ca")
    key = stack.new_key("tunnels")
    with_routes = ("--config", str(config))
    one = await start_member(stack, redis_server, ca, "r1", *with_routes, keys=(key,))
    two = await start_member(stack, redis_server, ca, "r2", *with_routes, keys=(key,))
    # A router whose configuration lacks the route (a mistake): the holder still checks.
    bare = await start_member(stack, redis_server, ca, "r3", keys=(key,))
    app = await stack.start_app()
    await stack.openssh_tunnel(one.router, key, "lab-1", app.port)

    spoofs = (
        "-H", "X-Client-Cert-Subject: CN=mallory", "-H", "Client-Cert: :bWFsbG9yeQ==:",
        "-H", "X-Hostmux-Client-Cert-Route: lab-*", "-H", "X-Hostmux-User: mallory",
    )  # fmt: skip
    good = await curl(two.router, "lab-1", *spoofs, cert=alice)
    assert good.status == 200, good.body
    headers = good.json()
    assert headers["x-client-cert-subject"] == ["CN=alice,O=hostmux tests"]
    assert len(headers["client-cert"]) == 1
    assert "bWFsbG9yeQ" not in headers["client-cert"][0]
    assert not [h for h in headers if h.startswith("x-hostmux")]
    assert link_line(one, "lab-1") is not None
    # Without a certificate router 2 refuses it itself; a certificate of another CA fails
    # the handshake.
    assert (await curl(two.router, "lab-1")).status == 403
    wrong = await curl(two.router, "lab-1", cert=issue(other, certs, "eve"))
    assert (wrong.code != 0, wrong.status) == (True, 0)
    # Router 3 has no route and forwards; router 1 (the holder) refuses: 403, whatever the
    # browser wrote in link-looking headers.
    unverified = await curl(bare.router, "lab-1", *spoofs, "-H", "Accept: text/html")
    assert unverified.status == 403
    assert "needs a client certificate" in unverified.body
    await one.router.proc.wait_for(r"event=link_certificate_required name=lab-1 router=r3 ")


async def test_workers_relay_passthrough_to_the_worker_holding_it(
    stack: Stack, redis_server: RedisServer
) -> None:
    """``workers = 2`` with ``tls_passthrough``: the kernel hands each TLS connection to
    either worker; the one without the tunnel relays it over the workers' link."""
    workers = await start_workers(stack, redis_server, "--tls-passthrough")
    alice = stack.new_key("alice")
    workers.router.authorize(public_key_of(alice))
    backend_ca = make_ca(stack.tmp, "backend-ca")
    backend = await tls_echo_backend(stack, backend_ca, f"{NAME}.localhost")
    ssh = await passthrough_tunnel(stack, workers.router, alice, NAME, backend)
    await ssh.wait_for(rf"Forwarding https://{NAME}\.localhost:\d+ \(TLS passthrough")
    proc, start = workers.supervisor, len(workers.supervisor.lines)
    pattern = re.compile(
        rf"event=passthrough_connection name={NAME} .*outcome=closed .* worker=(\d+)$"
    )
    seen: set[str] = set()
    for _ in range(MAX_CONNECTIONS_TO_SEE_BOTH):
        peer = await backend_round_trip(workers.router.https_port, backend_ca, f"{NAME}.localhost")
        assert subject_cn(peer) == "backend"
        seen = {m[1] for line in proc.lines[start:] if (m := pattern.search(line))}
        if seen == {"1", "2"}:
            break
    for n in {"1", "2"} - seen:  # a line may trail its connection's end by a moment
        with trio.fail_after(30):
            await proc.wait_for(pattern.pattern.replace(r"(\d+)", n), start=start)
    assert re.search(rf"event=link_stream name={NAME} ", "\n".join(proc.lines[start:]))
