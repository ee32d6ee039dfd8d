"""The one-port accept loop's burst counter (``router.one_port.AcceptFailures``)."""

from __future__ import annotations

from router.one_port import AcceptFailures


def test_a_burst_is_logged_once_and_counted_when_it_ends() -> None:
    failures = AcceptFailures()
    assert failures.succeeded() == 0  # no burst yet: nothing to report
    assert [failures.failed() for _ in range(3)] == [True, False, False]
    assert failures.succeeded() == 3
    assert failures.succeeded() == 0
    assert failures.failed() is True  # a new burst is logged again
    assert repr(failures) == "<AcceptFailures in_burst=1>"
