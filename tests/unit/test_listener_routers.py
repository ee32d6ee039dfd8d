"""The listener's HA choices (``listener._routers``): addresses, how many, which, same router."""

from __future__ import annotations

import pytest

from listener._config import ConfigError, load_config
from listener._routers import (
    RouterAddress,
    RouterHolds,
    expand_addresses,
    preference_order,
    router_identity,
    wanted_connections,
)


def test_each_dns_address_is_dialled_and_checked_as_the_name() -> None:
    found = expand_addresses(
        ["edge.example:2222", "10.0.0.9:22"],
        {"edge.example": ["192.0.2.1", "2001:db8::1"]},
    )
    assert found == [
        RouterAddress(host="edge.example", port=2222, dial="192.0.2.1"),
        RouterAddress(host="edge.example", port=2222, dial="2001:db8::1"),
        RouterAddress(host="10.0.0.9", port=22, dial="10.0.0.9"),
    ]
    assert str(found[0]) == "edge.example:2222@192.0.2.1"
    assert str(found[2]) == "10.0.0.9:22"


def test_duplicates_collapse_and_an_unresolved_name_is_dialled_by_name() -> None:
    found = expand_addresses(
        ["a.example:22", "b.example:22", "a.example:22", "c.example:22"],
        {"a.example": ["192.0.2.1"], "b.example": ["192.0.2.1"], "c.example": []},
    )
    assert [str(a) for a in found] == ["a.example:22@192.0.2.1", "c.example:22"]


@pytest.mark.parametrize(
    ("setting", "addresses", "wanted"),
    [(0, 1, 1), (0, 2, 2), (0, 5, 2), (1, 5, 1), (3, 1, 3), (2, 0, 2)],
)
def test_how_many_connections(setting: int, addresses: int, wanted: int) -> None:
    assert wanted_connections(setting, addresses) == wanted


def test_each_connection_tries_routers_no_other_one_uses_first() -> None:
    a, b, c = (RouterAddress(host=h, port=22, dial=h) for h in ("a", "b", "c"))
    assert preference_order([a, b, c], set(), 0) == [a, b, c]
    assert preference_order([a, b, c], set(), 1) == [b, c, a]
    assert preference_order([a, b, c], {b}, 1) == [c, a, b]
    assert preference_order([a], {a}, 1) == [a]  # one address: still tried (a balancer)
    assert preference_order([], set(), 0) == []


def test_a_router_is_known_by_its_id_else_by_the_address_dialled() -> None:
    a = RouterAddress(host="edge", port=22, dial="192.0.2.1")
    b = RouterAddress(host="edge", port=22, dial="192.0.2.2")
    assert router_identity("r1", a) == router_identity("r1", b)  # workers behind one port
    assert router_identity(None, a) != router_identity(None, b)
    assert router_identity("192.0.2.1:22", a) != router_identity(None, a)


def test_one_connection_per_router() -> None:
    holds = RouterHolds()
    assert holds.take(0, "id:a") is None
    assert holds.take(1, "id:a") == 0  # landed where connection 0 is: redial
    assert holds.take(1, "id:b") is None
    assert holds.take(0, "id:a") is None  # its own, again
    holds.drop(0)
    assert holds.take(1, "id:a") is None  # free once 0 went; 1 moves to it
    assert holds.take(2, "id:b") is None  # 1 left b when it took a


def test_ha_connections_is_a_bounded_option() -> None:
    assert load_config(["--ha-connections", "3"], {}).ha_connections == 3
    assert load_config([], {}).ha_connections == 0
    with pytest.raises(ConfigError, match="ha-connections"):
        load_config(["--ha-connections", "9"], {})
    with pytest.raises(ConfigError, match="ha-connections"):
        load_config(["--ha-connections", "-1"], {})
