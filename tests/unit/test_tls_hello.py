"""The ClientHello reader (``hostmux.tls_hello``): real hellos, every split, every refusal.

Real hellos come from Python's ssl (made here, through a memory BIO) and from
``openssl s_client`` and ``curl`` (captured once by ``client_hellos/capture.py``
against a plain loopback socket, committed as ``client_hellos/*.bin``).
"""

from __future__ import annotations

import functools
import ssl
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hostmux.tls_hello import (
    NEED_MORE,
    BadServerName,
    ClientHello,
    HelloError,
    HelloLimits,
    HelloReader,
    HelloTooLarge,
    MalformedHello,
    NotClientHello,
    NotTls,
    UnsupportedHello,
    host_name,
)

CAPTURED = Path(__file__).resolve().parent / "client_hellos"
DEFAULT_LIMITS = HelloLimits()

# --- building hellos -----------------------------------------------------------------------


def python_hello(
    server_hostname: str | None,
    alpn: list[str] | None = None,
    maximum: ssl.TLSVersion = ssl.TLSVersion.MAXIMUM_SUPPORTED,
) -> bytes:
    """The first flight of Python's ssl as a client: one ClientHello record."""
    context = ssl.create_default_context()
    if server_hostname is None:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if alpn:
        context.set_alpn_protocols(alpn)
    context.maximum_version = maximum
    outgoing = ssl.MemoryBIO()
    tls = context.wrap_bio(ssl.MemoryBIO(), outgoing, server_hostname=server_hostname)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def vector(length_size: int, data: bytes) -> bytes:
    return len(data).to_bytes(length_size, "big") + data


def sni_extension(name: bytes) -> tuple[int, bytes]:
    return 0, vector(2, b"\x00" + vector(2, name))


def alpn_extension(*names: bytes) -> tuple[int, bytes]:
    return 16, vector(2, b"".join(vector(1, n) for n in names))


def hello_message(
    extensions: list[tuple[int, bytes]] | None = None,
    *,
    version: bytes = b"\x03\x03",
    session_id: bytes = b"\x01" * 32,
    suites: bytes = b"\x13\x01\x13\x02",
    compression: bytes = b"\x00",
) -> bytes:
    """A ClientHello handshake message; ``extensions=None`` leaves the block out."""
    body = version + b"\x42" * 32 + vector(1, session_id) + vector(2, suites)
    body += vector(1, compression)
    if extensions is not None:
        body += vector(
            2, b"".join(kind.to_bytes(2, "big") + vector(2, d) for kind, d in extensions)
        )
    return b"\x01" + vector(3, body)


def message_of(body: bytes) -> bytes:
    return b"\x01" + vector(3, body)


def records(message: bytes, sizes: list[int] | None = None, version: bytes = b"\x03\x01") -> bytes:
    """``message`` in handshake records of ``sizes`` bytes (the rest in a last one)."""
    out, pos = b"", 0
    for size in [*(sizes or []), len(message)]:
        chunk = message[pos : pos + size]
        if chunk:
            out += b"\x16" + version + vector(2, chunk)
        pos += len(chunk)
    return out


def read(data: bytes, limits: HelloLimits = DEFAULT_LIMITS) -> ClientHello:
    result = HelloReader(limits).feed(data)
    assert isinstance(result, ClientHello)
    return result


def refused(data: bytes, limits: HelloLimits = DEFAULT_LIMITS) -> HelloError:
    reader = HelloReader(limits)
    with pytest.raises(HelloError) as caught:
        reader.feed(data)
    return caught.value


def handshake_of(record_bytes: bytes) -> bytes:
    """The handshake message inside one record."""
    assert record_bytes[0] == 0x16 and len(record_bytes) == 5 + int.from_bytes(record_bytes[3:5])
    return record_bytes[5:]


# --- real hellos ---------------------------------------------------------------------------

