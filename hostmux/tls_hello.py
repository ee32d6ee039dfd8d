"""The TLS ClientHello reader: the server name (SNI) and the ALPN list, before any handshake.

The router must sometimes decide what to do with a TLS connection before it
answers it: relay it untouched to a passthrough tunnel (chosen by the SNI),
pick the SSLContext that asks for a client certificate (by the SNI, because
Python's ssl cannot change verification inside its SNI callback), or answer
an ACME TLS-ALPN-01 challenge (``acme-tls/1`` in the ALPN list, which Python's
ssl does not show a server before it has chosen a certificate). No maintained
library reads a ClientHello for asyncio, so this is the one TLS parser hostmux
writes: it reads two extensions and checks every length on the way, and it
never answers anything.

Rules (RFC 8446 sections 4.1.2, 4.2 and 5.1; RFC 6066 section 3; RFC 7301):

1. Sans-IO and incremental: ``HelloReader.feed`` takes bytes as they arrive,
   one at a time in the worst case, and answers ``NEED_MORE`` or a
   ``ClientHello``. It consumes nothing from the stream: the caller peeks (or
   keeps what it read) and replays those bytes to whoever handles the
   connection next. ``ClientHello.size`` says where the hello ended; bytes
   fed after it are ignored.
2. A hello may be fragmented over several handshake records (RFC 8446 5.1),
   which must follow each other with no other record type between them and
   none empty. Record versions TLS 1.0 to 1.3 (``03 01`` to ``03 04``) are
   accepted; SSL 3.0 and SSLv2-compatible hellos are refused as unsupported.
3. Every length field is checked against what contains it: the record, the
   handshake message, the session id (at most 32), the cipher suites (even,
   not empty), the compression methods (not empty), the extensions block
   (exactly the rest of the hello), each extension, the server_name list and
   the ALPN list. An extension sent twice is an error (RFC 8446 4.2). Bytes
   after the hello in its last record are an error: the ClientHello is the
   only message of the client's first flight.
4. ``server_name`` holds exactly one ``host_name`` (as OpenSSL requires),
   an ASCII host name (an IDNA A-label when internationalised) that is
   returned lower-cased, with one trailing dot removed, and must be a valid
   host name: labels of a-z, 0-9 and '-' (``hostmux.names.is_dns_label``), at
   most 253 characters, not an IP address (RFC 6066 forbids literal
   addresses). ALPN names are returned as bytes, in the client's order.
5. Bounded: a handshake message over ``max_hello_bytes`` (16 KiB by default)
   or a hello over more than ``max_records`` records is refused as too large,
   so the bytes a caller holds for replay never exceed
   ``HelloLimits.max_stream_bytes``. The reader itself keeps at most the
   handshake message and one record header.
6. Every refusal is a ``HelloError`` whose message says why in one line:
   ``NotTls``, ``NotClientHello``, ``UnsupportedHello``, ``MalformedHello``
   (``BadServerName`` for the SNI), ``HelloTooLarge``; the I/O helpers add
   ``IncompleteHello`` and ``HelloTimeout``.

I/O: ``read_client_hello`` reads a hello from an ``asyncio.StreamReader``
without reading a byte past it and returns the bytes for replay (TLS
passthrough: write them to the backend, then splice). ``peek_client_hello``
leaves the hello in a socket's receive buffer (``MSG_PEEK``, waking only when
enough has arrived with ``SO_RCVLOWAT``), so the untouched socket can then be
handed to ``loop.connect_accepted_socket(..., ssl=context)`` with the context
the hello chose. ACME's TLS-ALPN-01 uses ``peek_client_hello``
(``router.acme.tls_alpn``); TLS passthrough will use ``read_client_hello``.

Cost (``bench/tls_hello.py``, CPU time on the shared 2-core dev VM, load 9):
15 µs for curl's 517-byte hello fed at once or in two pieces, 0.5 ms fed one
byte at a time (about 1 µs per call); a TLS handshake costs about 1 ms.
"""

from __future__ import annotations

