"""``drop_needless_ignores``: no empty SSH_MSG_IGNORE per packet, unless the cipher is CBC.

A real asyncssh server and client over loopback in one process (``asyncio.run``;
the suite's async tests run under trio), with the wrapper installed, run one
command; asyncssh's packet log (debug level 3, a public switch) says which
packets were sent.
"""

from __future__ import annotations

import logging

import asyncssh
import pytest

from hostmux.tunnel.ssh_ignore import drop_needless_ignores

from .asyncio_bounded import run

TEST_DEADLINE_S = 20.0


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


async def _echo(process: asyncssh.SSHServerProcess[str]) -> None:
    process.stdout.write(await process.stdin.read(100))
    process.exit(0)


class _Anyone(asyncssh.SSHServer):
    def begin_auth(self, username: str) -> bool:
        return False  # no authentication: this test is about the packets after it


async def _sent_packets(cipher: str) -> tuple[str, list[str]]:
    """The command's output and the names of the packets both ends sent for it."""
    key = asyncssh.generate_private_key("ssh-ed25519")
    server = await asyncssh.listen(
        "127.0.0.1", 0, server_host_keys=[key], process_factory=_echo,
        server_factory=_Anyone, encryption_algs=[cipher],
    )  # fmt: skip
    lines, log = _Lines(), logging.getLogger("asyncssh")
    level = log.level
    try:
        port = server.sockets[0].getsockname()[1]
        async with asyncssh.connect(
            "127.0.0.1", port, known_hosts=None, encryption_algs=[cipher], username="t"
        ) as conn:
            log.addHandler(lines)
            log.setLevel(logging.DEBUG)
            asyncssh.set_debug_level(3)
            result = await conn.run(input="hello")
    finally:
        asyncssh.set_debug_level(1)
        log.setLevel(level)
        log.removeHandler(lines)
        server.close()
    sent = [line.split("] Sent ")[1].split(" ")[0] for line in lines.lines if "] Sent " in line]
    return str(result.stdout), sent


def _run(cipher: str) -> tuple[str, list[str]]:
    drop_needless_ignores()
    drop_needless_ignores()  # idempotent: a second call wraps nothing again
    return run(_sent_packets(cipher), TEST_DEADLINE_S)


@pytest.mark.parametrize("cipher", ["aes128-gcm@openssh.com", "chacha20-poly1305@openssh.com"])
def test_no_ignore_packets_with_an_aead_cipher(cipher: str) -> None:
    output, sent = _run(cipher)
    assert output == "hello"
    assert "MSG_CHANNEL_DATA" in sent  # the log did see the packets
    assert "MSG_IGNORE" not in sent


def test_cbc_keeps_its_ignore_packets() -> None:
    output, sent = _run("aes128-cbc")
    assert output == "hello"
    # one in front of every packet after key exchange, as asyncssh sends them
    assert sent.count("MSG_IGNORE") == len(sent) // 2 > 0