REAL: dict[str, tuple[Callable[[], bytes], str | None, tuple[bytes, ...]]] = {
    "python-sni": (lambda: python_hello("myapp.example.org"), "myapp.example.org", ()),
    "python-no-sni": (lambda: python_hello(None), None, ()),
    "python-acme": (
        lambda: python_hello("example.org", ["acme-tls/1"]),
        "example.org",
        (b"acme-tls/1",),
    ),
    "python-h2": (
        lambda: python_hello("a.example.org", ["h2", "http/1.1"]),
        "a.example.org",
        (b"h2", b"http/1.1"),
    ),
    "python-tls12": (
        lambda: python_hello("b.example.org", ["http/1.1"], ssl.TLSVersion.TLSv1_2),
        "b.example.org",
        (b"http/1.1",),
    ),
    "openssl-sni-alpn": (
        lambda: (CAPTURED / "openssl-sni-alpn.bin").read_bytes(),
        "myapp.example.org",
        (b"h2", b"http/1.1"),
    ),
    "openssl-acme": (
        lambda: (CAPTURED / "openssl-acme.bin").read_bytes(),
        "example.org",
        (b"acme-tls/1",),
    ),
    "openssl-no-sni-tls12": (
        lambda: (CAPTURED / "openssl-no-sni-tls12.bin").read_bytes(),
        None,
        (),
    ),
    "curl": (
        lambda: (CAPTURED / "curl.bin").read_bytes(),
        "x.example.org",
        (b"h2", b"http/1.1"),
    ),
    "curl-http11-upper-case": (
        lambda: (CAPTURED / "curl-http11.bin").read_bytes(),
        "lab-1.example.org",
        (b"http/1.1",),
    ),
}


@functools.cache
def real_bytes(name: str) -> bytes:
    return REAL[name][0]()


@pytest.fixture(params=sorted(REAL))
def real(request: pytest.FixtureRequest) -> tuple[bytes, str | None, tuple[bytes, ...]]:
    _, sni, alpn = REAL[request.param]
    return real_bytes(request.param), sni, alpn


def test_a_real_hello_gives_its_sni_and_alpn(
    real: tuple[bytes, str | None, tuple[bytes, ...]],
) -> None:
    data, sni, alpn = real
    assert read(data) == ClientHello(sni=sni, alpn=alpn, size=len(data))


def test_a_real_hello_split_at_every_offset_gives_the_same_answer(
    real: tuple[bytes, str | None, tuple[bytes, ...]],
) -> None:
    data, sni, alpn = real
    expected = ClientHello(sni=sni, alpn=alpn, size=len(data))
    for cut in range(1, len(data)):
        reader = HelloReader()
        assert reader.feed(data[:cut]) is NEED_MORE
        assert reader.taken == cut
        assert reader.wanted > 0
        assert reader.feed(data[cut:]) == expected


def test_a_real_hello_one_byte_at_a_time(
    real: tuple[bytes, str | None, tuple[bytes, ...]],
) -> None:
    data, sni, alpn = real
    reader = HelloReader()
    answers = [reader.feed(data[i : i + 1]) for i in range(len(data))]
    assert answers[:-1] == [NEED_MORE] * (len(data) - 1)
    assert answers[-1] == ClientHello(sni=sni, alpn=alpn, size=len(data))
    assert reader.wanted == 0


def test_reading_exactly_what_is_wanted_ends_on_the_hello(
    real: tuple[bytes, str | None, tuple[bytes, ...]],
) -> None:
    data, _, _ = real
    stream = data + b"\x17\x03\x03\x00\x05early"  # what a client may send next
    reader, pos, reads = HelloReader(), 0, 0
    while True:
        chunk = stream[pos : pos + reader.wanted]
        result = reader.feed(chunk)
        pos, reads = pos + len(chunk), reads + 1
        if isinstance(result, ClientHello):
            break
    assert result.size == pos == len(data)
    assert reads == 2  # the record header, then the rest of the one record


def test_a_real_hello_in_one_byte_records_is_read_when_the_limit_allows(
    real: tuple[bytes, str | None, tuple[bytes, ...]],
) -> None:
    data, sni, alpn = real
    message = handshake_of(data)
    fragmented = records(message, [1] * len(message))
    limits = HelloLimits(max_records=len(message))
    assert read(fragmented, limits) == ClientHello(sni=sni, alpn=alpn, size=len(fragmented))
    error = refused(fragmented)  # default: 32 records
    assert isinstance(error, HelloTooLarge)
    assert str(error) == "a ClientHello in over 32 records"


