"""The listener's portal certificate: its option, when it is renewed, and the renewal request
against a real HTTP server (the portal's answers: refused, failing then renewed)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import http.server
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import keys
from listener._certificate import (
    CertificateError,
    Renewer,
    read_validity,
    renew,
    renew_time,
    write_certificate,
)
from listener._cli import main
from listener._config import ConfigError, load_config

from .asyncio_bounded import run

CA = keys.SshCertificateAuthority.generate()


def _certificate(key: keys.InstanceKey, valid_for_s: float, principal: str = "job-1") -> str:
    now = datetime.datetime.now(datetime.UTC)
    return CA.sign_user_key(
        key.public_openssh(), principals=[principal], key_id=f"portal:{principal}",
        valid_after=now - datetime.timedelta(seconds=60),
        valid_before=now + datetime.timedelta(seconds=valid_for_s),
    )  # fmt: skip


@pytest.fixture
def key() -> keys.InstanceKey:
    return keys.InstanceKey.generate("ed25519")


def test_renewal_comes_at_two_thirds_of_the_time_left(key: keys.InstanceKey) -> None:
    validity = keys.certificate_validity(_certificate(key, 90))
    assert validity.valid_before is not None
    now = validity.valid_before - 90.0
    assert renew_time(validity, now) == pytest.approx(now + 60.0)
    assert renew_time(validity, validity.valid_before + 5) == validity.valid_before + 5  # now


def test_the_file_is_replaced_whole_and_read_back(tmp_path: Path, key: keys.InstanceKey) -> None:
    path = tmp_path / "cert.pub"
    path.write_text("old\n")
    with pytest.raises(CertificateError, match="not an OpenSSH certificate"):
        read_validity(path)
    line = _certificate(key, 30)
    write_certificate(path, line)
    assert path.read_text() == line + "\n"
    assert read_validity(path).principals == ("job-1",)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cert.pub"]  # no temporary left
    with pytest.raises(CertificateError, match="cannot read"):
        read_validity(tmp_path / "missing.pub")


def test_the_renewal_url_defaults_to_the_portal_only_with_a_certificate(tmp_path: Path) -> None:
    cert = str(tmp_path / "c.pub")
    portal = ["--portal-url", "https://portal.t/", "--user", "i-1"]
    assert load_config(portal, {}).renewal_url == ""  # no certificate: nothing to renew
    with_cert = load_config([*portal, "--certificate-file", cert], {})
    assert with_cert.renewal_url == "https://portal.t/instances/i-1/certificate"
    explicit = ["--certificate-file", cert, "--certificate-url", "https://p.t/renew"]
    assert load_config(explicit, {}).renewal_url == "https://p.t/renew"
    assert load_config(["--certificate-file", cert], {}).renewal_url == ""
    with pytest.raises(ConfigError, match="certificate_url"):
        load_config(["--certificate-url", "ftp://p.t/renew"], {})


def test_an_unusable_certificate_file_is_one_line_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], key: keys.InstanceKey
) -> None:
    identity = tmp_path / "id"
    identity.write_bytes(key.private_pkcs8_pem())
    cert = tmp_path / "id.pub"
    cert.write_text(key.public_openssh() + "\n")  # a public key, not a certificate
    argv = ["--identity-file", str(identity), "--router", "127.0.0.1:1"]
    assert main([*argv, "--certificate-file", str(cert)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert "certificate_file: " in err and str(cert) in err and "not an OpenSSH certificate" in err


class _Portal(http.server.BaseHTTPRequestHandler):
    """Answers each POST with the next of ``answers`` and keeps what it was sent."""

    answers: list[tuple[int, bytes]] = []
    seen: list[tuple[str, dict[str, object]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        type(self).seen.append((self.headers["authorization"], json.loads(body)))
        status, answer = type(self).answers.pop(0)
        self.send_response(status)
        self.send_header("content-length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *_: object) -> None:
        pass


@contextlib.contextmanager
def _portal(answers: list[tuple[int, bytes]]) -> Iterator[str]:
    _Portal.answers, _Portal.seen = list(answers), []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Portal)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/instances/job-1/certificate"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _renew(path: Path, url: str, key: keys.InstanceKey) -> bool:
    async def scenario() -> bool:
        return await renew(path, url, key=key, issuer="job-1", kid=None, stop=asyncio.Event())

    return run(scenario())


def test_a_refusal_is_final_and_keeps_the_file(tmp_path: Path, key: keys.InstanceKey) -> None:
    path = tmp_path / "cert.pub"
    write_certificate(path, old := _certificate(key, 30))
    denied = json.dumps({"error": "renewal is not allowed for this instance"}).encode()
    with _portal([(403, denied)]) as url:
        assert _renew(path, url, key) is False
    assert path.read_text().strip() == old
    assert len(_Portal.seen) == 1  # asked once, not again


def test_a_failing_portal_is_retried_then_the_new_certificate_is_written(
    tmp_path: Path, key: keys.InstanceKey
) -> None:
    path = tmp_path / "cert.pub"
    write_certificate(path, _certificate(key, 30))
    new = _certificate(key, 600)
    answers = [
        (503, b"busy"),
        (200, json.dumps({"certificate": _certificate(key, 600, "someone-else")}).encode()),
        (200, json.dumps({"certificate": new}).encode()),
    ]
    with _portal(answers) as url:
        assert _renew(path, url, key) is True
    assert path.read_text().strip() == new
    assert len(_Portal.seen) == 3
    authorization, body = _Portal.seen[-1]
    assert body == {"public_key": key.public_openssh()}
    token = authorization.removeprefix("Bearer ")
    assert keys.verify_jwt(token, [key.public_jwk()], issuer="job-1")["iss"] == "job-1"


def test_an_expired_certificate_is_still_renewed_before_a_reconnect(
    tmp_path: Path, key: keys.InstanceKey
) -> None:
    """The portal authenticates the instance key, not the certificate: an expired one is
    renewed (``give_up_at`` in the future), where the default gives up at its expiry."""
    path = tmp_path / "cert.pub"
    write_certificate(path, _certificate(key, -5))
    new = _certificate(key, 600)
    with _portal([(200, json.dumps({"certificate": new}).encode())]) as url:
        assert _renew(path, url, key) is False  # by default: expired, nothing asked
        assert _Portal.seen == []

        async def scenario() -> bool:
            return await renew(
                path, url, key=key, issuer="job-1", kid=None, stop=asyncio.Event(),
                give_up_at=time.time() + 30,
            )  # fmt: skip

        assert run(scenario()) is True
    assert path.read_text().strip() == new


class _Renewals:
    """What a ``Renewer`` calls to renew: writes a certificate valid for ``valid_for_s``."""

    def __init__(self, path: Path, key: keys.InstanceKey, valid_for_s: float) -> None:
        self.path, self.key, self.valid_for_s = path, key, valid_for_s
        self.calls = 0

    async def __call__(self, give_up_at: float | None) -> bool:
        self.calls += 1
        await asyncio.sleep(0.05)  # a portal's answer takes a while: callers overlap
        write_certificate(self.path, _certificate(self.key, self.valid_for_s))
        return True


def test_connections_finding_an_expired_certificate_renew_it_once(
    tmp_path: Path, key: keys.InstanceKey
) -> None:
    path = tmp_path / "cert.pub"
    write_certificate(path, _certificate(key, -5))
    renewals = _Renewals(path, key, 600)

    async def scenario() -> int:
        renewer = Renewer(path, renewals, asyncio.Event())
        async with asyncio.TaskGroup() as tg:
            for _ in range(3):  # three HA connections reconnecting at once
                tg.create_task(renewer.renew_if_expired())
        return renewer.generation

    assert run(scenario()) == 1
    assert renewals.calls == 1


def test_one_renewal_per_certificate_wakes_every_connection(
    tmp_path: Path, key: keys.InstanceKey
) -> None:
    """``run`` renews at 2/3 of the time left; each renewal wakes every waiter once."""
    path = tmp_path / "cert.pub"
    write_certificate(path, _certificate(key, 1.5))
    renewals = _Renewals(path, key, 2.5)

    async def scenario() -> list[int]:
        stop = asyncio.Event()
        renewer = Renewer(path, renewals, stop)
        woken: list[int] = []

        async def connection() -> None:
            seen = 0
            while seen < 2 and await renewer.newer_than(seen):
                seen = renewer.generation
                woken.append(seen)

        async with asyncio.TaskGroup() as tg:
            running = tg.create_task(renewer.run())
            async with asyncio.TaskGroup() as connections:
                for _ in range(2):  # two HA connections
                    connections.create_task(connection())
            stop.set()
            await running
        return woken

    assert sorted(run(scenario())) == [1, 1, 2, 2]
    assert renewals.calls == 2
