"""The soak's traffic: HTTP requests and WebSockets through the router, and their outcomes.

Every request or WebSocket session is judged on its own:

- ``ok``: the exact answer (status 200 and the exact bytes, sha256 or echo);
- ``expected``: a 502 or 504, a dropped connection or a cut-off body, *and* a
  disruption (tunnel churn, ``kill -9``, SIGSTOP, app restart) of its tunnel
  or of the app overlapped it in time (``Disruptions``);
- ``unexpected``: anything else. Any unexpected outcome fails the soak.

Every loop here ends at the mix's deadline or after a fixed count, and every
request and WebSocket step has its own timeout.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import ssl
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import wsproto
import wsproto.events as ws_events

from examples.sample_app.app import expected_bytes

# Per request: generous, because a SIGSTOPped tunnel client holds requests until
# the router's connect timeout (5 s in the soak) gives a 504.
REQUEST_TIMEOUT_S = 30.0
# Per WebSocket step (handshake, one echo, close).
WS_STEP_TIMEOUT_S = 20.0
# Hard caps, whatever the duration: every loop is bounded in count as well as time.
MAX_REQUESTS_PER_WORKER = 200_000
MAX_SESSIONS_PER_WORKER = 20_000
# Unexpected outcomes kept verbatim for the report (the rest are only counted).
MAX_EXAMPLES = 20


@dataclass
class Slot:
    """One tunnel: a client process (OpenSSH or hostmux-listener) serving ``name``."""

    index: int
    kind: str  # "openssh" | "listener"
    name: str
    generation: int = 0

    @property
    def key(self) -> str:
        return f"slot-{self.index}"

    def __repr__(self) -> str:
        return f"<Slot {self.index} {self.kind} {self.name} gen={self.generation}>"


class Disruptions:
    """When each tunnel (``slot-N``) and the app (``app``) was being disrupted."""

    def __init__(self) -> None:
        self._done: dict[str, list[tuple[float, float]]] = {}
        self._open: dict[str, float] = {}

    def __repr__(self) -> str:
        return f"<Disruptions open={sorted(self._open)}>"

    def begin(self, key: str) -> None:
        self._open.setdefault(key, time.monotonic())

    def end(self, key: str) -> None:
        started = self._open.pop(key, None)
        if started is not None:
            self._done.setdefault(key, []).append((started, time.monotonic()))

    def overlapped(self, keys: tuple[str, ...], start: float, end: float) -> bool:
        for key in keys:
            opened = self._open.get(key)
            if opened is not None and opened <= end:
                return True
            if any(a <= end and b >= start for a, b in self._done.get(key, [])):
                return True
        return False


@dataclass
class Ledger:
    """Outcome counts per kind of work, and the first few unexpected ones in full."""

    counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def record(self, kind: str, outcome: str, detail: str = "") -> None:
        self.counts[(kind, outcome)] += 1
        if outcome == "unexpected" and len(self.examples) < MAX_EXAMPLES:
            self.examples.append(f"{kind}: {detail}")

    def total(self, outcome: str) -> int:
        return sum(n for (_, o), n in self.counts.items() if o == outcome)


@dataclass
class Traffic:
    """What every worker shares: where to send, the tunnels, the ledger, the clock."""

    http_port: int
    https_port: int
    domain: str
    tls: ssl.SSLContext
    slots: list[Slot]
    disruptions: Disruptions
    ledger: Ledger
    deadline: float
    pace_s: float = 0.02  # think time between requests: a soak, not a stress test
    details: Counter[str] = field(default_factory=Counter)  # why the expected failures failed

    def running(self) -> bool:
        return time.monotonic() < self.deadline

    def judge(self, kind: str, slot: Slot, start: float, ok: bool, detail: str) -> None:
        """Record one outcome; a failure is expected only if 502/504/a drop met a disruption."""
        if ok:
            self.ledger.record(kind, "ok")
            return
        excused = detail.startswith(("HTTP 502", "HTTP 504", "transport:", "ws closed"))
        if excused and self.disruptions.overlapped((slot.key, "app"), start, time.monotonic()):
            self.ledger.record(kind, "expected")
            self.details[detail.split(":", 1)[0] if ":" in detail else detail] += 1
        else:
            self.ledger.record(kind, "unexpected", f"{slot!r} {detail}")

    # -- HTTP -------------------------------------------------------------------------

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            verify=self.tls,
            timeout=REQUEST_TIMEOUT_S,
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
        )

    def request(
        self,
        client: httpx.AsyncClient,
        method: str,
        slot: Slot,
        path: str,
        *,
        tls: bool,
        content: bytes | None = None,
    ) -> httpx.Request:
        """A request to NAME.DOMAIN sent to loopback (no DNS), with SNI for TLS."""
        host = f"{slot.name}.{self.domain}"
        port = self.https_port if tls else self.http_port
        return client.build_request(
            method,
            f"{'https' if tls else 'http'}://127.0.0.1:{port}{path}",
            headers={"host": f"{host}:{port}"},
            extensions={"sni_hostname": host} if tls else {},
            content=content,
        )

    async def one_request(
        self, client: httpx.AsyncClient, slot: Slot, rng: random.Random, *, tls: bool
    ) -> None:
        """One request of a random kind, checked byte for byte, and judged."""
        kind = rng.choices(["small", "download", "upload", "headers"], weights=[5, 2, 2, 1])[0]
        start = time.monotonic()
        try:
            ok, detail = await self._exchange(client, slot, rng, kind, tls=tls)
        except httpx.HTTPError as exc:
            ok, detail = False, f"transport: {type(exc).__name__}"
        self.judge(f"http {kind}", slot, start, ok, detail)

    async def _exchange(
        self, client: httpx.AsyncClient, slot: Slot, rng: random.Random, kind: str, *, tls: bool
    ) -> tuple[bool, str]:
        if kind == "upload":
            body = rng.randbytes(rng.randint(1, 1 << 20))
            request = self.request(client, "POST", slot, "/upload", tls=tls, content=body)
            response = await client.send(request)
            if response.status_code != 200:
                return False, f"HTTP {response.status_code}"
            want: dict[str, object] = {
                "bytes": len(body),
                "sha256": hashlib.sha256(body).hexdigest(),
            }
            answer = json.loads(response.content)
            return answer == want, f"upload answer {answer} != {want}"
        if kind == "headers":
            response = await client.send(self.request(client, "GET", slot, "/headers", tls=tls))
            if response.status_code != 200:
                return False, f"HTTP {response.status_code}"
            return "_server" in json.loads(response.content), "no _server in /headers"
        n = 1024 if kind == "small" else rng.randint(64 << 10, 4 << 20)
        seed = f"{rng.getrandbits(32):x}"
        request = self.request(client, "GET", slot, f"/bytes?n={n}&seed={seed}", tls=tls)
        response = await client.send(request, stream=True)
        try:
            if response.status_code != 200:
                await response.aread()
                return False, f"HTTP {response.status_code}"
            digest, size = hashlib.sha256(), 0
            async for chunk in response.aiter_raw():
                digest.update(chunk)
                size += len(chunk)
        finally:
            await response.aclose()
        expected = hashlib.sha256(b"".join(expected_bytes(n, seed))).hexdigest()
        return digest.hexdigest() == expected, f"/bytes n={n}: {size} bytes, wrong content"

    async def keepalive_worker(self, seed: int) -> None:
        """Sessions of 5-50 requests on one kept-alive connection (one Host each)."""
        rng = random.Random(seed)
        for _ in range(MAX_SESSIONS_PER_WORKER):
            if not self.running():
                return
            slot, tls = rng.choice(self.slots), rng.random() < 0.3
            async with self.client() as client:
                for _ in range(rng.randint(5, 50)):
                    if not self.running():
                        break
                    await self.one_request(client, slot, rng, tls=tls)
                    await asyncio.sleep(rng.uniform(0, self.pace_s))

    async def fresh_worker(self, seed: int) -> None:
        """One new connection (TCP, TLS for some) per request."""
        rng = random.Random(seed)
        for _ in range(MAX_REQUESTS_PER_WORKER):
            if not self.running():
                return
            async with self.client() as client:
                await self.one_request(client, rng.choice(self.slots), rng, tls=rng.random() < 0.4)
            await asyncio.sleep(rng.uniform(0, self.pace_s))

    # -- WebSockets ---------------------------------------------------------------------

    async def websocket_worker(self, seed: int) -> None:
        """WebSockets to /ws held open for 2-15 s, echoing every 0.1-1 s, then closed."""
        rng = random.Random(seed)
        for _ in range(MAX_SESSIONS_PER_WORKER):
            if not self.running():
                return
            slot = rng.choice(self.slots)
            start = time.monotonic()
            try:
                ok, detail = await self._websocket_session(slot, rng)
            except (OSError, wsproto.utilities.LocalProtocolError):
                ok, detail = False, "ws closed: dropped"
            except wsproto.utilities.RemoteProtocolError as exc:  # e.g. closed mid-handshake
                ok, detail = False, f"ws closed: {exc}"
            except TimeoutError:
                ok, detail = False, "ws timeout"
            self.judge("websocket session", slot, start, ok, detail)
            if not ok:  # a tunnel being disrupted: do not hammer it with handshakes
                await asyncio.sleep(rng.uniform(0.2, 1.0))

    async def _websocket_session(self, slot: Slot, rng: random.Random) -> tuple[bool, str]:
        ws = _WebSocket(await asyncio.open_connection("127.0.0.1", self.http_port))
        try:
            async with asyncio.timeout(WS_STEP_TIMEOUT_S):
                if not await ws.handshake(f"{slot.name}.{self.domain}", "/ws"):
                    return False, f"HTTP {ws.rejected_status}"
            hold_until = min(time.monotonic() + rng.uniform(2, 15), self.deadline)
            while time.monotonic() < hold_until:
                message = rng.randbytes(rng.randint(1, 32 << 10))
                async with asyncio.timeout(WS_STEP_TIMEOUT_S):
                    echo = await ws.echo(message)
                if echo is None:
                    return False, "ws closed: by the far end"
                self.ledger.record("websocket message", "ok" if echo == message else "unexpected")
                await asyncio.sleep(rng.uniform(0.1, 1.0))
            async with asyncio.timeout(WS_STEP_TIMEOUT_S):
                await ws.close()
            return True, ""
        finally:
            ws.abort()


class _WebSocket:
    """A minimal wsproto client on asyncio streams (the router sees a real browser's bytes)."""

    def __init__(self, streams: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
        self._reader, self._writer = streams
        self._ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        self._pending: list[ws_events.Event] = []
        self.rejected_status = 0

    def __repr__(self) -> str:
        return f"<_WebSocket {self._ws.state.name}>"

    async def _next(self) -> ws_events.Event | None:
        while not self._pending:
            data = await self._reader.read(65536)
            self._ws.receive_data(data or None)
            self._pending.extend(self._ws.events())
            if not data and not self._pending:
                return None
        return self._pending.pop(0)

    async def _send(self, event: ws_events.Event) -> None:
        self._writer.write(self._ws.send(event))
        await self._writer.drain()

    async def handshake(self, host: str, target: str) -> bool:
        await self._send(ws_events.Request(host=host, target=target))
        event = await self._next()
        if isinstance(event, ws_events.RejectConnection):
            self.rejected_status = event.status_code
        return isinstance(event, ws_events.AcceptConnection)

    async def echo(self, message: bytes) -> bytes | None:
        await self._send(ws_events.BytesMessage(data=message))
        received = b""
        while (event := await self._next()) is not None:
            if isinstance(event, ws_events.BytesMessage):
                received += event.data
                if event.message_finished:
                    return received
            elif isinstance(event, ws_events.Ping):
                await self._send(event.response())
            elif isinstance(event, ws_events.CloseConnection):
                return None
        return None

    async def close(self) -> None:
        await self._send(ws_events.CloseConnection(code=1000))
        while (event := await self._next()) is not None:
            if isinstance(event, ws_events.CloseConnection):
                return

    def abort(self) -> None:
        self._writer.transport.abort()


# -- kill -9 mid-request -----------------------------------------------------------------


async def download_then(
    traffic: Traffic, slot: Slot, act: Callable[[], None], *, size: int = 256 << 20
) -> str:
    """Start a large download through ``slot``; call ``act`` once bytes flow; return how it ended.

    Used to ``kill -9`` a tunnel client mid-response: the router must cut the
    browser's response short (a truncated body, never a hang or a 200 of
    wrong length).
    """
    async with traffic.client() as client:
        request = traffic.request(client, "GET", slot, f"/bytes?n={size}&seed=kill", tls=False)
        received, acted = 0, False
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                response = await client.send(request, stream=True)
                try:
                    if response.status_code != 200:
                        act()
                        detail = f"HTTP {response.status_code}"
                    else:
                        async for chunk in response.aiter_raw():
                            received += len(chunk)
                            if not acted:
                                act()
                                acted = True
                        detail = f"complete ({received} bytes)" if received == size else "short"
                finally:
                    await response.aclose()
        except httpx.HTTPError as exc:
            detail = f"transport: {type(exc).__name__}"
        except TimeoutError:
            detail = "timeout"
    if not acted and not detail.startswith("HTTP"):
        act()
    ok = detail.startswith(("transport:", "complete", "HTTP 502", "HTTP 504"))
    traffic.ledger.record(
        "kill -9 mid-download", "expected" if ok else "unexpected", f"{detail} {slot!r}"
    )
    traffic.details[f"kill -9 mid-download: {detail.split(':')[0]}"] += 1
    return detail