import asyncio
import enum
import socket
from dataclasses import dataclass

from hostmux.names import is_dns_label

_RECORD_HEADER_BYTES = 5
_HANDSHAKE_HEADER_BYTES = 4
_MAX_RECORD_PAYLOAD = 2**14  # TLSPlaintext.length (RFC 8446 5.1)
_CONTENT_HANDSHAKE = 0x16
# The other record types a TLS peer may send first: it speaks TLS, but no hello.
_CONTENT_TYPES = {0x14: "change_cipher_spec", 0x15: "alert", 0x17: "application_data"}
_CLIENT_HELLO = 1
_EXT_SERVER_NAME = 0
_EXT_ALPN = 16
_HOST_NAME_TYPE = 0
_MAX_SESSION_ID = 32
_MAX_HOST_NAME = 253  # a DNS name in text form, without its trailing dot
# legacy_version, random, an empty session id, one cipher suite and one compression
# method, each vector with its length.
_MIN_HELLO_BODY = 2 + 32 + 1 + 2 + 2 + 1 + 1


class HelloError(ValueError):
    """Not a ClientHello this reader accepts; the message says why in one line."""


class NotTls(HelloError):
    """The first bytes are not a TLS record (plain HTTP, SSH, noise)."""


class NotClientHello(HelloError):
    """TLS, but the first message is not a ClientHello."""


class UnsupportedHello(HelloError):
    """A hello of a protocol refused on purpose: SSLv2-compatible, SSL 3.0."""


class MalformedHello(HelloError):
    """A length, count or value that breaks the TLS rules."""


class BadServerName(MalformedHello):
    """The server_name extension holds no valid host name."""


class HelloTooLarge(HelloError):
    """Over ``max_hello_bytes`` or ``max_records``."""


class IncompleteHello(HelloError):
    """The connection ended before its ClientHello did."""


class HelloTimeout(HelloError):
    """No complete ClientHello within the deadline."""


class NeedMore(enum.Enum):
    """``HelloReader.feed``'s answer while the hello is not complete (``wanted`` says how much)."""

    NEED_MORE = "need more"


NEED_MORE = NeedMore.NEED_MORE


@dataclass(frozen=True, slots=True)
class HelloLimits:
    """How much of a stream a hello may take."""

    # 16 KiB: the record layer's own unit, far above real hellos (curl: 517
    # bytes, browsers with post-quantum key shares: about 1.8 KiB).
    max_hello_bytes: int = 16384
    # A real client sends its hello in one record (two past 16 KiB); 32 leaves
    # room for odd middleboxes and caps record headers at 160 bytes.
    max_records: int = 32

    @property
    def max_stream_bytes(self) -> int:
        """The most bytes a hello may take from the stream, record headers included."""
        return self.max_hello_bytes + _RECORD_HEADER_BYTES * self.max_records


@dataclass(frozen=True, slots=True)
class ClientHello:
    """What the router reads in a hello: enough to route it, nothing to answer it."""

    sni: str | None  # lower-cased host name, IDNA A-labels as sent; None without server_name
    alpn: tuple[bytes, ...]  # protocol names in the client's order; () without ALPN
    size: int  # bytes of the stream the hello took: its records, headers included


