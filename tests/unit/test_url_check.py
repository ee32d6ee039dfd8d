"""The pure parts of the listener's URL self-check (``listener._url_check``), its option,
and the bounded read of the router's ``ca`` answer."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import httpx
import pytest

import keys
from listener._cli import main as listener_main
from listener._ssh_client import MAX_CA_BYTES, TunnelError, read_bounded
from listener._url_check import (
    CERTIFICATE_HINTS,
    FailureNotes,
    UrlProblem,
    problem_of,
    trust_for_check,
)

from .asyncio_bounded import run


def test_each_distinct_failure_is_noted_once() -> None:
    notes = FailureNotes()
    certificate = UrlProblem("certificate", "CERTIFICATE_VERIFY_FAILED")
    assert notes.is_new(certificate)
    assert not notes.is_new(certificate)
    assert not notes.is_new(UrlProblem("certificate", "CERTIFICATE_VERIFY_FAILED"))
    assert notes.is_new(UrlProblem("connect", "All connection attempts failed"))
    assert notes.is_new(UrlProblem("certificate", "another verify failure"))


def test_a_reason_that_keeps_changing_is_noted_a_bounded_number_of_times() -> None:
    notes = FailureNotes()
    noted = [notes.is_new(UrlProblem("timeout", f"after {n} ms")) for n in range(100)]
    assert noted.count(True) == 16
    assert noted[:16] == [True] * 16


def _raised_from(outer: BaseException, inner: BaseException) -> BaseException:
    """``outer`` as httpx raises it: with ``inner`` as its cause."""
    try:
        try:
            raise inner
        except BaseException as exc:
            raise outer from exc
    except BaseException as caught:
        return caught


def test_failures_are_sorted_into_kinds() -> None:
    verify = ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate ...")
    certificate = problem_of(_raised_from(httpx.ConnectError("verify failed"), verify))
    assert certificate == UrlProblem("certificate", "verify failed")
    handshake = problem_of(_raised_from(httpx.ConnectError("bad record"), ssl.SSLError(1, "x")))
    assert handshake.kind == "tls"
    assert problem_of(httpx.ConnectTimeout("timed out")).kind == "timeout"
    assert problem_of(httpx.ConnectError("All connection attempts failed")).kind == "connect"
    assert problem_of(httpx.RemoteProtocolError("bad")).kind == "http"
    assert problem_of(httpx.ConnectError("")).reason == "ConnectError"
    assert problem_of(ConnectionResetError(104, "reset")).kind == "connect"
    assert problem_of(AttributeError("'NoneType' ...")) == UrlProblem(
        "connect", "connection reset by the peer"
    )


def test_hints_say_what_to_change_for_the_trust_in_use() -> None:
    certificate = UrlProblem("certificate", "verify failed")
    assert "--router-ca-file" in certificate.hint("system")
    assert "pin its host key" in certificate.hint("system")
    assert certificate.hint("file") == CERTIFICATE_HINTS["file"]
    assert "hands out" in certificate.hint("router")
    assert "hairpin NAT" in UrlProblem("connect", "refused").hint("router")
    assert "egress" in UrlProblem("timeout", "slow").hint("file")


def test_trust_is_the_file_alone_else_the_system_plus_the_routers_ca(tmp_path: Path) -> None:
    files, _ = keys.ensure_dev_tls(tmp_path, "localhost")
    pem = files.ca_cert.read_text()
    system = trust_for_check(None, None)
    assert system.source == "system"
    router = trust_for_check(None, pem)
    assert router.source == "router"
    subjects = [str(c["subject"]).lower() for c in router.context.get_ca_certs()]
    assert any("hostmux" in subject for subject in subjects), subjects
    assert len(router.context.get_ca_certs()) == len(system.context.get_ca_certs()) + 1
    only_file = trust_for_check(files.ca_cert, None)
    assert only_file.source == "file"
    assert len(only_file.context.get_ca_certs()) == 1


def test_a_ca_answer_that_is_no_certificate_is_refused() -> None:
    with pytest.raises(ssl.SSLError):
        trust_for_check(None, "this is not a certificate\n")


def test_a_negative_url_check_wait_is_one_line_naming_the_option_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = tmp_path / "key"
    keys.write_keypair(keys.generate_keypair(comment="t"), key)
    status = listener_main(["--identity-file", str(key), "--url-check-max-wait-s", "-1"])
    assert status == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    assert "--url-check-max-wait-s" in lines[0]


def _reader(data: bytes, *, eof: bool) -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    if eof:
        reader.feed_eof()
    return reader


def test_the_routers_ca_answer_is_read_whole_up_to_64_kib() -> None:
    async def scenario() -> bytes:
        return await read_bounded(
            _reader(b"-----BEGIN CERTIFICATE-----\n" * 3, eof=True), MAX_CA_BYTES
        )

    assert run(scenario()) == b"-----BEGIN CERTIFICATE-----\n" * 3


def test_a_ca_answer_over_64_kib_is_refused_without_reading_on() -> None:
    async def scenario() -> tuple[str, int]:
        # No EOF: a router streaming for ever is cut off at the limit, not waited for.
        reader = _reader(b"x" * (MAX_CA_BYTES + 4096), eof=False)
        with pytest.raises(TunnelError) as refused:
            await read_bounded(reader, MAX_CA_BYTES)
        return str(refused.value), len(await reader.read(8192))

    message, left = run(scenario())
    assert f"over {MAX_CA_BYTES} bytes" in message
    assert left == 4096 - 1  # one byte past the limit was read, no more
