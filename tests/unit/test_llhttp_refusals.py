"""What llhttp refuses itself, so that ``hostmux.http1.checks`` need not check it again.

``checks.framing_refusal`` once re-checked Content-Length with
Transfer-Encoding and control characters in header values; llhttp refuses
both, and these tests show it for the httptools in use. They are pinned to
that version: on another one they fail loudly, and whoever upgrades reads
llhttp's changes and runs them again before moving the pin (if llhttp ever
lets one through, the re-check goes back into ``framing_refusal``).

The target length is no such case: llhttp has no limit of its own (the
parser's ``on_url`` callback counts it), and ``check_request`` keeps its
one comparison.
"""

from __future__ import annotations

import httptools
import pytest

from hostmux.http1 import Http1Connection, RemoteProtocolError, Role

# The httptools (and so llhttp) these refusals were shown for.
PINNED = "0.9"

# RFC 9110 5.5: control characters are invalid in a field value (HTAB is allowed).
CONTROLS = [c for c in range(0x20) if c != 0x09] + [0x7F]


class _Headers:
    """The least a parser's protocol needs: the headers it hands over."""

    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))


def _refuses(raw: bytes) -> bool:
    parser = httptools.HttpRequestParser(_Headers())
    try:
        parser.feed_data(raw)
    except httptools.HttpParserUpgrade:
        return False
    except httptools.HttpParserError:
        return True
    return False


def test_the_pinned_httptools_is_the_one_in_use() -> None:
    major_minor = ".".join(httptools.__version__.split(".")[:2])
    assert major_minor == PINNED, (
        f"httptools {httptools.__version__} is not the {PINNED} these refusals were shown"
        " for: run this module against it and move PINNED (see the docstring)"
    )


@pytest.mark.parametrize("control", CONTROLS, ids=lambda c: f"0x{c:02x}")
@pytest.mark.parametrize("shape", [b"a%cb", b"%cb", b"a%c", b"%c"])
def test_llhttp_refuses_control_characters_in_a_header_value(control: int, shape: bytes) -> None:
    value = shape % control
    assert _refuses(b"GET / HTTP/1.1\r\nHost: a\r\nX-A: " + value + b"\r\n\r\n")


@pytest.mark.parametrize("control", CONTROLS, ids=lambda c: f"0x{c:02x}")
def test_a_control_character_split_across_reads_is_refused_too(control: int) -> None:
    conn = Http1Connection(Role.SERVER)
    conn.receive_data(b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a")
    conn.receive_data(bytes([control]) + b"b\r\n\r\n")
    with pytest.raises(RemoteProtocolError):
        conn.next_event()


def test_a_tab_in_a_header_value_is_accepted() -> None:
    assert not _refuses(b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\tb\r\n\r\n")


FRAMING = [
    b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
    b"Content-Length: 0\r\nTransfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: Chunked\r\nContent-Length: 0\r\n",
    b"Transfer-Encoding: gzip, chunked\r\nContent-Length: 5\r\n",
    b"Transfer-Encoding: identity\r\nContent-Length: 5\r\n",
    b"Connection: upgrade\r\nUpgrade: websocket\r\nContent-Length: 3\r\n"
    b"Transfer-Encoding: chunked\r\n",
]


@pytest.mark.parametrize("version", [b"1.1", b"1.0"])
@pytest.mark.parametrize("framing", FRAMING)
def test_llhttp_refuses_content_length_with_transfer_encoding(
    framing: bytes, version: bytes
) -> None:
    assert _refuses(b"POST / HTTP/" + version + b"\r\nHost: a\r\n" + framing + b"\r\n")