def test_bytes_after_the_hello_are_left_to_the_caller(
    real: tuple[bytes, str | None, tuple[bytes, ...]],
) -> None:
    data, _, _ = real
    reader = HelloReader()
    result = reader.feed(data + b"\x14\x03\x03\x00\x01\x01")  # a compatibility CCS
    assert isinstance(result, ClientHello)
    assert result.size == len(data)
    assert reader.feed(b"anything") is result  # done: takes nothing more


# --- built hellos: what is read ------------------------------------------------------------


def test_a_hello_without_extensions_has_no_sni_and_no_alpn() -> None:
    data = records(hello_message(None, version=b"\x03\x01"))
    assert read(data) == ClientHello(sni=None, alpn=(), size=len(data))


def test_the_host_name_is_lower_cased_without_its_trailing_dot() -> None:
    data = records(hello_message([sni_extension(b"XN--BCHER-KVA.Example.ORG.")]))
    assert read(data).sni == "xn--bcher-kva.example.org"


@pytest.mark.parametrize("version", [b"\x03\x01", b"\x03\x02", b"\x03\x03", b"\x03\x04"])
def test_record_versions_tls_1_0_to_1_3_are_accepted(version: bytes) -> None:
    data = records(hello_message([sni_extension(b"a.b")]), version=version)
    assert read(data).sni == "a.b"


def test_a_hello_split_over_records_of_any_sizes() -> None:
    message = hello_message([sni_extension(b"split.example.org"), alpn_extension(b"h2")])
    data = records(message, [1, 3, 40, 2])
    assert read(data) == ClientHello(sni="split.example.org", alpn=(b"h2",), size=len(data))


def test_a_hello_over_16_kib_spans_two_records_and_needs_a_higher_limit() -> None:
    padding = (21, b"\x00" * 17000)  # RFC 7685 padding: what makes hellos this large
    message = hello_message([sni_extension(b"big.example.org"), padding])
    data = records(message, [16384])
    limits = HelloLimits(max_hello_bytes=32768)
    assert read(data, limits) == ClientHello(sni="big.example.org", alpn=(), size=len(data))
    error = refused(data)
    assert type(error) is HelloTooLarge
    assert str(error) == f"a ClientHello of {len(message)} bytes is over the limit of 16384"


@pytest.mark.parametrize("wrap", [bytes, bytearray, memoryview])
def test_any_bytes_like_object_may_be_fed(wrap: Callable[[bytes], bytes]) -> None:
    data = records(hello_message([sni_extension(b"a.b")]))
    reader = HelloReader()
    assert reader.feed(wrap(data[:10])) is NEED_MORE
    assert reader.feed(wrap(data[10:])) == ClientHello(sni="a.b", alpn=(), size=len(data))


def test_unknown_extensions_are_skipped() -> None:
    data = records(hello_message([(65281, b"\x00"), sni_extension(b"x.y"), (43, b"\x02\x03\x04")]))
    assert read(data).sni == "x.y"


# --- refusals ------------------------------------------------------------------------------

