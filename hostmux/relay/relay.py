"""HTTP/1.1 relay: one browser connection, requests parsed by llhttp, relayed upstream.

Used by the router (upstream = an SSH channel down a tunnel) and by the auth
helper (upstream = TCP to the app). The rules it enforces:

1. Every request is parsed (``hostmux.http1``: llhttp) and re-serialised from the parsed events;
   raw client bytes never reach the app (except after a WebSocket ``101``).
2. Any framing doubt is a 400 (431 for an oversized head, 414 for a long
   target, 501 for a transfer coding other than chunked, 505 for another
   HTTP version) and the connection closes: after a parse error nothing on it
   can be trusted.
3. A connection is bound to the Host of its first request; a request for
   another Host gets 421 and the connection closes.
4. Absolute-form targets must agree with Host; CONNECT and asterisk-form are
   refused, so the relay is never an open proxy.
5. Bodies stream both ways chunk by chunk with back-pressure; nothing buffers a
   whole body. A response may start before the request body has ended.
   The deadlines around a request body going up are in ``upload``.
6. A WebSocket upgrade becomes a byte splice only after the app answers ``101``;
   any other answer keeps HTTP parsing. The splice propagates half-close.
7. The upstream stream is reused for the next request of the same connection
   while both sides keep the connection alive; a request without a body that
   finds a reused upstream already closed is retried once on a fresh one.
   With a ``Destination.pool``, such a request may start on an idle stream
   another connection left there (counted as reused), and a connection that
   ends between two requests gives its upstream back to the pool.

Error handling: a refusal anywhere on the way is one exception (``Refusal``,
``outcomes``) caught in one place, ``HttpRelay._handle``, which sends its status
page (``pages``); exceptions from either stream end the connection quietly
(logged at debug). The response path is ``response``, the browser's side
``browser``, the app's ``upstream``, a request body ``upload``.

The express path (``express``: the router's front door only) relays a kept-alive
connection's small requests by these same rules from the transports' callbacks
while ``_serve`` waits for the next request, and hands anything else back to it
(``prepared``, ``RESUME``, ``_resume``).

Parking (the front door's connections, ``restart`` set): a connection that waits
for its next request with its upstream open and nothing queued does not keep a
task for it. The task ends, leaving the wait to the express path, the deadline
(``Deadline.park``) and the stream (``TransportStream.unpark``); whatever would
have woken the task (a request the express path hands back, bytes it did not
take, EOF, the deadline, ``go_away``) starts a task again with ``restart``,
which ``resume``s the wait where it was. An idle keep-alive connection then
holds no task, coroutine frames or waiter (~2 KiB each).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from hostmux.http1.checked_events import (
    END_OF_MESSAGE,
    request_checking_headers,
    request_of_checked_headers,
)
from hostmux.http1.checks import CheckedRequest, check_request, parse_error_status
from hostmux.http1.events import (
    ConnectionClosed,
    EndOfMessage,
    ProtocolError,
    RemoteProtocolError,
    Request,
    State,
    checked_headers,
)
from hostmux.http1.framing import request_framing
from hostmux.http1.header_facts import facts_of
from hostmux.http1.headers import (
    ClientInfo,
    Headers,
    TrustedProxies,
    forwarding_headers,
    request_headers_for_app,
)
from hostmux.http1.pages import Page, status_page, wants_html, with_headers
from hostmux.relay.browser import RESUME, BrowserSide
from hostmux.relay.deadline import Deadline
from hostmux.relay.express import Express, Prepared
from hostmux.relay.gateway import Destination, Gateway, UpstreamPool, UpstreamUnavailable
from hostmux.relay.outcomes import Abort, Refusal, StaleUpstream
from hostmux.relay.records import RecordBuilder, RequestRecord, new_request_id, unparsable_request
from hostmux.relay.response import ResponseEnd, ResponsePath
from hostmux.relay.splice import splice_until_ended
from hostmux.relay.streams import ByteStream
from hostmux.relay.transport_stream import TransportStream
from hostmux.relay.upload import BodyEvent, buffered_body_events, failure_of, pump_request_body
from hostmux.relay.upstream import Upstream

log = logging.getLogger("hostmux.relay")


@dataclass(frozen=True, slots=True)
class RelayLimits:
    """Timeouts and sizes for one browser connection (nginx-like defaults)."""

    max_header_bytes: int = 32 * 1024  # nginx large_client_header_buffers 4 x 8k
    max_target_bytes: int = 8 * 1024  # nginx: a request line fits one 8k buffer (else 414)
    header_timeout_s: float = 60.0  # nginx client_header_timeout
    keepalive_timeout_s: float = 75.0  # nginx keepalive_timeout
    body_timeout_s: float = 60.0  # nginx client_body_timeout (between reads)
    send_timeout_s: float = 60.0  # nginx send_timeout (slow-reading browser)
    connect_timeout_s: float = 10.0  # opening a tunnel channel
    response_timeout_s: float = 60.0  # app's response head (nginx proxy_read_timeout)
    upstream_idle_timeout_s: float = 300.0  # between body chunks (SSE may idle)
    websocket_idle_timeout_s: float = 3600.0  # upgraded streams live long
    max_requests_per_connection: int = 1000  # nginx keepalive_requests


def _lean_event() -> asyncio.Event:
    """An ``asyncio.Event`` whose waiters are on a list, not a deque: every idle
    connection holds one with none waiting (56 bytes against 760; as the router's
    ``router.ssh.lean`` does for asyncssh's events)."""
    event = asyncio.Event()
    if isinstance(getattr(event, "_waiters", None), deque):
        event._waiters = []  # type: ignore[assignment]  # appended, removed, iterated: a list does
    return event


# The forwarding headers by (Host value, client IP, scheme): what they say depends on
# nothing else, and a browser holds several connections to one host (each idle one
# would otherwise keep its own copy, ~0.6 KiB). Never changed once made; emptied when full.
_FORWARDING: Final[dict[tuple[bytes, str, str], tuple[tuple[bytes, str, str], Headers]]] = {}
_FORWARDING_MAX: Final = 4096


def _forwarding_for(host: bytes, client: ClientInfo) -> tuple[tuple[bytes, str, str], Headers]:
    key = (host, client.peer_ip, client.scheme)
    kept = _FORWARDING.get(key)
    if kept is None:
        if len(_FORWARDING) >= _FORWARDING_MAX:
            _FORWARDING.clear()
        kept = _FORWARDING[key] = (key, forwarding_headers(host, client))
    return kept


# Only a request that can be sent twice without harm is retried (RFC 9110 9.2.2).
_IDEMPOTENT: Final = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})


