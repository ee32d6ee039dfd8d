"""Certificates and the job's lifetime: their validity, read from a real asyncssh server."""

from __future__ import annotations

import asyncio
import datetime
from pathlib import Path
from typing import Any

import asyncssh
import pytest

import keys
from router.ssh.auth import CERTIFICATE_CHECK, unwatch_certificates, watch_certificates
from router.tunnels import CERTIFICATE_EXPIRED


def _sign(ca: keys.SshCertificateAuthority, public_line: str, valid_for_s: int) -> str:
    now = datetime.datetime.now(datetime.UTC)
    return ca.sign_user_key(
        public_line, principals=["job-1"], key_id="portal:job-1",
        valid_after=now - datetime.timedelta(seconds=60),
        valid_before=now + datetime.timedelta(seconds=valid_for_s),
    )  # fmt: skip


def test_certificate_validity_reads_the_window_and_forever() -> None:
    ca = keys.SshCertificateAuthority.generate()
    key = keys.InstanceKey.generate("ed25519")
    line = _sign(ca, key.public_openssh(), 30)
    validity = keys.certificate_validity(line)
    assert validity.principals == ("job-1",)
    assert validity.key_id == "portal:job-1"
    assert validity.valid_before is not None
    assert validity.valid_before - validity.valid_after == 90
    assert validity.renew_at(2 / 3) == validity.valid_after + 60
    # OpenSSH's "forever" (no -V end): no valid_before, nothing to renew.
    cert: Any = asyncssh.import_private_key(key.private_pkcs8_pem()).generate_user_certificate(
        asyncssh.generate_private_key("ssh-ed25519"), "forever", principals=["job-1"]
    )
    forever = keys.certificate_validity(cert.export_certificate())
    assert forever.valid_before is None
    assert forever.renew_at(2 / 3) is None
    for bad in ("", "garbage", key.public_openssh()):
        with pytest.raises(keys.KeysError):
            keys.certificate_validity(bad)


def test_this_asyncssh_has_the_certificate_check_the_router_wraps() -> None:
    """If a later asyncssh renames it, certificates are refused (no unbounded tunnels):
    this test says so first."""
    assert callable(getattr(asyncssh.SSHServerConnection, CERTIFICATE_CHECK, None))


def test_without_the_check_nothing_is_watched() -> None:
    assert watch_certificates(object(), lambda _: None) is False


def test_a_real_login_with_a_certificate_reports_its_validity(tmp_path: Path) -> None:
    """A real asyncssh server and client: the certificate asyncssh accepted is reported."""

    async def scenario() -> keys.CertificateValidity | None:
        ca = keys.SshCertificateAuthority.generate()
        ca_key = asyncssh.import_public_key(ca.public_line)
        user_key = asyncssh.generate_private_key("ssh-ed25519")
        line = _sign(ca, user_key.export_public_key().decode().strip(), 30)
        seen: list[keys.CertificateValidity] = []
        conns: list[asyncssh.SSHServerConnection] = []
        unwatched: list[bool] = []

        class Server(asyncssh.SSHServer):
            def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
                assert watch_certificates(conn, seen.append)
                conns.append(conn)

            def begin_auth(self, username: str) -> bool:
                return True

            def public_key_auth_supported(self) -> bool:
                return True

            def validate_ca_key(self, username: str, key: asyncssh.SSHKey) -> bool:
                return key.public_data == ca_key.public_data

            def auth_completed(self) -> None:
                assert conns
                unwatch_certificates(conns[-1])
                unwatched.append(CERTIFICATE_CHECK not in vars(conns[-1]))

        host_key = asyncssh.generate_private_key("ssh-ed25519")
        server = await asyncssh.listen(
            "127.0.0.1", 0, server_host_keys=[host_key], server_factory=Server
        )
        try:
            certificate = asyncssh.import_certificate(line)
            async with asyncssh.connect(
                "127.0.0.1", server.get_port(), username="job-1", known_hosts=None,
                client_keys=[(user_key, certificate)], agent_path=None,
            ):  # fmt: skip
                pass
        finally:
            server.close()
            await server.wait_closed()
        assert unwatched == [True]  # asyncssh's own method again once the client is in
        return seen[-1] if seen else None

    validity = asyncio.run(scenario())
    assert validity is not None
    assert validity.key_id == "portal:job-1"
    assert validity.valid_before is not None


def test_the_reason_is_the_contract_word() -> None:
    assert CERTIFICATE_EXPIRED == "certificate_expired"  # docs/deploy.md names it
