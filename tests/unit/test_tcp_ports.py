"""TCP tunnels' pure parts and their port book-keeping, on real loopback sockets."""

from __future__ import annotations

import ipaddress
import socket
import struct
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest

from hostmux.config.show import config_toml
from hostmux.limits import ConnectionCounts
from hostmux.names import InvalidName, check_name
from hostmux.relay import ByteStream, UpstreamUnavailable
from router.config import ConfigError, RouterConfig, load_config
from router.routing import RouteTable
from router.tcp_ports import (
    PortRefused,
    TcpPorts,
    TcpSettings,
    parse_port_range,
    parse_port_rules,
    port_of,
    proxy_v2_header,
    source_allowed,
)
from router.tunnels import Tunnel

from .asyncio_bounded import run


def test_port_ranges_parse_or_say_what_is_wrong() -> None:
    assert parse_port_range("") is None
    assert parse_port_range("20000-20999") == range(20000, 21000)
    assert parse_port_range(" 20000 ") == range(20000, 20001)
    for bad in ("20999-20000", "0-10", "1-65536", "a-b", "20000-", "-5"):
        with pytest.raises(ValueError, match="FIRST"):
            parse_port_range(bad)


def test_config_checks_the_tcp_options() -> None:
    assert RouterConfig(tcp_port_range="20000-20010").tcp_listen_address == "127.0.0.1"
    assert RouterConfig(tcp_listen_host="0.0.0.0").tcp_listen_address == "0.0.0.0"
    with pytest.raises(ValueError, match="tcp_port_range"):
        RouterConfig(tcp_port_range="30-20")
    with pytest.raises(ValueError, match="tcp_listen_host"):
        RouterConfig(tcp_listen_host="example.org")
    # Workers share the range (SO_REUSEPORT in each, relaying over their link).
    assert RouterConfig(tcp_port_range="20000-20010", workers=2, registry="redis://127.0.0.1:1/0")


def test_tcp_is_a_reserved_name() -> None:
    with pytest.raises(InvalidName, match="reserved"):
        check_name("tcp")
    assert port_of("tcp:20001") == 20001
    assert port_of("myapp") is None


def test_proxy_v2_header_follows_the_spec() -> None:
    header = proxy_v2_header(("192.0.2.1", 51000), ("203.0.113.7", 20001))
    assert header[:12] == b"\r\n\r\n\x00\r\nQUIT\n"
    assert header[12:16] == bytes([0x21, 0x11, 0, 12])
    src, dst, sport, dport = struct.unpack("!4s4sHH", header[16:])
    assert (socket.inet_ntoa(src), sport, socket.inet_ntoa(dst), dport) == (
        "192.0.2.1", 51000, "203.0.113.7", 20001,
    )  # fmt: skip
    v6 = proxy_v2_header(("2001:db8::1", 1), ("2001:db8::2", 2))
    assert v6[12:16] == bytes([0x21, 0x21, 0, 36])
    assert ipaddress.IPv6Address(v6[16:32]) == ipaddress.IPv6Address("2001:db8::1")
    mapped = proxy_v2_header(("::ffff:192.0.2.1", 1), ("192.0.2.9", 2))
    assert mapped[13] == 0x11  # an IPv4-mapped client is an IPv4 client
    mixed = proxy_v2_header(("192.0.2.1", 1), ("2001:db8::2", 2))
    assert mixed[12:16] == bytes([0x20, 0x00, 0, 0])  # LOCAL, no addresses


def test_route_table_says_who_owns_what() -> None:
    now = [0.0]
    table: RouteTable[str] = RouteTable(reservation_s=10, clock=lambda: now[0])
    table.claim("tcp:1", "alice", "t1")
    table.claim("tcp:2", "bob", "t2")
    table.release("tcp:1", "t1")
    assert table.owner("tcp:1") == "alice"  # reserved
    assert table.owned_by("alice") == ["tcp:1"]
    now[0] = 11.0
    assert table.owner("tcp:1") is None
    assert table.owned_by("alice") == []


def _free_ports(count: int) -> range:
    for first in range(31000, 32000, count):
        socks = [socket.socket() for _ in range(count)]
        try:
            for offset, sock in enumerate(socks):
                sock.bind(("127.0.0.1", first + offset))
            return range(first, first + count)
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise AssertionError("no free loopback ports")


def _ports(ports: range, max_per_key: int = 4) -> TcpPorts:
    settings = TcpSettings(
        ports=ports, listen_host="127.0.0.1", max_per_key=max_per_key,
        idle_timeout_s=5, connect_timeout_s=5,
    )  # fmt: skip
    return TcpPorts(settings, ConnectionCounts(max_total=10, max_per_key=10), reservation_s=60)


def _maker(owner: str) -> Callable[[int], Tunnel]:
    async def never(ip: str, port: int) -> ByteStream:
        raise UpstreamUnavailable("the test's tunnel has no app")

    return lambda port: Tunnel(name=f"tcp:{port}", owner=owner, peer="p", open_stream=never)


