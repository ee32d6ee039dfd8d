"""The listener's reconnect schedule (``listener._reconnect.Backoff``).

Randomness is injected: ``random.Random(1)`` for the real jitter, and
``HighestDraw`` (always the top of the range) to read the ceiling itself.
"""

from __future__ import annotations

import random

import pytest

from listener._reconnect import LASTED_S, QUICK_RETRY_S, QUICK_WINDOW_S, Backoff


class HighestDraw(random.Random):
    """Always draws the top of the range, so a delay equals its ceiling."""

    def uniform(self, a: float, b: float) -> float:
        return b


def delays(backoff: Backoff, count: int) -> list[float]:
    return [backoff.next_delay() for _ in range(count)]


def test_first_delay_is_base() -> None:
    assert Backoff(base_s=0.5, cap_s=30.0, _random=random.Random(1)).next_delay() == 0.5


def test_ceilings_double_from_base_up_to_cap() -> None:
    backoff = Backoff(base_s=0.5, cap_s=30.0, _random=HighestDraw())
    assert delays(backoff, 9) == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert backoff.attempt == 9


def test_delays_are_full_jitter_draws_from_the_injected_random() -> None:
    reference = random.Random(1)
    expected = [0.5] + [reference.uniform(0.0, min(30.0, 0.5 * 2**n)) for n in range(1, 12)]
    assert delays(Backoff(base_s=0.5, cap_s=30.0, _random=random.Random(1)), 12) == expected


def test_same_seed_same_schedule() -> None:
    first = delays(Backoff(_random=random.Random(1)), 20)
    second = delays(Backoff(_random=random.Random(1)), 20)
    assert first == second
    assert len(set(first[1:])) == 19  # jittered: no two draws alike


@pytest.mark.parametrize(("base_s", "cap_s"), [(0.5, 30.0), (1.0, 1.0), (10.0, 5.0), (0.1, 7.3)])
def test_delays_never_exceed_cap_nor_go_negative(base_s: float, cap_s: float) -> None:
    backoff = Backoff(base_s=base_s, cap_s=cap_s, _random=random.Random(1))
    for n, delay in enumerate(delays(backoff, 200)):
        assert 0.0 <= delay <= cap_s
        assert delay <= base_s * 2**n


def test_the_schedule_survives_very_many_attempts() -> None:
    backoff = Backoff(base_s=0.5, cap_s=30.0, _random=HighestDraw())
    backoff.attempt = 10_000
    assert backoff.next_delay() == 30.0


def test_the_jittered_mean_grows_until_the_cap() -> None:
    # The n-th draw is uniform in [0, ceiling_n]; averaged over many seeds it
    # tracks ceiling_n / 2, so the schedule visibly grows and then levels off.
    runs = [delays(Backoff(_random=random.Random(seed)), 9) for seed in range(400)]
    means = [sum(run[n] for run in runs) / len(runs) for n in range(9)]
    assert means[0] == 0.5
    assert means[1] < means[2] < means[3] < means[4] < means[5] < means[6]
    assert means[6] == pytest.approx(15.0, rel=0.15)
    assert means[8] == pytest.approx(15.0, rel=0.15)


class FakeClock:
    """Monotonic time the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_connection_that_lasted_resets_the_schedule_and_retries_quickly() -> None:
    clock = FakeClock()
    backoff = Backoff(base_s=0.5, cap_s=30.0, _random=HighestDraw(), _clock=clock)
    delays(backoff, 5)
    backoff.connection_lasted(LASTED_S)
    assert backoff.attempt == 0
    # Within the quick window every retry is a draw from QUICK_RETRY_S: never above its top.
    assert delays(backoff, 4) == [QUICK_RETRY_S[1]] * 4
    clock.now += QUICK_WINDOW_S
    # Past it, repeated failures back off from the base again, up to the cap.
    assert delays(backoff, 8) == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]


def test_quick_retries_are_jittered_within_their_range() -> None:
    backoff = Backoff(_random=random.Random(1), _clock=FakeClock())
    backoff.connection_lasted(LASTED_S)
    draws = delays(backoff, 50)
    assert all(QUICK_RETRY_S[0] <= d <= QUICK_RETRY_S[1] for d in draws)
    assert len(set(draws)) == 50


def test_a_brief_connection_keeps_growing() -> None:
    clock = FakeClock()
    backoff = Backoff(base_s=0.5, cap_s=30.0, _random=HighestDraw(), _clock=clock)
    delays(backoff, 5)
    backoff.connection_lasted(LASTED_S - 0.1)
    assert backoff.attempt == 5
    assert backoff.next_delay() == 16.0


def test_lasted_is_a_setting() -> None:
    backoff = Backoff(stable_after_s=60.0, _random=HighestDraw(), _clock=FakeClock())
    delays(backoff, 5)
    backoff.connection_lasted(59.9)
    assert backoff.next_delay() == 16.0
    backoff.connection_lasted(60.0)
    assert backoff.next_delay() == QUICK_RETRY_S[1]


def test_repr_hides_the_random_source_and_the_clock() -> None:
    backoff = Backoff(_random=random.Random(1))
    assert repr(backoff) == "Backoff(base_s=0.5, cap_s=30.0, stable_after_s=5.0, attempt=0)"