REFUSALS: list[tuple[str, bytes, type[HelloError], str]] = [
    ("http", b"GET / HTTP/1.1\r\n", NotTls, "first byte 0x47 does not begin a TLS record"),
    ("ssh", b"SSH-2.0-OpenSSH_9.2\r\n", NotTls, "first byte 0x53 does not begin a TLS record"),
    (
        "sslv2",
        b"\x80\x2e\x01\x00\x02\x00\x15\x00\x00\x00\x10",
        UnsupportedHello,
        "an SSLv2-compatible ClientHello is not supported",
    ),
    ("ssl3 record", b"\x16\x03\x00\x00\x30", UnsupportedHello, "SSL 3.0 is not supported"),
    ("record version 2", b"\x16\x02\x00", NotTls, "record version 2.x is not TLS"),
    ("record version 3.5", b"\x16\x03\x05", MalformedHello, "unknown record version 3.5"),
    (
        "alert",
        b"\x15\x03\x03\x00\x02\x02\x28",
        NotClientHello,
        "a TLS alert record, not a handshake",
    ),
    (
        "server hello",
        b"\x16\x03\x03\x00\x30\x02",
        NotClientHello,
        "handshake message type 2, not a ClientHello",
    ),
    (
        "empty record",
        b"\x16\x03\x01\x00\x00",
        MalformedHello,
        "an empty handshake record (RFC 8446 5.1)",
    ),
    (
        "long record",
        b"\x16\x03\x01\x40\x01",
        MalformedHello,
        "a record of 16385 bytes is over 2^14",
    ),
    (
        "16 MiB hello",
        b"\x16\x03\x01\x00\x04\x01\xff\xff\xff",
        HelloTooLarge,
        "a ClientHello of 16777219 bytes is over the limit of 16384",
    ),
    (
        "alert inside the hello",
        records(hello_message([]), [10])[:15] + b"\x15\x03\x03\x00\x02",
        MalformedHello,
        "a record of type alert inside the ClientHello",
    ),
    (
        "a second message in the record",
        records(hello_message(None, session_id=b"") + b"\x14"),
        MalformedHello,
        "bytes after the ClientHello in its record",
    ),
    (
        "a tiny body",
        records(b"\x01\x00\x00\x02\x03\x03"),
        MalformedHello,
        "a ClientHello body of 2 bytes is too short",
    ),
    (
        "version 3.0",
        records(hello_message(None, version=b"\x03\x00")),
        UnsupportedHello,
        "ClientHello version 3.0 is not TLS 1.0 or later",
    ),
    (
        "session id of 33",
        records(hello_message(None, session_id=b"\x00" * 33)),
        MalformedHello,
        "a session id over 32 bytes",
    ),
    (
        "odd cipher suites",
        records(hello_message(None, suites=b"\x13\x01\x13")),
        MalformedHello,
        "an odd length of cipher suites",
    ),
    (
        "no cipher suites",
        records(hello_message(None, suites=b"")),
        MalformedHello,
        "the cipher suites field has 0 bytes, fewer than 2",
    ),
    (
        "no compression",
        records(hello_message(None, compression=b"")),
        MalformedHello,
        "the compression methods field has 0 bytes, fewer than 1",
    ),
    (
        "session id past the end",
        records(message_of(b"\x03\x03" + b"\x42" * 32 + b"\xff" + b"\x00" * 10)),
        MalformedHello,
        "the session id field runs past the end of the ClientHello",
    ),
    (
        "extensions block too long",
        records(hello_message([])[:-2] + b"\x00\x09"),
        MalformedHello,
        "the extensions field runs past the end of the ClientHello",
    ),
    (
        "bytes after the extensions",
        records(message_of(hello_message([])[4:] + b"\x00")),
        MalformedHello,
        "1 stray byte after the ClientHello",
    ),
    (
        "an extension past the end",
        records(message_of(hello_message([])[4:-2] + b"\x00\x04\x00\x00\x00\x09")),
        MalformedHello,
        "the extension 0 field runs past the end of the extensions",
    ),
    (
        "duplicate extension",
        records(hello_message([(43, b"\x02\x03\x04"), (43, b"\x02\x03\x04")])),
        MalformedHello,
        "extension 43 sent twice (RFC 8446 4.2)",
    ),
    (
        "duplicate sni",
        records(hello_message([sni_extension(b"a.b"), sni_extension(b"a.b")])),
        MalformedHello,
        "extension 0 sent twice (RFC 8446 4.2)",
    ),
    (
        "two host names",
        records(hello_message([(0, vector(2, (b"\x00" + vector(2, b"a.b")) * 2))])),
        MalformedHello,
        "6 stray bytes after the server name list",
    ),
    (
        "server name type 1",
        records(hello_message([(0, vector(2, b"\x01" + vector(2, b"a.b")))])),
        BadServerName,
        "server name type 1 is not host_name",
    ),
    (
        "empty server name list",
        records(hello_message([(0, b"\x00\x00")])),
        MalformedHello,
        "the server name list field has 0 bytes, fewer than 1",
    ),
    (
        "empty host name",
        records(hello_message([sni_extension(b"")])),
        MalformedHello,
        "the host name field has 0 bytes, fewer than 1",
    ),
    (
        "server name list longer than its extension",
        records(hello_message([(0, b"\x00\x09\x00\x00\x01a")])),
        MalformedHello,
        "the server name list field runs past the end of the server_name extension",
    ),
    (
        "empty alpn list",
        records(hello_message([(16, b"\x00\x00")])),
        MalformedHello,
        "the protocol name list field has 0 bytes, fewer than 2",
    ),
    (
        "empty alpn name",
        records(hello_message([alpn_extension(b"h2", b"")])),
        MalformedHello,
        "the protocol name field has 0 bytes, fewer than 1",
    ),
    (
        "alpn name past its list",
        records(hello_message([(16, b"\x00\x03\x05h2")])),
        MalformedHello,
        "the protocol name field runs past the end of the protocol name list",
    ),
    (
        "alpn bytes after its list",
        records(hello_message([(16, b"\x00\x03\x02h2x")])),
        MalformedHello,
        "1 stray byte after the ALPN extension",
    ),
]


