"""``ReaderWriterStream.must_drain``: wait only when something is left unsent.

The writers are small recording classes shaped like asyncio's ``StreamWriter``
(a ``transport``) and asyncssh's ``SSHWriter`` (a ``channel``).
"""

from __future__ import annotations

from router._streams import ReaderWriterStream


class Reader:
    async def read(self, n: int = -1) -> bytes:
        return b""


class Buffer:
    """What holds unsent bytes: an asyncio transport or an SSH channel."""

    def __init__(self) -> None:
        self.unsent = 0

    def get_write_buffer_size(self) -> int:
        return self.unsent


class Writer:
    """A writer with neither a transport nor a channel: always drains."""

    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default

    async def drain(self) -> None:
        return None

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        return None

    def close(self) -> None:
        return None

    def is_closing(self) -> bool:
        return False


class TcpWriter(Writer):
    def __init__(self) -> None:
        super().__init__()
        self.transport = Buffer()

    def get_extra_info(self, name: str, default: object = None) -> object:
        return self.transport if name == "transport" else default


class SshWriter(Writer):
    def __init__(self) -> None:
        super().__init__()
        self.channel = Buffer()


def test_tcp_and_ssh_writers_drain_only_with_bytes_unsent() -> None:
    for writer in (TcpWriter(), SshWriter()):
        stream = ReaderWriterStream(Reader(), writer, label="test")
        buffer = writer.transport if isinstance(writer, TcpWriter) else writer.channel
        assert stream.must_drain() is False
        buffer.unsent = 1
        assert stream.must_drain() is True


def test_a_writer_without_a_buffer_to_look_at_always_drains() -> None:
    stream = ReaderWriterStream(Reader(), Writer(), label="test")
    assert stream.must_drain() is True
