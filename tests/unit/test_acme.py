"""The ACME pieces that need no CA: the state files, the TSIG key file, the HTTP-01
answers, the renewal time, the readiness status, the hook, and the failure back-off
(against a port where nothing answers). Pebble's tests are tests/integration/test_acme.py."""

from __future__ import annotations

import asyncio
import logging
import socket
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import keys
from hostmux.config.layered import ConfigError
from router.acme.challenges import HttpChallenges
from router.acme.dns import DnsUpdateError, HookDns, load_tsig_key
from router.acme.manager import RETRY_FIRST_S, AcmeManager, AcmeStatus, renew_at
from router.acme.store import AcmeStore, StoredCertificate
from router.tls import FrontDoorTls, load_certificates

from .asyncio_bounded import run

# What tsig-keygen -a hmac-sha256 prints (a made-up secret).
BIND_KEY = """key "hostmux-acme" {
\talgorithm hmac-sha256;
\tsecret "2ZzKVAeQb1hyxT3sa0JfZpZgR4Qeo1kN8nFxEj9d+0c=";
};
"""


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_account_key_is_made_once_and_private(tmp_path: Path) -> None:
    store = AcmeStore(tmp_path / "acme")
    store.prepare()
    key, created = store.account_key()
    again, created_again = store.account_key()
    assert created and not created_again
    assert key.private_numbers() == again.private_numbers()
    assert mode(tmp_path / "acme" / "account.key") == 0o600
    assert mode(tmp_path / "acme") == 0o700
    (tmp_path / "acme" / "account.key").write_text("not a key")
    with pytest.raises(ConfigError, match=r"account\.key: not a PEM private key"):
        store.account_key()


def test_the_account_is_remembered_per_directory(tmp_path: Path) -> None:
    store = AcmeStore(tmp_path)
    store.prepare()
    assert store.account_uri("https://ca/dir") is None
    store.save_account_uri("https://ca/dir", "https://ca/acct/1")
    assert store.account_uri("https://ca/dir") == "https://ca/acct/1"
    assert store.account_uri("https://other-ca/dir") is None  # registered again there
    assert mode(tmp_path / "account.json") == 0o600


def test_a_saved_certificate_reads_back_and_loads_like_tls_cert_dir(tmp_path: Path) -> None:
    ca, _ = keys.ensure_dev_tls(tmp_path / "ca", "example.org")
    keys.issue_leaf_certificate(
        ca.ca_cert, tmp_path / "ca" / "dev-ca-key.pem", ["example.org", "*.example.org"],
        tmp_path / "leaf.crt", tmp_path / "leaf.key",
    )  # fmt: skip
    store = AcmeStore(tmp_path / "acme")
    store.prepare()
    stored = store.save_certificate(
        "example.org", (tmp_path / "leaf.crt").read_bytes(), (tmp_path / "leaf.key").read_bytes()
    )
    assert stored.names == ("example.org", "*.example.org")
    assert mode(stored.cert_file) == mode(stored.key_file) == 0o600
    loaded = load_certificates(None, None, store.cert_dir)
    assert loaded.for_host("a.example.org") is not None and loaded.for_host("example.org")
    assert not list(store.cert_dir.glob("*.tmp"))


def test_the_tsig_key_file_is_binds_format(tmp_path: Path) -> None:
    path = tmp_path / "tsig.key"
    path.write_text("# made by tsig-keygen\n" + BIND_KEY)
    key = load_tsig_key(path)
    assert str(key.name) == "hostmux-acme." and str(key.algorithm) == "hmac-sha256."
    for text, message in [
        ("secret x;", "no key"),
        ('key "k" { algorithm hmac-sha256; };', "needs an algorithm and a secret"),
        ('key "k" { algorithm rot13; secret "AAAA"; };', "rot13 is not one of"),
        ('key "k" { algorithm hmac-sha256; secret "A"; };', "acme_dns_tsig_key_file"),
    ]:
        path.write_text(text)
        with pytest.raises(ConfigError, match=message):
            load_tsig_key(path)
    with pytest.raises(ConfigError, match="No such file"):
        load_tsig_key(tmp_path / "missing")