def test_ports_are_owned_reserved_and_limited() -> None:
    ports = _free_ports(2)

    async def scenario() -> None:
        tcp = _ports(ports, max_per_key=1)
        try:
            first = await tcp.claim(0, _maker("alice"))
            port = port_of(first.name)
            assert port is not None and port in ports
            with pytest.raises(PortRefused, match="already holds 1 TCP ports"):
                await tcp.claim(0, _maker("alice"))
            with pytest.raises(PortRefused, match="in use by another key"):
                await tcp.claim(port, _maker("bob"))
            other = await tcp.claim(0, _maker("bob"))
            with pytest.raises(PortRefused, match="no free TCP port left"):
                await tcp.claim(0, _maker("carol"))
            with pytest.raises(PortRefused, match="outside"):
                await tcp.claim(ports.stop + 1, _maker("carol"))
            # The port listens while held, and stops when released (kept for alice).
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
            tcp.release(first)
            tcp.release(other)
            with pytest.raises(PortRefused, match="in use by another key"):
                await tcp.claim(port, _maker("bob"))
            again = await tcp.claim(0, _maker("alice"))
            assert again.name == first.name
        finally:
            await tcp.aclose()

    run(scenario())


def test_no_range_means_off() -> None:
    async def scenario() -> None:
        tcp = _ports(range(0))
        tcp.settings.ports = None
        with pytest.raises(PortRefused, match="off"):
            await tcp.claim(0, _maker("alice"))

    run(scenario())


def test_listener_tcp_option() -> None:
    from listener._config import ListenerConfig

    config = ListenerConfig(tcp="0")
    assert (config.forward_name, config.check_url) == ("tcp:0", False)
    assert ListenerConfig(tcp="20001").forward_name == "tcp:20001"
    assert ListenerConfig(name="myapp").forward_name == "myapp"
    with pytest.raises(ValueError, match="not a port"):
        ListenerConfig(tcp="http")
    with pytest.raises(ValueError, match="do not go together"):
        ListenerConfig(tcp="0", name="myapp")


def test_port_rules_parse_check_and_decide() -> None:
    rules = parse_port_rules(
        [
            {"ports": "20000-20001", "allow_cidrs": ["10.0.0.0/8", "2001:db8::/32"]},
            {"ports": [20001], "allow_cidrs": ["192.0.2.7"]},
        ]
    )
    assert source_allowed(rules, 20000, "10.1.2.3")
    assert source_allowed(rules, 20000, "::ffff:10.1.2.3")  # a mapped IPv4 client
    assert source_allowed(rules, 20000, "2001:db8::5")
    assert not source_allowed(rules, 20000, "192.0.2.7")
    assert source_allowed(rules, 20001, "192.0.2.7")  # the rules of a port add up
    assert source_allowed(rules, 20002, "203.0.113.1")  # no rule: any source
    for bad, reason in (
        ({"ports": "1-2"}, "needs exactly ports and allow_cidrs"),
        ({"ports": "1-2", "allow_cidrs": [], "deny": []}, "unknown: deny"),
        ({"ports": 5, "allow_cidrs": []}, "ports is"),
        ({"ports": [0], "allow_cidrs": []}, "ports is"),
        ({"ports": "9-1", "allow_cidrs": []}, "FIRST"),
        ({"ports": "1-2", "allow_cidrs": "10.0.0.0/8"}, "allow_cidrs is a list"),
        ({"ports": "1-2", "allow_cidrs": ["10.0.0.0/33"]}, "allow_cidrs: "),
    ):
        with pytest.raises(ValueError, match=reason):
            parse_port_rules([bad])


def test_port_rules_come_from_toml_only(tmp_path: Path) -> None:
    config_file = tmp_path / "router.toml"
    config_file.write_text(
        'tcp_port_range = "20000-20009"\n'
        '[[tcp_port_rules]]\nports = "20000-20004"\nallow_cidrs = ["10.0.0.0/8"]\n'
    )
    config = load_config(["--config", str(config_file)], {})
    assert config.tcp_port_rules == [{"ports": "20000-20004", "allow_cidrs": ["10.0.0.0/8"]}]
    shown = tomllib.loads(config_toml(config))  # check-config prints it back as TOML
    assert shown["tcp_port_rules"] == config.tcp_port_rules
    with pytest.raises(SystemExit):
        load_config(["--tcp-port-rules", "x"], {})  # no flag
    env = {"HOSTMUX_TCP_PORT_RULES": "x"}
    assert load_config([], env).tcp_port_rules == []  # no variable either
    config_file.write_text('[[tcp_port_rules]]\nports = "20000"\nallow_cidrs = ["bad"]\n')
    with pytest.raises(ConfigError, match="tcp_port_rules #1: allow_cidrs"):
        load_config(["--config", str(config_file)], {})
    config_file.write_text('tcp_port_rules = "20000"\n')
    with pytest.raises(ConfigError, match="expected an array of tables"):
        load_config(["--config", str(config_file)], {})
