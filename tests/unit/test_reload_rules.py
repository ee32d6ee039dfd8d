"""The pure parts of issue 19's operator tools: what a reload may change, check-config's
masked TOML, the JSON log line, the certificate directory's rules."""

from __future__ import annotations

import dataclasses
import json
import logging
import tomllib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import keys
from hostmux.config.layered import ConfigError
from hostmux.config.show import MASK, config_toml, mask_url
from hostmux.log import _JsonFormatter, fields, parse_fields
from router.config import RouterConfig
from router.reload import RELOADABLE, needs_restart
from router.tls import load_certificates


def test_listen_addresses_workers_and_registry_need_a_restart() -> None:
    old = RouterConfig()
    new = dataclasses.replace(
        old, https_listen=["127.0.0.1:9443"], workers=2, registry="redis://127.0.0.1:1/0",
        header_timeout_s=5.0, max_connections=10, tls_cert_dir=Path("/etc/certs"),
    )  # fmt: skip
    assert needs_restart(old, new) == ["https_listen", "registry", "workers"]


def test_client_cert_routes_reload_but_none_to_some_needs_a_restart() -> None:
    routes = [{"names": "lab-*", "ca_file": "/etc/lab-ca.pem"}]
    other = [{"names": ["lab-*", "ops"], "ca_file": "/etc/ops-ca.pem"}]
    with_routes = RouterConfig(client_cert_routes=routes)
    assert (
        needs_restart(with_routes, dataclasses.replace(with_routes, client_cert_routes=other)) == []
    )
    assert needs_restart(RouterConfig(), with_routes) == ["client_cert_routes"]
    assert needs_restart(with_routes, RouterConfig()) == ["client_cert_routes"]
    passthrough = dataclasses.replace(RouterConfig(), tls_passthrough=True)
    assert needs_restart(RouterConfig(), passthrough) == ["tls_passthrough"]


def test_reloadable_options_never_need_a_restart() -> None:
    old = RouterConfig(tls_cert_file=Path("/a.crt"), tls_key_file=Path("/a.key"))
    new = dataclasses.replace(
        old, tls_cert_file=Path("/b.crt"), tls_key_file=Path("/b.key"), log_level="debug",
        max_header_bytes=4096, authorized_keys_file=Path("/keys"),
    )  # fmt: skip
    assert needs_restart(old, new) == []
    assert {"tls_cert_file", "tls_cert_dir", "authorized_keys_file", "portal_ca_keys_file",
            "max_connections", "websocket_idle_timeout_s"} <= RELOADABLE  # fmt: skip


def test_from_the_development_ca_to_certificate_files_needs_a_restart() -> None:
    old = RouterConfig()
    new = dataclasses.replace(old, tls_cert_file=Path("/a.crt"), tls_key_file=Path("/a.key"))
    assert needs_restart(old, new) == ["tls_cert_file", "tls_key_file"]


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://user:pw@host:6379/0", f"redis://user:{MASK}@host:6379/0"),
        ("rediss://:pw@host/1", f"rediss://:{MASK}@host/1"),
        ("redis://host:6379/0", "redis://host:6379/0"),
        ("redis://user@host/0", "redis://user@host/0"),
        ("not a url @ all", "not a url @ all"),
    ],
)
def test_mask_url_hides_only_the_password(url: str, shown: str) -> None:
    assert mask_url(url) == shown


def test_config_toml_reads_back_as_the_same_config_but_its_secrets() -> None:
    config = RouterConfig(
        registry="redis://app:hunter2@127.0.0.1:6379/0", workers=2,
        events_url="https://portal.example/e", events_secret="s3cret",
        trusted_proxies=["10.0.0.0/8"], keep_cookie_domain=True,
    )  # fmt: skip
    text = config_toml(config)
    assert "hunter2" not in text and "s3cret" not in text
    values = tomllib.loads(text)
    assert values["events_secret"] == MASK
    assert values["registry"] == f"redis://app:{MASK}@127.0.0.1:6379/0"
    for name, value in values.items():
        if name not in ("events_secret", "registry"):
            expected = getattr(config, name)
            assert value == (str(expected) if isinstance(expected, Path) else expected), name
    assert "# tls_cert_file is not set" in text.splitlines()


_TEXT = st.text(st.characters(blacklist_categories=["Cs"]), max_size=40)


@given(values=st.dictionaries(st.from_regex(r"[a-z_]{1,12}", fullmatch=True), _TEXT))
def test_parse_fields_reads_back_what_fields_wrote(values: dict[str, str]) -> None:
    values.pop("event", None)
    assert parse_fields(fields("test", **values)) == {"event": "test", **values}


def test_a_json_line_has_the_logfmt_fields() -> None:
    record = logging.LogRecord(
        "hostmux.router", logging.WARNING, __file__, 1,
        fields("reload_kept", what="certificates", reason='tls_cert_file "x y": bad'),
        None, None,
    )  # fmt: skip
    line = json.loads(_JsonFormatter().format(record))
    assert list(line) == ["ts", "level", "event", "what", "reason"]
    assert line["level"] == "warning"
    assert line["reason"] == 'tls_cert_file "x y": bad'


def _pair(tmp_path: Path, name: str, *hosts: str) -> keys.TlsFiles:
    files, _ = keys.ensure_dev_tls(tmp_path / f"ca-{name}", "example.org")
    cert, key = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
    keys.issue_leaf_certificate(files.ca_cert, files.ca_cert.with_name("dev-ca-key.pem"),
                                list(hosts), cert, key)  # fmt: skip
    return keys.TlsFiles(cert, key, files.ca_cert)