def test_http01_answers_only_pending_tokens_for_the_ordered_names() -> None:
    answers = HttpChallenges(frozenset({"example.org"}))
    answers.add("example.org", "tok", "tok.thumb")
    page = answers.page("example.org", b"/.well-known/acme-challenge/tok")
    assert page is not None and page.status == 200 and page.body == b"tok.thumb"
    unknown = answers.page("example.org", b"/.well-known/acme-challenge/other")
    assert unknown is not None and unknown.status == 404
    assert answers.page("app.example.org", b"/.well-known/acme-challenge/tok") is None
    assert answers.page("example.org", b"/index.html") is None
    answers.remove("example.org", "tok")
    gone = answers.page("example.org", b"/.well-known/acme-challenge/tok")
    assert gone is not None and gone.status == 404


def test_renewal_comes_at_two_thirds_less_a_fixed_jitter() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    cert = StoredCertificate(Path("c"), Path("k"), start, start + timedelta(days=90), ("a",))
    due = renew_at(cert)
    assert start + timedelta(days=57) <= due <= start + timedelta(days=60)
    assert renew_at(cert) == due  # the same for the same certificate
    later = StoredCertificate(Path("c"), Path("k"), start + timedelta(seconds=1),
                              start + timedelta(days=90, seconds=1), ("a",))  # fmt: skip
    assert renew_at(later) - timedelta(seconds=1) != due  # another certificate, another jitter


def test_status_says_what_readiness_needs() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    status = AcmeStatus(("example.org", "*.example.org"))
    assert status.problem(now) == "no ACME certificate for example.org yet (ordering)"
    status.not_after = now + timedelta(days=1)
    assert status.problem(now) is None and status.degraded() is None
    status.failures, status.last_error = 2, "DNS refused"
    assert status.problem(now) is None
    assert status.degraded() == "ACME renewal failing (2 tries): DNS refused"
    assert status.problem(now + timedelta(days=2)) is not None  # expired: not ready


def test_the_hook_is_run_with_its_arguments_and_its_failure_said(tmp_path: Path) -> None:
    said = tmp_path / "said"
    script = tmp_path / "hook"
    script.write_text(
        f'#!/bin/sh\necho "$@" >> {said}\n[ "$3" = add ] || {{ echo nope; exit 3; }}\n'
    )
    script.chmod(0o700)
    hook = HookDns(f"{script} --zone example.org")
    run(hook.add("_acme-challenge.example.org", "VALUE"))
    with pytest.raises(DnsUpdateError, match="exit status 3: nope"):
        run(hook.remove("_acme-challenge.example.org", "VALUE"))
    assert said.read_text().splitlines() == [
        "--zone example.org add _acme-challenge.example.org VALUE",
        "--zone example.org remove _acme-challenge.example.org VALUE",
    ]
    with pytest.raises(DnsUpdateError, match="No such file"):
        run(HookDns(str(tmp_path / "missing")).add("x", "y"))


def test_a_failed_order_is_logged_and_retried_after_a_back_off(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as closed:  # a port where nothing listens
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    ca, _ = keys.ensure_dev_tls(tmp_path / "tls", "example.org")
    front = FrontDoorTls(load_certificates(ca.cert, ca.key, None), None)
    store = AcmeStore(tmp_path / "acme")
    store.prepare()
    manager = AcmeManager(
        directory_url=f"http://127.0.0.1:{port}/dir", email="", challenge="http-01",
        domain="example.org", store=store, tls=front, http=HttpChallenges(frozenset()),
    )  # fmt: skip
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        if len(slept) == 2:
            raise asyncio.CancelledError

    with (
        caplog.at_level(logging.WARNING, logger="hostmux.acme"),
        pytest.raises(asyncio.CancelledError),
    ):
        run(manager.run(sleep))
    assert manager.status.failures == 2
    assert "All connection attempts failed" in (manager.status.last_error or "")
    assert RETRY_FIRST_S * 0.75 <= slept[0] <= RETRY_FIRST_S  # then doubled
    assert RETRY_FIRST_S * 1.5 <= slept[1] <= RETRY_FIRST_S * 2
    failed = [r.getMessage() for r in caplog.records if "event=acme_failed" in r.getMessage()]
    assert len(failed) == 2 and 'serving="no ACME certificate"' in failed[0]
    assert "retry_in_s=" in failed[0]