class HttpRelay:
    """Serves one browser connection until it closes.

    Resource handling: owns ``client`` and any upstream it opens; both are
    closed when ``run`` returns, whatever happened.
    Error handling: never raises for I/O or protocol errors; cancellation
    propagates.
    """

    # Slots: every idle keep-alive connection holds one (no per-instance dict).
    __slots__ = (
        "_between_requests", "_bound_host", "_browser", "_deadline", "_express",
        "_forwarding", "_gateway", "_going_away", "_info", "_limits", "_on_request", "_parked",
        "_peer", "_pool", "_responses", "_served", "_trusted", "_upstream", "prepared",
        "restart", "spliced", "splicing",
    )  # fmt: skip

    # The timeout of the waits in the task running ``run`` (set there: the relay
    # may be made in another task than the one that runs it).
    _deadline: Deadline
    _responses: ResponsePath  # (made there too: it uses the deadline)

    def __init__(
        self,
        client: ByteStream,
        info: ClientInfo,
        gateway: Gateway,
        limits: RelayLimits,
        on_request: Callable[[RequestRecord], None],
        trusted_proxies: TrustedProxies | None = None,
    ) -> None:
        self._browser = BrowserSide(
            client,
            max_head_bytes=limits.max_header_bytes,
            max_target_bytes=limits.max_target_bytes,
            send_timeout_s=limits.send_timeout_s,
        )
        self._info = info
        self._trusted = trusted_proxies or None
        self._gateway = gateway
        self._limits = limits
        self._on_request = on_request
        self._bound_host: str | None = None
        self._upstream: Upstream | None = None
        self._pool: UpstreamPool | None = None  # where the upstream goes back, if anywhere
        self._served = 0  # requests read on this connection, the current one included
        self._peer = f"{info.peer_ip}:{info.peer_port}"
        self._going_away = _lean_event()  # set by go_away(): the router is shutting down
        self._between_requests = False  # waiting for the next request head
        self.splicing = False  # bytes spliced after a 101 (a WebSocket)
        # The spliced request's record while it is spliced: its byte counters move with
        # the traffic (read by the router's activity tick, ``ConnectionSet.spliced``).
        self.spliced: RecordBuilder | None = None
        # The express path (``express``): a browser on a ``TransportStream`` whose
        # small requests are answered from callbacks while the task waits.
        self._express: Express | None = None
        if isinstance(client, TransportStream):
            self._express = Express(self, client)
        # The forwarding headers of this connection's Host and client address
        # ((host value, client IP, scheme), headers): the same for each of its
        # requests, and shared with the client's other connections (``_forwarding_for``).
        self._forwarding: tuple[tuple[bytes, str, str], Headers] | None = None
        # What the express path had done for a request it handed back (see _handle).
        self.prepared: Prepared | None = None
        # Starts a task that ``resume``s a parked relay (the front door's; None: never parks).
        self.restart: Callable[[HttpRelay], None] | None = None
        self._parked = False

    def __repr__(self) -> str:
        return f"<HttpRelay peer={self._peer} host={self._bound_host}>"

    @property
    def stream(self) -> ByteStream:
        """The browser's stream."""
        return self._browser.stream

    @property
    def client_ip(self) -> str:
        """The browser's address (the connection's, not a forwarded one)."""
        return self._info.peer_ip

    @property
    def parked(self) -> bool:
        """The connection idles without a task (``restart`` starts one when needed)."""
        return self._parked

    def go_away(self) -> None:
        """Shutdown: close now if idle, else after the response in flight (with
        ``Connection: close``); a WebSocket gets a 1001 close frame."""
        self._going_away.set()
        if self._express is not None and self._express.inflight is not None:
            self._express.hand_back()  # the task finishes it, saying Connection: close
        elif self._between_requests:
            self._deadline.expire()  # the wait for a request ends as if its time were up
        if self._parked:
            self._unpark()  # a task now, for the drain to wait on

    async def run(self) -> None:
        self._deadline = Deadline()
        self._responses = ResponsePath(
            self._browser, self._deadline, self._going_away,
            response_timeout_s=self._limits.response_timeout_s,
            idle_timeout_s=self._limits.upstream_idle_timeout_s,
        )  # fmt: skip
        await self._run(resumed=False)

    async def resume(self) -> None:
        """Go on with a parked relay's wait, in the task ``restart`` started."""
        await self._run(resumed=True)

    async def _run(self, *, resumed: bool) -> None:
        try:
            await self._serve(resumed)
        except (Abort, ConnectionError, TimeoutError, OSError, ProtocolError) as exc:
            log.debug("connection %s ended: %r", self._peer, exc)
        finally:
            if not self._parked:
                if self._express is not None:
                    self._express.stop()
                self._deadline.close()
                self._release_upstream()
                self._browser.close()

    def _park(self, timeout: float) -> bool:
        """End the task here if the connection may wait for its next request without it."""
        express, browser = self._express, self._browser
        stream = browser.stream
        if (
            self.restart is None
            or express is None
            or self._upstream is None
            or express.inflight is not None
            or browser.handover is not None
            or browser.busy
            or not isinstance(stream, TransportStream)
            or stream.has_queued
            or not browser.h.waiting_for_a_head()
        ):
            return False
        self._parked = True
        self._between_requests = True
        express.armed = True
        self._deadline.park(timeout, self._unpark)
        stream.unpark = self._unpark
        return True

    def _unpark(self) -> None:
        """A parked relay's wait needs its task again (called from callbacks)."""
        if not self._parked:
            return
        self._parked = False
        stream = self._browser.stream
        if isinstance(stream, TransportStream):
            stream.unpark = None
        assert self.restart is not None
        self.restart(self)

    # -- the request loop ----------------------------------------------------

    async def _serve(self, resumed: bool = False) -> None:
        h = self._browser.h
        limits = self._limits
        express = self._express
        while resumed or self._served < limits.max_requests_per_connection:
            if resumed:  # a parked wait, taken over: what is left of its time
                task = asyncio.current_task()
                assert task is not None
                timeout = self._deadline.resume(task)
                resumed = False
                expired = timeout <= 0  # its time ran out while parked (the deadline woke it)
            else:
                expired = False
                # (the express path counts the requests it answers while the task waits)
                self._served += 1
                timeout = (
                    limits.header_timeout_s if self._served == 1 else limits.keepalive_timeout_s
                )
                if self._going_away.is_set():
                    return
                if self._park(timeout):
                    return
            try:
                self._between_requests = True
                if express is not None:
                    express.armed = self._upstream is not None
                if expired:  # as if the wait below had timed out (what woke it is moot)
                    raise TimeoutError
                with self._deadline.within(timeout):
                    event = await self._browser.next_event()
            except TimeoutError:
                if express is not None and express.inflight is not None:
                    # The app did not answer the express path's request in time.
                    if not await self._resume(timed_out=True):
                        return
                    event = None
                else:
                    return  # idle, slowloris or shutdown: close without a word, as nginx does
            except RemoteProtocolError as exc:
                page = status_page(*parse_error_status(exc))
                await self._browser.send_page(page, head_only=False)
                # No request was formed, but the refusal belongs in the access log.
                self._on_request(unparsable_request(self._peer, page.status))
                return
            finally:
                self._between_requests = False
                if express is not None:
                    express.armed = False
            if event is RESUME:
                if not await self._resume(timed_out=False):
                    return
            elif event is not None:
                if isinstance(event, ConnectionClosed):
                    return
                assert isinstance(event, Request), event
                if not await self._handle(event):
                    return
            # The request is done: not held by this frame while the connection idles
            # (its headers, ~1 KiB from a browser, for every idle keep-alive connection).
            event = None
            if h.our_state is not State.DONE or h.their_state is not State.DONE:
                return
            h.start_next_cycle()

    async def _handle(self, request: Request) -> bool:
        """Relay one request; True if the connection may carry another.

        A ``Refusal`` raised anywhere on the way ends here: its status page is
        the answer, and the connection closes after it. A request the express
        path began and handed back comes with what it had done (``prepared``).
        """
        prepared, self.prepared = self.prepared, None
        if prepared is None:
            started = time.perf_counter()
            rid = new_request_id()
            record = RecordBuilder(rid, self._peer, request)
        else:
            started, rid, record = prepared.started, prepared.rid, prepared.record
        try:
            if prepared is None:
                checked, body_events = self._check(request, record)
                client = self._info
                if self._trusted is not None:
                    client = self._trusted.client_of(request.headers, client)
                routed = self._gateway.route(checked.host, request, rid, client)
            else:
                checked, body_events = prepared.checked, prepared.body_events
                client, routed = prepared.client, prepared.routed
            # (an isinstance check on the two concrete answers is cheaper than isawaitable)
            decision = routed if isinstance(routed, Destination | Page) else await routed
            if isinstance(decision, Page):
                record.status = decision.status
                await self._browser.send_page(decision, head_only=request.method == b"HEAD")
                return False
            record.name = decision.label
            record.user = decision.user
            websocket = request.method == b"GET" and facts_of(request).websocket_upgrade
            upstream_request = self._upstream_request(
                request, checked, decision, client, rid, websocket
            )
            return await self._relay(
                request, decision, upstream_request, body_events, websocket, record
            )
        except Refusal as refusal:
            await self._refuse(refusal, request, rid, record)
            return False
        finally:
            self._on_request(record.finish(started))

    async def _resume(self, *, timed_out: bool) -> bool:
        """Finish the request the express path sent up (its answer is late or large)."""
        assert self._express is not None
        inflight = self._express.take_back()
        record = inflight.record
        try:
            if timed_out:
                record.note = record.note or "response timeout"
                raise Refusal(504, "the app did not answer in time")
            return await self._relay(
                inflight.request, inflight.decision, inflight.upstream_request, [END_OF_MESSAGE],
                False, record, sent=True,
            )  # fmt: skip
        except Refusal as refusal:
            await self._refuse(refusal, inflight.request, record.request_id, record)
            return False
        finally:
            self._on_request(record.finish(inflight.started))

    async def _refuse(
        self, refusal: Refusal, request: Request, rid: str, record: RecordBuilder
    ) -> None:
        """Answer with ``refusal``'s page (the connection ends after it)."""
        self._close_upstream()  # the connection ends after the page
        record.status = refusal.status
        page = status_page(
            refusal.status, refusal.detail, request_id=rid,
            as_html=wants_html(facts_of(request).accept),
        )  # fmt: skip
        if refusal.headers:  # they replace the page's own of the same names
            extra = checked_headers(refusal.headers)
            names = {name for name, _ in extra}
            kept = Page(page.status, [h for h in page.headers if h[0] not in names], page.body)
            page = with_headers(kept, extra)
        await self._browser.send_page(page, head_only=request.method == b"HEAD")

    def _check(
        self, request: Request, record: RecordBuilder
    ) -> tuple[CheckedRequest, list[BodyEvent]]:
        """Check ``request`` and read what already came of its body (Refusal if either fails)."""
        checked = check_request(
            request,
            max_target_bytes=self._limits.max_target_bytes,
            max_header_bytes=self._limits.max_header_bytes,
        )
        record.host = host = checked.host
        if checked.refusal is not None:
            raise Refusal(*checked.refusal)
        if self._bound_host is not None and host != self._bound_host:
            raise Refusal(421, "this connection is bound to another host; open a new one")
        self._bound_host = host
        # Parse the body bytes already received before routing: a framing error in
        # them is refused unseen by the app and before any login redirect.
        try:
            return checked, buffered_body_events(self._browser.h)
        except RemoteProtocolError:
            raise Refusal(400, "the request body framing is invalid") from None

    def _upstream_request(
        self,
        request: Request,
        checked: CheckedRequest,
        decision: Destination,
        client: ClientInfo,
        rid: str,
        websocket: bool,
    ) -> Request:
        """The request the app receives: the browser's, its headers rewritten."""
        fields = request.headers
        if decision.request_headers is not None:
            app_headers = decision.request_headers(fields, websocket)
            if decision.request_headers_checked:
                return request_of_checked_headers(request.method, checked.target, app_headers)
            return request_checking_headers(request.method, checked.target, app_headers)
        kept = self._forwarding
        if (
            kept is None
            or kept[0][0] != checked.host_value
            or kept[0][1] != client.peer_ip
            or kept[0][2] != client.scheme
        ):
            kept = self._forwarding = _forwarding_for(checked.host_value, client)
        headers = request_headers_for_app(
            fields, host=checked.host_value, client=client, request_id=rid,
            websocket=websocket, facts=request.facts, forwarding=kept[1],
        )  # fmt: skip
        facts = request.facts
        # The body's framing is the browser's, as parsed (the filter keeps
        # Content-Length and Transfer-Encoding, and drops Connection).
        framing = (
            None if facts is None
            else request_framing(facts.content_length, facts.transfer_encoding)
        )  # fmt: skip
        return request_of_checked_headers(request.method, checked.target, headers, framing)

    async def _relay(
        self,
        request: Request,
        decision: Destination,
        upstream_request: Request,
        body_events: list[BodyEvent],
        websocket: bool,
        record: RecordBuilder,
        *,
        sent: bool = False,
    ) -> bool:
        """Send ``upstream_request`` up (retried once on a fresh upstream if a reused
        one had closed) and relay the answer; True if the connection may go on.

        ``sent``: the express path sent it on the current upstream already.
        """
        # A bodiless request goes in one write, retried if a reused upstream closed.
        bodiless = isinstance(body_events[0], EndOfMessage)
        retryable = bodiless and request.method in _IDEMPOTENT
        for attempt in (1, 2):
            resumed = sent and attempt == 1
            reused = resumed or (self._upstream is not None and self._upstream.key == decision.key)
            if not reused and retryable and attempt == 1 and decision.pool is not None:
                reused = await self._take_pooled(decision, decision.pool)
            upstream = self._upstream if reused else await self._open(decision)
            assert upstream is not None
            if not resumed:
                upstream.requests += 1
                upstream.got_response = False
                head = upstream.conn.send(upstream_request)
                if bodiless:
                    head += upstream.conn.send(END_OF_MESSAGE)
            last_try = attempt == 2 or not retryable or not reused
            try:
                if not resumed:
                    await upstream.stream.send_all(head)
                if bodiless:
                    end = await self._responses.relay(upstream, record, websocket, self._last())
                    if end is ResponseEnd.SWITCHED:
                        await self._splice(upstream, record)
                        return False
                    return self._after_response(end)
                return await self._relay_with_body(upstream, body_events, record)
            except StaleUpstream:
                self._close_upstream()
                if last_try:
                    raise Refusal(502, "the app closed the connection without answering") from None
            except (ConnectionError, OSError):
                if record.response_started:
                    raise Abort() from None
                self._close_upstream()
                if last_try:
                    raise Refusal(502, "the connection to the app failed") from None
        return False  # not reached: the second attempt always returns or raises

    async def _open(self, decision: Destination) -> Upstream:
        """A fresh upstream for ``decision`` (the previous one, if any, closed)."""
        self._close_upstream()
        try:
            async with asyncio.timeout(self._limits.connect_timeout_s):
                stream = await decision.open()
        except TimeoutError:
            raise Refusal(504, f"the tunnel {decision.label!r} did not answer in time") from None
        except UpstreamUnavailable as exc:
            raise Refusal(exc.status, str(exc), exc.headers) from None
        self._upstream = Upstream(
            stream, decision.key, decision.response_headers, decision.response_headers_checked
        )
        self._pool = decision.pool
        return self._upstream

    async def _take_pooled(self, decision: Destination, pool: UpstreamPool) -> bool:
        """An idle stream from ``pool`` as the upstream (True), else none was there."""
        self._close_upstream()
        stream = await pool.take()
        if stream is None:
            return False
        # requests=1: it carried requests before, so a close now is a stale upstream's.
        self._upstream = Upstream(
            stream, decision.key, decision.response_headers,
            decision.response_headers_checked, requests=1,
        )  # fmt: skip
        self._pool = pool
        return True

    def _release_upstream(self) -> None:
        """The connection ends: an upstream between two requests goes back to its pool."""
        upstream, pool = self._upstream, self._pool
        if upstream is not None and pool is not None:
            conn = upstream.conn
            idle = conn.our_state is State.IDLE and conn.their_state is State.IDLE
            if idle and not conn.trailing_data:
                self._upstream = None
                pool.give(upstream.stream)
        self._close_upstream()

    def _last(self) -> bool:
        """Whether the request in flight is the last this connection may carry."""
        return self._served >= self._limits.max_requests_per_connection

    def _after_response(self, end: ResponseEnd) -> bool:
        """Keep or close the upstream after a complete response: the connection goes on."""
        if end is ResponseEnd.FINISHED:
            self._close_upstream()
        return True

    async def _relay_with_body(
        self, upstream: Upstream, body_events: list[BodyEvent], record: RecordBuilder
    ) -> bool:
        """Stream the request body up while the response comes down.

        The app's response timeout starts once the whole body is up (as
        nginx's proxy_read_timeout does): a long upload is no slow answer.
        Meanwhile each read from the browser has ``body_timeout_s`` (else 408)
        and each write to the app ``response_timeout_s`` (else 504).
        """
        browser = self._browser
        body_task = asyncio.create_task(
            pump_request_body(
                browser.h, browser.stream, upstream.stream, upstream.conn, body_events, record,
                body_timeout_s=self._limits.body_timeout_s,
                app_timeout_s=self._limits.response_timeout_s,
            )
        )  # fmt: skip
        finished = False
        try:
            try:
                end = await self._responses.relay(upstream, record, False, self._last(), body_task)
                # (no 101 here: a request with a body is no upgrade the relay splices)
                keep = self._after_response(end)
            except (StaleUpstream, ConnectionError, OSError):
                failed = failure_of(body_task)
                if failed is None or record.response_started:
                    raise
                raise Refusal(failed.status, failed.detail) from None
        finally:
            finished = body_task.done()
            if not finished:
                body_task.cancel()
                with contextlib.suppress(BaseException):
                    await body_task
        if not finished:
            # The app answered before reading the whole body: the rest of the
            # body cannot be skipped safely, so this connection ends here.
            return False
        if body_task.cancelled() or body_task.exception() is not None:
            return False
        return keep

    async def _splice(self, upstream: Upstream, record: RecordBuilder) -> None:
        """Copy bytes both ways after a 101, until both directions ended.

        An upstream that can ``adopt`` the browser's stream (the router's own
        SSH-over-WebSocket endpoint, ``hostmux.tunnel.websocket``) is handed it
        instead: no copy through a second stream, no task per direction.
        """
        self._upstream = None  # no longer reusable: owned by the splice now
        self.splicing = True  # a WebSocket now (ConnectionSet.websockets counts them)
        adopt = getattr(upstream.stream, "adopt", None)
        if adopt is not None:  # an in-process endpoint that reads the browser's stream itself
            try:
                await adopt(
                    self._browser.stream, client_rest=self._browser.h.trailing_data,
                    own_rest=upstream.conn.trailing_data, going_away=self._going_away,
                )  # fmt: skip
            finally:
                upstream.stream.close()
            return
        self.spliced = record
        try:
            await splice_until_ended(
                self._browser.stream, upstream.stream, peer=self._peer,
                idle_timeout_s=self._limits.websocket_idle_timeout_s, counter=record,
                going_away=self._going_away, client_rest=self._browser.h.trailing_data,
                upstream_rest=upstream.conn.trailing_data,
            )  # fmt: skip
        finally:
            self.splicing = False
            self.spliced = None
            upstream.stream.close()

    def _close_upstream(self) -> None:
        if self._upstream is not None:
            self._upstream.stream.close()
            self._upstream = None
