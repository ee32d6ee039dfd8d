"""The router link in one process: real TLS on loopback, real sockets, the in-memory registry.

Two routers' link parts (``PeerServer`` on the holder, ``LinkPool`` and
``Forwarder`` on the sender) talk over mutual TLS with certificates from a
real cluster CA; each "tunnel" opens a TCP stream to a small echo server that
says which tunnel it is, so a test sees exactly which tunnel a stream
reached. What is checked here needs a route cache made stale on purpose,
which real router processes (whose caches the registry keeps fresh within
milliseconds) cannot show deterministically.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import keys
from hostmux.http1 import ClientInfo, Page
from hostmux.relay import ByteStream, Destination, open_tcp_stream
from router.cluster.forwarding import Forwarder
from router.cluster.identity import link_contexts
from router.cluster.link import LinkPool, LinkStream
from router.cluster.peer_server import PeerServer
from router.cluster.wire import LinkError, StreamRequest
from router.holding import HoldingPages, LookupLimit
from router.portal import PortalKeys
from router.registry.memory import MemoryRegistry
from router.registry.model import Holder, Route
from router.tunnels import Tunnel, TunnelHub

from ..unit.asyncio_bounded import run

CLIENT = ClientInfo(peer_ip="192.0.2.7", peer_port=4242, scheme="https")
RESERVATION_S = 600.0
# How long an upload to an app that reads nothing must stay unfinished: buffering
# 32 MiB in the holder would take a fraction of that on a loaded 2-core machine.
HELD_BACK_S = 2.0


async def _tagged_echo(tag: bytes) -> asyncio.Server:
    """A TCP server that answers every connection with ``tag`` and then echoes."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(tag + b":")
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    return await asyncio.start_server(serve, "127.0.0.1", 0)


def _tunnel(name: str, owner: str, server: asyncio.Server, generation: int) -> Tunnel:
    port = server.sockets[0].getsockname()[1]

    async def open_stream(ip: str, peer_port: int) -> ByteStream:
        return await open_tcp_stream("127.0.0.1", port, label=f"{name}@{owner}")

    return Tunnel(name, owner, "test", open_stream, generation=generation)


@dataclass
class Pair:
    registry: MemoryRegistry
    hub_a: TunnelHub  # the holder
    hub_b: TunnelHub  # the sender's own tunnels
    peers: PeerServer
    forwarder: Forwarder
    pool: LinkPool
    address: str


def _hub() -> TunnelHub:
    return TunnelHub(domain="localhost", scheme="https", public_port=0, reservation_s=600)


@contextlib.asynccontextmanager
async def _pair(tmp_path: Path) -> AsyncIterator[Pair]:
    ca = keys.ClusterCA.init(tmp_path / "ca")
    files = {rid: ca.issue(rid) for rid in ("a", "b")}
    server_a, _ = link_contexts(tmp_path / "ca" / "ca.crt", files["a"].cert, files["a"].key)
    _, client_b = link_contexts(tmp_path / "ca" / "ca.crt", files["b"].cert, files["b"].key)
    registry = MemoryRegistry(reservation_s=RESERVATION_S)
    hub_a, hub_b = _hub(), _hub()
    peers = PeerServer(hub_a, connect_timeout_s=2.0)
    link = await peers.serve("127.0.0.1", 0, server_a, handshake_timeout_s=2.0)
    address = f"127.0.0.1:{link.sockets[0].getsockname()[1]}"
    await registry.advertise("a", address, 60.0)
    pool = LinkPool(client_b, handshake_timeout_s=2.0)
    forwarder = Forwarder(registry, hub_b, pool, connect_timeout_s=3.0)
    forwarder.router_id = "b"
    try:
        yield Pair(registry, hub_a, hub_b, peers, forwarder, pool, address)
    finally:
        await pool.close()
        await peers.drain(0.1)
        link.close()
        await link.wait_closed()


async def _first_bytes(stream: ByteStream) -> bytes:
    await stream.send_all(b"ping")
    await stream.send_eof()
    got = b""
    while data := await stream.receive():
        got += data
    stream.close()
    return got