@pytest.mark.parametrize(
    ("data", "kind", "message"), [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS]
)
def test_a_refusal_names_its_reason(data: bytes, kind: type[HelloError], message: str) -> None:
    error = refused(data)
    assert type(error) is kind
    assert str(error) == message


@pytest.mark.parametrize(
    ("data", "kind", "message"), [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS]
)
def test_a_refusal_comes_the_same_byte_by_byte(
    data: bytes, kind: type[HelloError], message: str
) -> None:
    reader = HelloReader()

    def byte_by_byte() -> None:
        for i in range(len(data)):
            reader.feed(data[i : i + 1])

    with pytest.raises(HelloError) as caught:
        byte_by_byte()
    assert type(caught.value) is kind
    assert str(caught.value) == message
    with pytest.raises(kind):  # and stays refused
        reader.feed(b"\x16")


def test_a_hello_is_refused_as_soon_as_its_length_is_over_the_limit() -> None:
    limits = HelloLimits(max_hello_bytes=100)
    message = hello_message([sni_extension(b"a" * 63 + b".example.org")])
    reader = HelloReader(limits)
    with pytest.raises(HelloTooLarge, match=f"of {len(message)} bytes is over the limit of 100"):
        reader.feed(records(message)[:9])  # record header and handshake header
    assert reader.taken == 9


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"caf\xc3\xa9.example", "a server name that is not ASCII (IDNA names use A-labels)"),
        (b"my_app.example.org", "server name 'my_app.example.org' is not a host name"),
        (b"a..b", "server name 'a..b' is not a host name"),
        (b".", "server name '' is not a host name"),
        (b"-a.b", "server name '-a.b' is not a host name"),
        (b"a b", "server name 'a b' is not a host name"),
        (b"a.b\x00.evil", "server name 'a.b\\x00.evil' is not a host name"),
        (b"[::1]", "server name '[::1]' is not a host name"),
        (b"127.0.0.1", "server name '127.0.0.1' is an IP address, not a host name"),
        (b"a" * 64 + b".b", f"server name '{'a' * 64}...' is not a host name"),
        (
            (b"a" * 63 + b".") * 3 + b"b" * 62,
            f"server name '{'a' * 63}....' is not a host name",
        ),
    ],
)
def test_a_server_name_that_is_no_host_name_is_refused(raw: bytes, reason: str) -> None:
    with pytest.raises(BadServerName) as caught:
        host_name(raw)
    assert str(caught.value) == reason
    error = refused(records(hello_message([sni_extension(raw)])))
    assert type(error) is BadServerName
    assert str(error) == reason


def test_the_longest_host_name_is_accepted() -> None:
    name = (b"a" * 63 + b".") * 3 + b"b" * 61  # 253 characters
    assert read(records(hello_message([sni_extension(name)]))).sni == name.decode()


def test_errors_are_value_errors_of_one_tree() -> None:
    assert issubclass(HelloError, ValueError)
    assert issubclass(BadServerName, MalformedHello)


def test_the_limits_bound_the_bytes_a_caller_keeps() -> None:
    assert HelloLimits().max_stream_bytes == 16384 + 5 * 32
    assert HelloLimits(max_hello_bytes=1000, max_records=2).max_stream_bytes == 1010


# --- properties ----------------------------------------------------------------------------

_LIMITS = HelloLimits(max_hello_bytes=2048, max_records=8)


