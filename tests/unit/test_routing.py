"""The route table (``router.routing``): ownership, replacement and reservation.

Time is a ``FakeClock`` the tests move by hand, so the reservation window is
exact: a name is still reserved at ``reservation_s - epsilon`` and free at
``reservation_s``.
"""

from __future__ import annotations

import pytest

from router.routing import NameState, NameTaken, Offline, RouteTable

RESERVATION_S = 600.0


class FakeClock:
    """A monotonic clock that only moves when a test says so."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Tunnel:
    """Stands for a live tunnel: identity is all the table cares about."""

    def __init__(self, label: str) -> None:
        self.label = label

    def __repr__(self) -> str:
        return f"<Tunnel {self.label}>"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def table(clock: FakeClock) -> RouteTable[Tunnel]:
    return RouteTable(reservation_s=RESERVATION_S, clock=clock)


def test_unknown_name_is_free_and_looks_up_to_none(table: RouteTable[Tunnel]) -> None:
    assert table.state("myapp") is NameState.FREE
    assert table.lookup("myapp") is None
    assert list(table.held()) == []


def test_claim_makes_the_tunnel_serve_the_name(table: RouteTable[Tunnel]) -> None:
    tunnel = Tunnel("first")
    assert table.claim("myapp", "key-a", tunnel) is None
    assert table.state("myapp") is NameState.HELD
    assert table.lookup("myapp") is tunnel
    assert list(table.held()) == [("myapp", tunnel)]


def test_another_owner_cannot_claim_a_held_name(table: RouteTable[Tunnel]) -> None:
    first = Tunnel("first")
    table.claim("myapp", "key-a", first)
    with pytest.raises(NameTaken) as caught:
        table.claim("myapp", "key-b", Tunnel("intruder"))
    assert caught.value.args == ("myapp",)
    assert table.lookup("myapp") is first


def test_the_owner_replaces_its_own_tunnel_at_once(table: RouteTable[Tunnel]) -> None:
    old, new = Tunnel("old"), Tunnel("new")
    table.claim("myapp", "key-a", old)
    assert table.claim("myapp", "key-a", new) is old
    assert table.lookup("myapp") is new
    assert list(table.held()) == [("myapp", new)]


def test_a_replaced_tunnel_releasing_late_does_not_remove_its_successor(
    table: RouteTable[Tunnel],
) -> None:
    old, new = Tunnel("old"), Tunnel("new")
    table.claim("myapp", "key-a", old)
    table.claim("myapp", "key-a", new)
    assert table.release("myapp", old) is False
    assert table.lookup("myapp") is new
    assert table.state("myapp") is NameState.HELD


def test_release_of_an_unknown_name_is_a_no_op(table: RouteTable[Tunnel]) -> None:
    assert table.release("myapp", Tunnel("ghost")) is False
    assert table.state("myapp") is NameState.FREE


def test_release_reserves_the_name_and_lookup_says_offline(
    table: RouteTable[Tunnel],
) -> None:
    tunnel = Tunnel("first")
    table.claim("myapp", "key-a", tunnel)
    assert table.release("myapp", tunnel) is True
    assert table.state("myapp") is NameState.RESERVED
    assert table.lookup("myapp") == Offline("myapp")
    assert list(table.held()) == []
    assert table.release("myapp", tunnel) is False  # already released


def test_a_release_without_reservation_frees_the_name_at_once(
    table: RouteTable[Tunnel],
) -> None:
    tunnel = Tunnel("job")
    table.claim("myapp", "key-a", tunnel)
    assert table.release("myapp", tunnel, reserve=False) is True
    assert table.state("myapp") is NameState.FREE
    assert table.lookup("myapp") is None
    table.claim("myapp", "key-b", Tunnel("next"))  # another key: no NameTaken


def test_a_replaced_tunnel_ending_for_good_leaves_its_successor(
    table: RouteTable[Tunnel],
) -> None:
    old, new = Tunnel("old"), Tunnel("new")
    table.claim("myapp", "key-a", old)
    table.claim("myapp", "key-a", new)
    assert table.release("myapp", old, reserve=False) is False
    assert table.lookup("myapp") is new


def test_another_owner_is_refused_during_the_reservation(
    table: RouteTable[Tunnel], clock: FakeClock
) -> None:
    tunnel = Tunnel("first")
    table.claim("myapp", "key-a", tunnel)
    table.release("myapp", tunnel)
    clock.advance(RESERVATION_S - 0.001)
    with pytest.raises(NameTaken):
        table.claim("myapp", "key-b", Tunnel("intruder"))
    assert table.state("myapp") is NameState.RESERVED


def test_the_owner_reclaims_during_the_reservation(
    table: RouteTable[Tunnel], clock: FakeClock
) -> None:
    first, second = Tunnel("first"), Tunnel("second")
    table.claim("myapp", "key-a", first)
    table.release("myapp", first)
    clock.advance(RESERVATION_S / 2)
    assert table.claim("myapp", "key-a", second) is None  # nothing live was replaced
    assert table.lookup("myapp") is second
    # The fresh claim holds the name with no reservation deadline left over.
    clock.advance(RESERVATION_S)
    assert table.state("myapp") is NameState.HELD


def test_the_reservation_ends_exactly_after_reservation_s(
    table: RouteTable[Tunnel], clock: FakeClock
) -> None:
    tunnel = Tunnel("first")
    table.claim("myapp", "key-a", tunnel)
    table.release("myapp", tunnel)
    clock.advance(RESERVATION_S)
    assert table.state("myapp") is NameState.FREE
    assert table.lookup("myapp") is None
    intruder = Tunnel("next")
    assert table.claim("myapp", "key-b", intruder) is None
    assert table.lookup("myapp") is intruder


def test_zero_reservation_frees_the_name_on_release(clock: FakeClock) -> None:
    table: RouteTable[Tunnel] = RouteTable(reservation_s=0, clock=clock)
    tunnel = Tunnel("first")
    table.claim("myapp", "key-a", tunnel)
    assert table.release("myapp", tunnel) is True
    assert table.state("myapp") is NameState.FREE
    assert table.lookup("myapp") is None
    table.claim("myapp", "key-b", Tunnel("other"))


def test_sweep_forgets_only_expired_reservations(
    table: RouteTable[Tunnel], clock: FakeClock
) -> None:
    early, late, live = Tunnel("early"), Tunnel("late"), Tunnel("live")
    table.claim("early", "key-a", early)
    table.claim("late", "key-a", late)
    table.claim("live", "key-a", live)
    table.release("early", early)
    clock.advance(10)
    table.release("late", late)
    assert table.sweep() == 0
    clock.advance(RESERVATION_S - 10)
    assert table.sweep() == 1
    assert repr(table) == "<RouteTable held=1 reserved=1>"
    clock.advance(10)
    assert table.sweep() == 1
    assert table.sweep() == 0
    assert repr(table) == "<RouteTable held=1 reserved=0>"
    assert list(table.held()) == [("live", live)]


def test_names_are_independent(table: RouteTable[Tunnel]) -> None:
    a, b = Tunnel("a"), Tunnel("b")
    table.claim("alpha", "key-a", a)
    table.claim("beta", "key-b", b)
    assert table.lookup("alpha") is a
    assert table.lookup("beta") is b
    assert sorted(name for name, _ in table.held()) == ["alpha", "beta"]


def test_repr_counts_held_and_reserved(table: RouteTable[Tunnel]) -> None:
    a, b = Tunnel("a"), Tunnel("b")
    table.claim("alpha", "key-a", a)
    table.claim("beta", "key-a", b)
    table.release("beta", b)
    assert repr(table) == "<RouteTable held=1 reserved=1>"


def test_offline_is_a_value() -> None:
    assert Offline("myapp") == Offline("myapp")
    assert Offline("myapp").name == "myapp"