class HelloReader:
    """Reads one ClientHello from the bytes of a stream, fed as they arrive."""

    __slots__ = ("_done", "_header", "_left", "_limits", "_message", "_records", "_taken")

    def __init__(self, limits: HelloLimits = HelloLimits()) -> None:
        self._limits = limits
        self._header = bytearray()  # the record header read so far (at most 5 bytes)
        self._left = 0  # payload bytes of the current record still to come
        self._message = bytearray()  # the handshake message so far
        self._records = 0
        self._taken = 0  # bytes of the stream taken so far
        self._done: ClientHello | HelloError | None = None

    def __repr__(self) -> str:
        return (
            f"<HelloReader taken={self._taken} records={self._records}"
            f" message={len(self._message)} done={self._done!r}>"
        )

    @property
    def taken(self) -> int:
        """Bytes of the stream taken so far (never over ``limits.max_stream_bytes``)."""
        return self._taken

    @property
    def wanted(self) -> int:
        """Bytes that must still arrive before the hello can end (at least 1 until done).

        Reading exactly this many never reads past the hello.
        """
        if self._done is not None:
            return 0
        if self._left:
            return self._left
        return _RECORD_HEADER_BYTES - len(self._header)

    def feed(self, data: bytes | bytearray | memoryview) -> ClientHello | NeedMore:
        """Take the next bytes of the stream: the hello once it is complete, else NEED_MORE.

        Raises a ``HelloError`` as soon as the bytes cannot begin an acceptable
        hello; later calls answer the same (bytes after the end are ignored).
        """
        if isinstance(self._done, HelloError):
            raise self._done
        if self._done is not None:
            return self._done
        try:
            return self._feed(memoryview(data).cast("B"))
        except HelloError as exc:
            self._done = exc
            raise

    def _feed(self, data: memoryview) -> ClientHello | NeedMore:
        pos, end = 0, len(data)
        while pos < end:
            if self._left:
                step = min(self._left, end - pos)
                self._message += data[pos : pos + step]
                self._left -= step
                pos += step
                self._taken += step
                hello = self._check_message()
                if hello is not None:
                    self._done = hello
                    return hello
            else:
                step = min(_RECORD_HEADER_BYTES - len(self._header), end - pos)
                self._header += data[pos : pos + step]
                pos += step
                self._taken += step
                self._check_header()
        return NEED_MORE

    def _check_header(self) -> None:
        """Check the record header read so far; start the record once it is whole."""
        head, first = self._header, self._records == 0
        if head[0] != _CONTENT_HANDSHAKE:
            raise _wrong_record(bytes(head), first=first)
        if len(head) >= 2 and head[1] != 3:
            raise (NotTls if first else MalformedHello)(f"record version {head[1]}.x is not TLS")
        if len(head) >= 3:
            if head[2] == 0:
                raise UnsupportedHello("SSL 3.0 is not supported")
            if head[2] > 4:
                raise MalformedHello(f"unknown record version 3.{head[2]}")
        if len(head) < _RECORD_HEADER_BYTES:
            return
        length = int.from_bytes(head[3:5], "big")
        if length == 0:
            raise MalformedHello("an empty handshake record (RFC 8446 5.1)")
        if length > _MAX_RECORD_PAYLOAD:
            raise MalformedHello(f"a record of {length} bytes is over 2^14")
        self._records += 1
        if self._records > self._limits.max_records:
            raise HelloTooLarge(f"a ClientHello in over {self._limits.max_records} records")
        head.clear()
        self._left = length

    def _check_message(self) -> ClientHello | None:
        """Check the handshake message so far; the hello once it is whole."""
        message = self._message
        if message[0] != _CLIENT_HELLO:
            raise NotClientHello(f"handshake message type {message[0]}, not a ClientHello")
        if len(message) < _HANDSHAKE_HEADER_BYTES:
            return None
        total = _HANDSHAKE_HEADER_BYTES + int.from_bytes(message[1:4], "big")
        if total > self._limits.max_hello_bytes:
            raise HelloTooLarge(
                f"a ClientHello of {total} bytes is over the limit of"
                f" {self._limits.max_hello_bytes}"
            )
        if len(message) > total:
            raise MalformedHello("bytes after the ClientHello in its record")
        if len(message) < total:
            return None
        if self._left:
            raise MalformedHello("bytes after the ClientHello in its record")
        sni, alpn = _parse_body(bytes(message[_HANDSHAKE_HEADER_BYTES:]))
        return ClientHello(sni=sni, alpn=alpn, size=self._taken)