def test_the_certificate_directory_serves_each_certificate_s_names(tmp_path: Path) -> None:
    directory = tmp_path / "dir"
    directory.mkdir()
    exact = _pair(tmp_path, "exact", "app.example.org")
    wild = _pair(tmp_path, "wild", "*.example.org")
    (directory / "app.crt").write_bytes(exact.cert.read_bytes())
    (directory / "app.key").write_bytes(exact.key.read_bytes())
    (directory / "wild.pem").write_bytes(wild.cert.read_bytes() + wild.key.read_bytes())
    (directory / ".hidden").write_text("skipped")
    certs = load_certificates(None, None, directory)
    assert certs.default is None
    assert set(certs.exact) == {"app.example.org"} and set(certs.wildcard) == {"example.org"}
    assert certs.for_host("app.example.org") is certs.exact["app.example.org"]
    assert certs.for_host("b.example.org") is certs.wildcard["example.org"]
    assert certs.for_host("a.b.example.org") is None
    assert certs.for_host("example.org") is None


@pytest.mark.parametrize("case", ["key without cert", "two for one name", "junk pem"])
def test_a_bad_certificate_directory_names_the_file(tmp_path: Path, case: str) -> None:
    directory = tmp_path / "dir"
    directory.mkdir()
    one = _pair(tmp_path, "one", "app.example.org")
    (directory / "a.crt").write_bytes(one.cert.read_bytes())
    (directory / "a.key").write_bytes(one.key.read_bytes())
    if case == "key without cert":
        (directory / "b.key").write_bytes(one.key.read_bytes())
        expected = f"tls_cert_dir {directory}/b.key: no b.crt beside it"
    elif case == "two for one name":
        (directory / "b.pem").write_bytes(one.cert.read_bytes() + one.key.read_bytes())
        expected = f"tls_cert_dir {directory}/b.pem: app.example.org is already served by a.crt"
    else:
        (directory / "b.pem").write_text("junk\n")
        expected = f"tls_cert_dir {directory}/b.pem: no PEM certificate in it"
    with pytest.raises(ConfigError) as raised:
        load_certificates(None, None, directory)
    assert str(raised.value) == expected


def _router_config(tmp_path: Path, **values: object) -> RouterConfig:
    defaults: dict[str, object] = {
        "state_dir": tmp_path / "state", "authorized_keys_file": tmp_path / "keys",
        "ssh_listen": ["127.0.0.1:0"], "https_listen": ["127.0.0.1:0"], "http_listen": [],
        "portal_keys_url": "http://127.0.0.1:9/instances/{id}/keys",
    }  # fmt: skip
    return RouterConfig(**{**defaults, **values})  # type: ignore[arg-type]


def test_reload_router_applies_the_limits_to_the_router_s_parts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from router.reload import reload_router
    from router.server import build_router

    router = build_router(_router_config(tmp_path))
    new = _router_config(
        tmp_path, max_connections=7, max_connections_per_ip=3, max_tunnels_per_key=2,
        max_ssh_connections_per_key=4, ssh_auth_failures_burst=5, header_timeout_s=1.5,
        portal_timeout_s=2.5, portal_cache_ttl_s=9.0, log_level="warning",
        ssh_listen=["127.0.0.1:1"],
    )  # fmt: skip
    previous_level = logging.getLogger().level
    with caplog.at_level(logging.INFO, logger="hostmux.router"):
        try:
            reload_router(router, lambda: new)
            assert logging.getLogger().level == logging.WARNING
        finally:
            logging.getLogger().setLevel(previous_level)
    assert (router.browsers.max_total, router.browsers.max_per_key) == (7, 3)
    assert router.ssh_limits.max_tunnels_per_owner == 2
    assert router.ssh_limits.connections.max_per_key == 4
    assert router.current_limits().header_timeout_s == 1.5
    assert router.config.portal_timeout_s == 2.5
    assert router.config.ssh_listen == ["127.0.0.1:0"]  # needs a restart: kept
    messages = [record.getMessage() for record in caplog.records]
    assert "event=reload_needs_restart options=ssh_listen" in messages


def test_a_config_that_does_not_load_changes_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from router.reload import reload_router
    from router.server import build_router

    router = build_router(_router_config(tmp_path))
    before = router.config

    def broken() -> RouterConfig:
        raise ConfigError("/etc/hostmux/router.toml: invalid TOML: line 1")

    reload_router(router, broken)
    assert router.config is before
    assert [r.getMessage() for r in caplog.records if "reload" in r.getMessage()] == [
        'event=reload_failed reason="/etc/hostmux/router.toml: invalid TOML: line 1" '
        'action="kept the running config"'
    ]


def test_the_portal_ca_keys_are_read_again_and_a_bad_file_keeps_them(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from router.reload import reload_router
    from router.server import build_router

    first, second = keys.generate_keypair(), keys.generate_keypair()
    cas = tmp_path / "portal_cas.pub"
    cas.write_text(first.public_openssh + "\n")
    config = _router_config(tmp_path, portal_ca_keys_file=cas)
    router = build_router(config)
    assert router.auth.ca_fingerprints == {first.fingerprint}

    cas.write_text(first.public_openssh + "\n" + second.public_openssh + "\n")
    reload_router(router, lambda: config)  # the same name, new contents
    assert router.auth.ca_fingerprints == {first.fingerprint, second.fingerprint}

    cas.write_text("ssh-ed25519 not-base64\n")
    reload_router(router, lambda: config)
    assert router.auth.ca_fingerprints == {first.fingerprint, second.fingerprint}
    kept = [r.getMessage() for r in caplog.records if "reload_kept" in r.getMessage()]
    assert len(kept) == 1
    assert kept[0].startswith(f'event=reload_kept what=portal_ca_keys reason="{cas}:1: ')
