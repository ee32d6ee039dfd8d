"""HTTP/1.1 relay: one browser connection, requests parsed by llhttp, relayed upstream.

Used by the router (upstream = an SSH channel down a tunnel) and by the auth
helper (upstream = TCP to the app). The rules it enforces:

1. Every request is parsed (``_http1``: llhttp) and re-serialised from the parsed events;
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
   The deadlines around a request body going up are in ``_upload``.
6. A WebSocket upgrade becomes a byte splice only after the app answers ``101``;
   any other answer keeps HTTP parsing. The splice propagates half-close.
7. The upstream stream is reused for the next request of the same connection
   while both sides keep the connection alive; a request without a body that
   finds a reused upstream already closed is retried once on a fresh one.

Error handling: client-visible failures are status pages from ``_pages``;
exceptions from either stream end the connection quietly (logged at debug).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from hostmux.http1.checked_events import (
    END_OF_MESSAGE,
    request_checking_headers,
    request_of_checked_headers,
    response_checking_headers,
    response_of_checked_headers,
)
from hostmux.http1.checks import check_request, header, parse_error_status, reason_phrase
from hostmux.http1.connection import Http1Connection
from hostmux.http1.events import (
    NEED_DATA,
    ConnectionClosed,
    Data,
    EndOfMessage,
    Event,
    InformationalResponse,
    LocalProtocolError,
    Pending,
    ProtocolError,
    RemoteProtocolError,
    Request,
    Response,
    Role,
    State,
)
from hostmux.http1.headers import (
    ClientInfo,
    Headers,
    TrustedProxies,
    is_websocket_upgrade,
    request_headers_for_app,
    response_headers_for_client,
)
from hostmux.http1.pages import Page, status_page, wants_html
from hostmux.relay.deadline import Deadline
from hostmux.relay.gateway import Destination, Gateway, UpstreamUnavailable
from hostmux.relay.records import RecordBuilder, RequestRecord, new_request_id, unparsable_request
from hostmux.relay.splice import splice
from hostmux.relay.streams import ByteStream
from hostmux.relay.upload import (
    BodyEvent,
    buffered_body_events,
    failure_of,
    pump_request_body,
    receive_once_sent,
)

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


_IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})


# Queued browser output is written once it reaches this size (a bounded buffer).
_FLUSH_BYTES = 64 * 1024


class _Abort(Exception):
    """Ends the browser connection without a response (it cannot get one now)."""


@dataclass(slots=True)
class _Upstream:
    stream: ByteStream
    conn: Http1Connection
    key: str
    response_filter: Callable[[Headers], Headers] | None = None
    requests: int = 0
    got_response: bool = False  # any byte of the current response received


class HttpRelay:
    """Serves one browser connection until it closes.

    Resource handling: owns ``client`` and any upstream it opens; both are
    closed when ``run`` returns, whatever happened.
    Error handling: never raises for I/O or protocol errors; cancellation
    propagates.
    """

    # The timeout of the waits in the task running ``run`` (set there: the relay
    # may be made in another task than the one that runs it).
    _deadline: Deadline

    def __init__(
        self,
        client: ByteStream,
        info: ClientInfo,
        gateway: Gateway,
        limits: RelayLimits,
        on_request: Callable[[RequestRecord], None],
        trusted_proxies: TrustedProxies | None = None,
    ) -> None:
        self._client = client
        self._info = info
        self._trusted = trusted_proxies or None
        self._gateway = gateway
        self._limits = limits
        self._on_request = on_request
        self._h = Http1Connection(
            Role.SERVER,
            max_head_bytes=limits.max_header_bytes,
            max_target_bytes=limits.max_target_bytes,
        )
        self._bound_host: str | None = None
        self._upstream: _Upstream | None = None
        self._out = bytearray()  # response bytes queued for the browser
        self._served = 0  # requests read on this connection, the current one included
        self._peer = f"{info.peer_ip}:{info.peer_port}"
        self._going_away = asyncio.Event()  # set by go_away(): the router is shutting down
        self._between_requests = False  # waiting for the next request head
        self._browser_stalled = False  # stopped reading the response: reset, not close

    def __repr__(self) -> str:
        return f"<HttpRelay peer={self._peer} host={self._bound_host}>"

    def go_away(self) -> None:
        """Shutdown: close now if idle, else after the response in flight (with
        ``Connection: close``); a WebSocket gets a 1001 close frame."""
        self._going_away.set()
        if self._between_requests:
            self._deadline.expire()  # the wait for a request ends as if its time were up

    async def run(self) -> None:
        self._deadline = Deadline()
        try:
            await self._serve()
        except (_Abort, ConnectionError, TimeoutError, OSError, ProtocolError) as exc:
            log.debug("connection %s ended: %r", self._peer, exc)
        finally:
            self._deadline.close()
            self._close_upstream()
            if self._browser_stalled:
                # A browser that stopped reading would keep a graceful close
                # (and its queued bytes) waiting: reset it instead.
                self._client.abort()
            else:
                self._client.close()  # flushes what is queued (bounded by the stream)

    # -- the request loop ----------------------------------------------------

    async def _serve(self) -> None:
        for served in range(self._limits.max_requests_per_connection):
            self._served = served + 1
            timeout = (
                self._limits.header_timeout_s if served == 0 else self._limits.keepalive_timeout_s
            )
            if self._going_away.is_set():
                return
            try:
                self._between_requests = True
                with self._deadline.within(timeout):
                    event = await self._next_client_event()
            except TimeoutError:
                return  # idle, slowloris or shutdown: close without a word, as nginx does
            except RemoteProtocolError as exc:
                page = status_page(*parse_error_status(exc))
                await self._send_page(page, head_only=False)
                # No request was formed, but the refusal belongs in the access log.
                self._on_request(unparsable_request(self._peer, page.status))
                return
            finally:
                self._between_requests = False
            if isinstance(event, ConnectionClosed):
                return
            assert isinstance(event, Request), event
            if not await self._handle(event):
                return
            if self._h.our_state is not State.DONE or self._h.their_state is not State.DONE:
                return
            self._h.start_next_cycle()

    async def _handle(self, request: Request) -> bool:
        """Relay one request; True if the connection may carry another."""
        started = time.perf_counter()
        rid = new_request_id()
        record = RecordBuilder(rid, self._peer, request)
        try:
            keep = await self._relay_request(request, rid, record)
        finally:
            self._on_request(record.finish(started))
        return keep

    async def _relay_request(self, request: Request, rid: str, record: RecordBuilder) -> bool:
        fields = request.headers
        as_html = wants_html(header(fields, b"accept"))
        head_only = request.method == b"HEAD"

        async def refuse(status: int, detail: str) -> bool:
            record.status = status
            await self._send_page(
                status_page(status, detail, request_id=rid, as_html=as_html), head_only=head_only
            )
            return False

        checked = check_request(
            request,
            fields,
            max_target_bytes=self._limits.max_target_bytes,
            max_header_bytes=self._limits.max_header_bytes,
        )
        record.host = host = checked.host
        host_value, target = checked.host_value, checked.target
        if checked.refusal is not None:
            return await refuse(*checked.refusal)
        if self._bound_host is not None and host != self._bound_host:
            return await refuse(421, "this connection is bound to another host; open a new one")
        self._bound_host = host

        # Parse the body bytes already received before routing: a framing error in
        # them is refused unseen by the app and before any login redirect. A
        # bodiless request goes in one write, retried if a reused upstream closed.
        try:
            body_events = buffered_body_events(self._h)
        except RemoteProtocolError:
            return await refuse(400, "the request body framing is invalid")
        bodiless = isinstance(body_events[0], EndOfMessage)
        client = self._info
        if self._trusted is not None:
            client = self._trusted.client_of(fields, client)
        routed = self._gateway.route(host, request, rid, client)
        # (an isinstance check on the two concrete answers is cheaper than isawaitable)
        decision = routed if isinstance(routed, Destination | Page) else await routed
        if isinstance(decision, Page):
            record.status = decision.status
            await self._send_page(decision, head_only=head_only)
            return False
        record.name = decision.label

        websocket = request.method == b"GET" and is_websocket_upgrade(fields)
        if decision.request_headers is not None:
            upstream_request = request_checking_headers(
                request.method, target, decision.request_headers(fields, websocket)
            )
        else:
            upstream_request = request_of_checked_headers(
                request.method, target,
                request_headers_for_app(
                    fields, host=host_value, client=client, request_id=rid, websocket=websocket
                ),
            )  # fmt: skip
        # Only a request that can be sent twice without harm is retried (RFC 9110 9.2.2).
        retryable = bodiless and request.method in _IDEMPOTENT

        for attempt in (1, 2):
            reused = self._upstream is not None and self._upstream.key == decision.key
            if not reused:
                self._close_upstream()
                try:
                    async with asyncio.timeout(self._limits.connect_timeout_s):
                        stream = await decision.open()
                except TimeoutError:
                    return await refuse(
                        504, f"the tunnel {decision.label!r} did not answer in time"
                    )
                except UpstreamUnavailable as exc:
                    return await refuse(502, str(exc))
                self._upstream = _Upstream(
                    stream, Http1Connection(Role.CLIENT), decision.key, decision.response_headers
                )
            upstream = self._upstream
            assert upstream is not None
            upstream.requests += 1
            upstream.got_response = False
            head = upstream.conn.send(upstream_request)
            if bodiless:
                head += upstream.conn.send(END_OF_MESSAGE)
            try:
                await upstream.stream.send_all(head)
                if bodiless:
                    return await self._relay_response(upstream, record, websocket, refuse)
                return await self._relay_with_body(upstream, body_events, record, refuse)
            except _StaleUpstream:
                self._close_upstream()
                if attempt == 2 or not retryable or not reused:
                    return await refuse(502, "the app closed the connection without answering")
            except (ConnectionError, OSError):
                if record.response_started:
                    raise _Abort() from None
                self._close_upstream()
                if attempt == 2 or not retryable or not reused:
                    return await refuse(502, "the connection to the app failed")
        return False  # not reached: the second attempt always returns

    async def _relay_with_body(
        self,
        upstream: _Upstream,
        body_events: list[BodyEvent],
        record: RecordBuilder,
        refuse: Callable[[int, str], Awaitable[bool]],
    ) -> bool:
        """Stream the request body up while the response comes down.

        The app's response timeout starts once the whole body is up (as
        nginx's proxy_read_timeout does): a long upload is no slow answer.
        Meanwhile each read from the browser has ``body_timeout_s`` (else 408)
        and each write to the app ``response_timeout_s`` (else 504).
        """
        body_task = asyncio.create_task(
            pump_request_body(
                self._h, self._client, upstream.stream, upstream.conn, body_events, record,
                body_timeout_s=self._limits.body_timeout_s,
                app_timeout_s=self._limits.response_timeout_s,
            )
        )  # fmt: skip
        finished = False
        try:
            try:
                keep = await self._relay_response(upstream, record, False, refuse, body_task)
            except (_StaleUpstream, ConnectionError, OSError):
                failed = failure_of(body_task)
                if failed is None or record.response_started:
                    raise
                self._close_upstream()
                return await refuse(failed.status, failed.detail)
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

    async def _relay_response(
        self,
        upstream: _Upstream,
        record: RecordBuilder,
        websocket: bool,
        refuse: Callable[[int, str], Awaitable[bool]],
        body: asyncio.Task[None] | None = None,
    ) -> bool:
        """Relay the app's response; ``body`` is the request body still going up, if any."""
        limits = self._limits
        timeout = limits.response_timeout_s
        while True:
            try:
                event = await self._next_upstream_event(
                    upstream, timeout, record, None if record.response_started else body
                )
            except TimeoutError:
                if record.response_started:
                    raise _Abort() from None
                failed = failure_of(body)
                if failed is not None:
                    return await refuse(failed.status, failed.detail)
                record.note = record.note or "response timeout"
                return await refuse(504, "the app did not answer in time")
            except RemoteProtocolError:
                if record.response_started:
                    raise _Abort() from None
                self._close_upstream()
                return await refuse(502, "the app sent an invalid response")
            if isinstance(event, ConnectionClosed):
                failed = failure_of(body)
                if failed is not None and not record.response_started:
                    return await refuse(failed.status, failed.detail)
                if not record.response_started and upstream.requests > 1:
                    raise _StaleUpstream()
                if record.response_started:
                    raise _Abort()
                return await refuse(502, "the app closed the connection without answering")
            if isinstance(event, InformationalResponse):
                if event.status_code == 101:
                    if not websocket:
                        return await refuse(502, "the app switched protocols unasked")
                    switched = response_headers_for_client(event.headers, websocket_accepted=True)
                    if upstream.response_filter is not None:  # a 101 may set cookies too
                        switched = upstream.response_filter(switched)
                    await self._send_client(
                        InformationalResponse(101, switched, event.reason), record
                    )
                    record.status = 101
                    record.response_started = True
                    await self._flush_client(record)
                    await self._splice(upstream, record)
                    return False
                await self._send_client(
                    InformationalResponse(
                        event.status_code, response_headers_for_client(event.headers), event.reason
                    ),
                    record,
                )
                continue
            if isinstance(event, Response):
                record.status = event.status_code
                record.response_started = True
                headers = response_headers_for_client(event.headers)
                if self._going_away.is_set() or self._served >= limits.max_requests_per_connection:
                    # Shutting down, or the last request this connection may carry:
                    # say so, as nginx does after keepalive_requests (then it closes).
                    headers.append((b"connection", b"close"))
                if upstream.response_filter is not None:
                    response = response_checking_headers(
                        event.status_code, event.reason, upstream.response_filter(headers)
                    )
                else:
                    response = response_of_checked_headers(event, headers)
                await self._send_client(response, record)
                timeout = limits.upstream_idle_timeout_s
            elif isinstance(event, Data):
                await self._send_client(event, record)
            elif isinstance(event, EndOfMessage):
                await self._send_client(END_OF_MESSAGE, record)
                await self._flush_client(record)
                # After a refused upgrade the app's side of the connection is in
                # doubt (hypercorn, for one, errors on what follows): not reused.
                reusable = (
                    not websocket
                    and upstream.conn.our_state is State.DONE
                    and upstream.conn.their_state is State.DONE
                )
                if reusable:
                    upstream.conn.start_next_cycle()
                else:
                    self._close_upstream()
                return True

    async def _splice(self, upstream: _Upstream, record: RecordBuilder) -> None:
        """Copy bytes both ways after a 101, until both directions ended."""
        self._upstream = None  # no longer reusable: owned by the splice now
        try:
            await splice(
                self._client, upstream.stream,
                idle_timeout_s=self._limits.websocket_idle_timeout_s, counter=record,
                going_away=self._going_away, client_rest=self._h.trailing_data,
                upstream_rest=upstream.conn.trailing_data,
            )  # fmt: skip
        except* (ConnectionError, OSError, TimeoutError) as group:
            log.debug("websocket splice %s ended: %r", self._peer, group.exceptions)
        finally:
            upstream.stream.close()

    # -- sending to the browser ---------------------------------------------

    async def _send_client(self, event: Event, record: RecordBuilder) -> None:
        """Queue ``event`` for the browser; written out before the relay next waits."""
        data = self._h.send(event)
        if data:
            if isinstance(event, Data):
                record.bytes_out += len(event.data)
            if len(self._out) + len(data) < _FLUSH_BYTES:
                self._out += data  # small pieces: batched into one write
                return
            if self._out:
                self._client.write(bytes(self._out))
                self._out.clear()
            self._client.write(data)  # large pieces go as they are: no copies
            await self._flush_client(record)

    async def _flush_client(self, record: RecordBuilder) -> None:
        """Write what is queued in one go; wait (bounded) only if the browser is slow."""
        if self._out:
            self._client.write(bytes(self._out))
            self._out.clear()
        if self._client.must_drain():
            try:
                async with asyncio.timeout(self._limits.send_timeout_s):
                    await self._client.drain()
            except TimeoutError:
                record.note = "send timeout"
                self._browser_stalled = True
                raise _Abort() from None

    async def _next_upstream_event(
        self,
        upstream: _Upstream,
        timeout_s: float,
        record: RecordBuilder,
        body: asyncio.Task[None] | None = None,
    ) -> Event:
        """The app's next event; flushes queued output to the browser before waiting.

        While ``body`` (the request body going up) runs, there is no deadline:
        ``timeout_s`` starts when it has finished.
        """
        conn = upstream.conn
        while True:
            event = conn.next_event()
            if event is not NEED_DATA:
                assert not isinstance(event, Pending), (
                    event
                )  # PAUSED: not before the response ended
                return event
            if self._out:
                await self._flush_client(record)
            if body is not None and not body.done():
                data = await receive_once_sent(upstream.stream, body, timeout_s)
            else:
                with self._deadline.within(timeout_s):
                    data = await upstream.stream.receive()
            if not data and conn.their_state is State.SEND_RESPONSE and not upstream.got_response:
                # Closed before a single byte of answer: the parser would call that
                # a protocol error; for us it is "closed without answering".
                return ConnectionClosed()
            if data:
                upstream.got_response = True
            conn.receive_data(data)

    async def _send_page(self, page: Page, *, head_only: bool) -> None:
        try:
            data = self._h.send(
                response_checking_headers(page.status, reason_phrase(page.status), page.headers)
            )
            if not head_only:
                data += self._h.send(Data(page.body))
            data += self._h.send(END_OF_MESSAGE)
        except LocalProtocolError:
            return  # a response already started: closing is all that is left
        with contextlib.suppress(ConnectionError, OSError, TimeoutError):
            async with asyncio.timeout(self._limits.send_timeout_s):
                await self._client.send_all(data)

    # -- helpers -------------------------------------------------------------

    async def _next_client_event(self) -> Event:
        while True:
            event = self._h.next_event()
            if event is NEED_DATA:
                self._h.receive_data(await self._client.receive())
                continue
            assert not isinstance(event, Pending), event  # PAUSED never happens here
            return event

    def _close_upstream(self) -> None:
        if self._upstream is not None:
            self._upstream.stream.close()
            self._upstream = None


class _StaleUpstream(Exception):
    """A reused upstream stream was closed by the app before it answered."""