def _wrong_record(head: bytes, *, first: bool) -> HelloError:
    kind = head[0]
    if not first:
        name = _CONTENT_TYPES.get(kind, str(kind))
        return MalformedHello(f"a record of type {name} inside the ClientHello")
    if kind in _CONTENT_TYPES:
        return NotClientHello(f"a TLS {_CONTENT_TYPES[kind]} record, not a handshake")
    if kind & 0x80:
        # SSLv2 framing: a 2-byte length with its high bit set. Old clients sent
        # their hello so to reach SSLv2 servers; no other protocol begins so.
        return UnsupportedHello("an SSLv2-compatible ClientHello is not supported")
    return NotTls(f"first byte 0x{kind:02x} does not begin a TLS record")


class _Cursor:
    """Reads a TLS structure front to back; every read is bounds-checked."""

    __slots__ = ("_data", "_pos", "_what")

    def __init__(self, data: bytes, what: str) -> None:
        self._data, self._pos, self._what = data, 0, what

    @property
    def at_end(self) -> bool:
        return self._pos == len(self._data)

    def number(self, size: int, what: str) -> int:
        return int.from_bytes(self.take(size, what), "big")

    def take(self, size: int, what: str) -> bytes:
        end = self._pos + size
        if end > len(self._data):
            raise MalformedHello(f"the {what} field runs past the end of the {self._what}")
        data = self._data[self._pos : end]
        self._pos = end
        return data

    def vector(self, length_size: int, what: str, *, minimum: int = 0) -> bytes:
        """A length-prefixed vector, at least ``minimum`` bytes long."""
        data = self.take(self.number(length_size, f"{what} length"), what)
        if len(data) < minimum:
            raise MalformedHello(f"the {what} field has {len(data)} bytes, fewer than {minimum}")
        return data

    def end(self) -> None:
        stray = len(self._data) - self._pos
        if stray:
            plural = "s" if stray > 1 else ""
            raise MalformedHello(f"{stray} stray byte{plural} after the {self._what}")


def _parse_body(body: bytes) -> tuple[str | None, tuple[bytes, ...]]:
    if len(body) < _MIN_HELLO_BODY:
        raise MalformedHello(f"a ClientHello body of {len(body)} bytes is too short")
    hello = _Cursor(body, "ClientHello")
    major, minor = hello.take(2, "version")
    if major != 3 or minor == 0:
        raise UnsupportedHello(f"ClientHello version {major}.{minor} is not TLS 1.0 or later")
    hello.take(32, "random")
    if len(hello.vector(1, "session id")) > _MAX_SESSION_ID:
        raise MalformedHello(f"a session id over {_MAX_SESSION_ID} bytes")
    if len(hello.vector(2, "cipher suites", minimum=2)) % 2:
        raise MalformedHello("an odd length of cipher suites")
    hello.vector(1, "compression methods", minimum=1)
    if hello.at_end:  # TLS 1.0-1.2 allow a hello without extensions
        return None, ()
    extensions = hello.vector(2, "extensions")
    hello.end()
    # The one loop of the hot path (curl sends 17 extensions), so inlined.
    seen: set[int] = set()
    sni: str | None = None
    alpn: tuple[bytes, ...] = ()
    pos, end = 0, len(extensions)
    while pos < end:
        if end - pos < 4:
            raise MalformedHello("an extension header runs past the end of the extensions")
        kind = extensions[pos] << 8 | extensions[pos + 1]
        start = pos + 4
        pos = start + (extensions[pos + 2] << 8 | extensions[pos + 3])
        if pos > end:
            raise MalformedHello(f"the extension {kind} field runs past the end of the extensions")
        if kind in seen:
            raise MalformedHello(f"extension {kind} sent twice (RFC 8446 4.2)")
        seen.add(kind)
        if kind == _EXT_SERVER_NAME:
            sni = _server_name(extensions[start:pos])
        elif kind == _EXT_ALPN:
            alpn = _protocol_names(extensions[start:pos])
    return sni, alpn


def _server_name(data: bytes) -> str:
    extension = _Cursor(data, "server_name extension")
    names = _Cursor(extension.vector(2, "server name list", minimum=1), "server name list")
    extension.end()
    kind = names.number(1, "name type")
    if kind != _HOST_NAME_TYPE:
        raise BadServerName(f"server name type {kind} is not host_name")
    raw = names.vector(2, "host name", minimum=1)
    names.end()  # one host_name only (RFC 6066: no two names of one type)
    return host_name(raw)