def _feed_in_pieces(data: bytes, cuts: list[int], limits: HelloLimits) -> ClientHello | None:
    """Feed ``data`` cut at ``cuts``; the hello, or None if it still wants more."""
    reader, pos = HelloReader(limits), 0
    for cut in [*sorted(cuts), len(data)]:
        try:
            result = reader.feed(data[pos:cut])
        except HelloError:
            assert reader.taken <= limits.max_stream_bytes
            return None
        pos = max(pos, cut)
        assert reader.taken <= limits.max_stream_bytes
        if isinstance(result, ClientHello):
            assert result.size <= len(data)
            return result
    assert reader.wanted > 0
    return None


@settings(max_examples=400, deadline=None)
@given(data=st.binary(max_size=3000), cuts=st.lists(st.integers(0, 3000), max_size=6))
def test_random_bytes_raise_only_hello_errors(data: bytes, cuts: list[int]) -> None:
    _feed_in_pieces(data, cuts, _LIMITS)


@settings(max_examples=400, deadline=None)
@given(
    body=st.binary(max_size=3000),
    length=st.integers(0, 2**14 + 10),
    cuts=st.lists(st.integers(0, 3000), max_size=6),
)
def test_random_bodies_behind_a_valid_header_raise_only_hello_errors(
    body: bytes, length: int, cuts: list[int]
) -> None:
    data = b"\x16\x03\x01" + min(length, 0xFFFF).to_bytes(2, "big") + b"\x01" + body
    _feed_in_pieces(data, cuts, _LIMITS)


@st.composite
def mutated_real_hellos(draw: st.DrawFn) -> bytes:
    data = bytearray(real_bytes(draw(st.sampled_from(sorted(REAL)))))
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, len(data) - 1))
        match draw(st.sampled_from(["flip", "set", "delete", "insert"])):
            case "flip":
                data[pos] ^= 1 << draw(st.integers(0, 7))
            case "set":
                data[pos] = draw(st.integers(0, 255))
            case "delete":
                del data[pos : pos + draw(st.integers(1, 8))]
            case _:
                data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
    return bytes(data)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=mutated_real_hellos(), cuts=st.lists(st.integers(0, 600), max_size=4))
def test_mutated_real_hellos_raise_only_hello_errors(data: bytes, cuts: list[int]) -> None:
    result = _feed_in_pieces(data, cuts, HelloLimits())
    if result is not None and result.sni is not None:
        assert host_name(result.sni.encode()) == result.sni


_LABELS = st.from_regex(r"[a-zA-Z0-9]([a-zA-Z0-9-]{0,20}[a-zA-Z0-9])?", fullmatch=True)
_HOSTS = (
    st.lists(_LABELS, min_size=1, max_size=5)
    .map(".".join)
    .filter(lambda h: not h.rpartition(".")[2].isdigit())
)
_OTHER_EXTENSIONS = st.dictionaries(
    st.integers(1, 65535).filter(lambda k: k != 16), st.binary(max_size=40), max_size=6
)


@settings(max_examples=300, deadline=None)
@given(
    sni=st.none() | _HOSTS,
    alpn=st.lists(st.binary(min_size=1, max_size=20), max_size=6),
    others=_OTHER_EXTENSIONS,
    session_id=st.binary(max_size=32),
    sizes=st.lists(st.integers(1, 200), max_size=6),
    cuts=st.lists(st.integers(0, 2000), max_size=6),
    data=st.data(),
)
def test_generated_hellos_round_trip(
    sni: str | None,
    alpn: list[bytes],
    others: dict[int, bytes],
    session_id: bytes,
    sizes: list[int],
    cuts: list[int],
    data: st.DataObject,
) -> None:
    extensions = list(others.items())
    if sni is not None:
        extensions.append(sni_extension(sni.encode()))
    if alpn:
        extensions.append(alpn_extension(*alpn))
    extensions = data.draw(st.permutations(extensions))
    message = hello_message(extensions, session_id=session_id)
    stream = records(message, sizes)
    limits = HelloLimits(max_records=len(sizes) + 1)
    result = _feed_in_pieces(stream, cuts, limits)
    assert result == ClientHello(
        sni=sni.lower() if sni else None, alpn=tuple(alpn), size=len(stream)
    )