async def _open_via_gateway(forwarder: Forwarder, name: str) -> bytes:
    routed = forwarder.route(name, f"{name}.localhost", "rid", CLIENT, as_html=False)
    decision = routed if isinstance(routed, Destination | Page) else await routed
    assert isinstance(decision, Destination), decision
    return await _first_bytes(await decision.open())


def test_the_holder_checks_owner_and_generation_and_keeps_the_connection(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        async with _pair(tmp_path) as pair:
            echo = await _tagged_echo(b"alice-on-a")
            pair.hub_a.claim(_tunnel("demo", "alice", echo, generation=10))
            request = StreamRequest("demo", "alice", 10, "192.0.2.7", 4242, "https")
            stream = await pair.pool.open_stream("a", pair.address, request)
            assert isinstance(stream, LinkStream)
            assert await _first_bytes(stream) == b"alice-on-a:ping"
            # Another owner, or an older generation than the tunnel's claim: moved.
            for stale in (
                StreamRequest("demo", "mallory", 10, "192.0.2.7", 1, "https"),
                StreamRequest("demo", "alice", 9, "192.0.2.7", 1, "https"),
                StreamRequest("other", "alice", 10, "192.0.2.7", 1, "https"),
            ):
                answer = await pair.pool.open_stream("a", pair.address, stale)
                assert answer is LinkError.ROUTE_MOVED, stale
            # One TLS connection carried all four exchanges, one at a time.
            assert pair.pool.dialled == 1
            assert pair.peers.streams == 1
            echo.close()

    run(scenario())


def test_a_stale_route_is_resolved_again_and_never_reaches_the_wrong_tunnel(
    tmp_path: Path,
) -> None:
    """The name went to another owner after its reservation (on router a), then to
    router b's own tunnel; b's cache still holds the first route each time."""

    async def scenario() -> None:
        async with _pair(tmp_path) as pair:
            mallory_echo, local_echo = [await _tagged_echo(tag) for tag in (b"mallory", b"b-local")]
            # What b's cache remembers: alice's tunnel on router a, generation 1.
            stale = Route("demo", "alice", 1, (_holder("a"),), None)
            pair.forwarder.cache.subscribed()
            pair.forwarder.cache.put("demo", stale, pair.forwarder.cache.ticket())
            # Meanwhile: mallory holds the name on router a.
            claim = await pair.registry.claim("demo", "mallory", "a", "conn-m")
            pair.hub_a.claim(_tunnel("demo", "mallory", mallory_echo, claim.generation))
            assert await _open_via_gateway(pair.forwarder, "demo") == b"mallory:ping"
            # The stale attempt (alice's route) was refused before any channel opened;
            # the one stream served was sent with mallory's route, looked up afresh.
            assert (pair.peers.moved, pair.peers.streams) == (1, 1)

            # Then the name moves to b's own tunnel (mallory's key, router b), and b's
            # cache again holds an older route to a: served by b's own tunnel.
            pair.forwarder.cache.put("demo", stale, pair.forwarder.cache.ticket())
            removed = pair.hub_a.routes.lookup("demo")
            assert isinstance(removed, Tunnel)
            pair.hub_a.release(removed)
            await pair.registry.release("demo", "a", "conn-m")
            await pair.registry.claim("demo", "mallory", "b", "conn-b")
            pair.hub_b.claim(_tunnel("demo", "mallory", local_echo, claim.generation + 2))
            assert await _open_via_gateway(pair.forwarder, "demo") == b"b-local:ping"
            # (b's own tunnel wins before any peer is asked, even on a stale route)
            assert (pair.peers.moved, pair.peers.streams) == (1, 1)
            for server in (mallory_echo, local_echo):
                server.close()

    run(scenario())


def test_an_app_that_stops_reading_pushes_back_to_the_sender_and_loses_nothing(
    tmp_path: Path,
) -> None:
    """An upload to an app that reads nothing yet: the holder's channel fills, it
    stops reading the link, and the sender's writes wait (nothing piles up in
    between). Once the app reads, every byte arrives in order, echoed back, and
    the link connection carries the next stream."""
    size = 32 << 20  # more than every socket buffer on the way together
    gate = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await gate.wait()
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    async def scenario() -> None:
        async with _pair(tmp_path) as pair:
            app = await asyncio.start_server(serve, "127.0.0.1", 0)
            pair.hub_a.claim(_tunnel("demo", "alice", app, generation=1))
            request = StreamRequest("demo", "alice", 1, "192.0.2.7", 4242, "https")
            piece = bytes(range(256)) * 256  # 64 KiB
            pattern = piece * 8  # longer than one read from the link, from any offset
            for round_ in range(2):
                stream = await pair.pool.open_stream("a", pair.address, request)
                assert isinstance(stream, LinkStream)

                async def upload(stream: LinkStream = stream) -> None:
                    for _ in range(size // len(piece)):
                        await stream.send_all(piece)
                    await stream.send_eof()

                sending = asyncio.create_task(upload())
                if round_ == 0:
                    # Held back: with the app reading nothing, 32 MiB cannot all go out
                    # (a holder that kept reading the link would buffer it all at once).
                    done, _ = await asyncio.wait({sending}, timeout=HELD_BACK_S)
                    assert not done, "the whole upload went out while the app read nothing"
                    gate.set()  # the app reads: everything flows
                got = 0
                while data := await stream.receive():
                    assert data == pattern[got % 256 : got % 256 + len(data)]
                    got += len(data)
                await sending
                stream.close()
                assert got == size
            assert (pair.pool.dialled, pair.peers.streams) == (1, 2)
            app.close()

    run(scenario())


def _holder(router_id: str) -> Holder:
    return Holder(router_id=router_id, connection_id="c", lease_expires=0.0)


class _PortalKnows(http.server.BaseHTTPRequestHandler):
    """A portal's keys URL: ``/instances/lab-known/keys`` exists (no keys), the rest 404."""

    asked: list[str]

    def do_GET(self) -> None:
        type(self).asked.append(self.path)
        known = self.path == "/instances/lab-known/keys"
        body = b'{"keys": []}' if known else b"no such instance"
        self.send_response(200 if known else 404)
        self.send_header("content-type", "application/json" if known else "text/plain")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_a_name_no_router_holds_gets_the_holding_page_if_the_portal_knows_it(
    tmp_path: Path,
) -> None:
    handler: type[_PortalKnows] = type("Knows", (_PortalKnows,), {"asked": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/instances/{{id}}/keys"

    async def decide(forwarder: Forwarder, name: str) -> Page:
        routed = forwarder.route(name, f"{name}.localhost", "rid", CLIENT, as_html=True)
        decision = routed if isinstance(routed, Destination | Page) else await routed
        assert isinstance(decision, Page), decision
        return decision

    async def scenario() -> None:
        async with _pair(tmp_path) as pair:
            portal = PortalKeys(url, timeout_s=5.0, ttl_s=60.0, negative_ttl_s=60.0)
            pair.forwarder.holding = HoldingPages(portal, LookupLimit(3))
            try:
                # No router holds either name (the registry says so); the portal knows one.
                known = await decide(pair.forwarder, "lab-known")
                assert known.status == 503
                assert dict(known.headers)[b"retry-after"] == b"5"
                assert b"http-equiv=refresh" in known.body
                assert (await decide(pair.forwarder, "lab-stranger")).status == 404
                # A name reserved for its owner, held by nobody: the same rule.
                claim = await pair.registry.claim("lab-known", "owner", "a", "c1")
                assert claim is not None
                await pair.registry.release("lab-known", "a", "c1")
                reserved = await pair.registry.lookup("lab-known")
                assert reserved is not None and not reserved.holders
                pair.forwarder.cache.drop("lab-known")
                assert (await decide(pair.forwarder, "lab-known")).status == 503
                # Cached answers cost no look-up; new names past the limit are not asked.
                for n in range(10):
                    assert (await decide(pair.forwarder, f"lab-random-{n}")).status == 404
                assert pair.forwarder.holding.counts["limited"] >= 8
            finally:
                await portal.aclose()

    try:
        run(scenario())
    finally:
        server.shutdown()
        thread.join()
        server.server_close()
    assert handler.asked[:2] == ["/instances/lab-known/keys", "/instances/lab-stranger/keys"]
    assert len(handler.asked) == 3  # the limit's 3 tokens: two names above, one random
