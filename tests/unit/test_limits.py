"""Connection counting and failure rate limiting (pure, fake clock)."""

from __future__ import annotations

import resource
import subprocess
import sys

from hostmux.limits import ConnectionCounts, FailureLimiter


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_counts_per_key_and_total() -> None:
    counts = ConnectionCounts(max_total=3, max_per_key=2)
    assert counts.admit("a")
    assert counts.admit("a")
    assert not counts.admit("a")  # per-key cap
    assert counts.admit("b")
    assert not counts.admit("c")  # total cap
    counts.release("a")
    assert counts.admit("c")
    assert counts.total == 3
    assert counts.per_key == {"a": 1, "b": 1, "c": 1}


def test_release_of_unknown_key_changes_nothing() -> None:
    counts = ConnectionCounts(max_total=3, max_per_key=2)
    counts.release("ghost")
    assert (counts.total, counts.per_key) == (0, {})
    assert counts.admit("a")
    counts.release("a")
    counts.release("a")
    assert (counts.total, counts.per_key) == (0, {})


def test_failures_spend_tokens_that_refill() -> None:
    clock = FakeClock()
    limiter = FailureLimiter(burst=3, per_minute=6, clock=clock)  # one token per 10 s
    for _ in range(3):
        assert limiter.allowed("10.0.0.1")
        limiter.failed("10.0.0.1")
    assert not limiter.allowed("10.0.0.1")
    assert limiter.allowed("10.0.0.2")  # others are not affected
    clock.now += 9.9
    assert not limiter.allowed("10.0.0.1")
    clock.now += 0.2
    assert limiter.allowed("10.0.0.1")
    clock.now += 3600
    for _ in range(3):  # refilled to the burst, not beyond
        limiter.failed("10.0.0.1")
    assert not limiter.allowed("10.0.0.1")


def test_the_router_raises_its_open_files_soft_limit_to_the_hard_one() -> None:
    """A router started under the usual soft limit (1,024 and less) would fail
    near that many tunnels: it raises the soft limit itself, as nginx does."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = min(256, hard)

    def start_low() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))

    script = (
        "import resource; from router.cli import raise_open_files_limit; "
        "print(resource.getrlimit(resource.RLIMIT_NOFILE)[0], raise_open_files_limit())"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], preexec_fn=start_low, capture_output=True, text=True,
        check=True, timeout=30,
    ).stdout.split()  # fmt: skip
    assert [int(n) for n in out] == [low, hard]