def host_name(raw: bytes) -> str:
    """The SNI host name as the router compares it, or ``BadServerName``."""
    if not raw.isascii():
        raise BadServerName("a server name that is not ASCII (IDNA names use A-labels)")
    name = raw.decode("ascii").lower()
    if name.endswith("."):
        name = name[:-1]
    shown = name[:64] + ("..." if len(name) > 64 else "")
    if len(name) > _MAX_HOST_NAME or not all(is_dns_label(label) for label in name.split(".")):
        raise BadServerName(f"server name {shown!r} is not a host name")
    if name.rpartition(".")[2].isdigit():
        raise BadServerName(f"server name {shown!r} is an IP address, not a host name")
    return name


def _protocol_names(data: bytes) -> tuple[bytes, ...]:
    extension = _Cursor(data, "ALPN extension")
    names = _Cursor(extension.vector(2, "protocol name list", minimum=2), "protocol name list")
    extension.end()
    found: list[bytes] = []
    while not names.at_end:
        found.append(names.vector(1, "protocol name", minimum=1))
    return tuple(found)


async def read_client_hello(
    reader: asyncio.StreamReader, *, timeout_s: float, limits: HelloLimits = HelloLimits()
) -> tuple[ClientHello, bytes]:
    """Read a ClientHello and not one byte more: the hello, and its bytes for replay.

    What follows the hello stays in ``reader``. Raises a ``HelloError``:
    ``IncompleteHello`` at end of stream, ``HelloTimeout`` after ``timeout_s``.
    """
    hello_reader = HelloReader(limits)
    taken = bytearray()
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                data = await reader.read(hello_reader.wanted)
                if not data:
                    raise IncompleteHello(f"the stream ended {len(taken)} bytes into the hello")
                taken += data
                result = hello_reader.feed(data)
                if isinstance(result, ClientHello):
                    return result, bytes(taken)
    except TimeoutError:
        raise HelloTimeout(f"no complete ClientHello within {timeout_s:g} s") from None


async def peek_client_hello(
    sock: socket.socket, *, timeout_s: float, limits: HelloLimits = HelloLimits()
) -> ClientHello:
    """Read a ClientHello from ``sock``'s receive buffer, leaving it there.

    ``sock`` is a non-blocking connected TCP socket nothing else reads yet;
    it wakes the loop only once the bytes the hello still wants have arrived
    (``SO_RCVLOWAT``, which Linux and the BSDs honour in poll, reset to 1
    before returning). Raises as ``read_client_hello``; an ``OSError`` of the
    socket (a reset) passes through.
    """
    loop = asyncio.get_running_loop()
    hello_reader = HelloReader(limits)
    seen = 0  # bytes of the hello peeked and fed so far
    woken = False  # the last wait ended with no new bytes yet
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                target = seen + hello_reader.wanted
                try:
                    data: bytes | None = sock.recv(target, socket.MSG_PEEK)
                except BlockingIOError:
                    data = None
                if data is not None and len(data) > seen:
                    result = hello_reader.feed(memoryview(data)[seen:])
                    if isinstance(result, ClientHello):
                        return result
                    seen, woken = len(data), False
                    continue
                # Nothing new: b"" is the end of the stream; so is nothing new after a
                # wake-up, since the socket is readable below its low-water mark only then.
                if data == b"" or (data is not None and woken):
                    raise IncompleteHello(f"the stream ended {seen} bytes into the hello")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, target)
                await _readable(loop, sock)
                woken = True
    except TimeoutError:
        raise HelloTimeout(f"no complete ClientHello within {timeout_s:g} s") from None
    finally:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)


async def _readable(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    ready = loop.create_future()
    loop.add_reader(sock.fileno(), ready.set_result, None)
    try:
        await ready
    finally:
        loop.remove_reader(sock.fileno())
