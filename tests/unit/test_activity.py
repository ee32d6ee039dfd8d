"""router.activity: the arithmetic of activity, idleness and usage, on a fake clock.

The behaviour with real processes (a router, OpenSSH, the example portal and
Redis) is in tests/integration/test_activity.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from hostmux.relay import RequestRecord
from router.activity import Activity, Usage, interval_start, parse_checkpoint, tick_interval_s


class Sent(list[tuple[str, str, dict[str, object]]]):
    """The events an ``Activity`` sent: (kind, name, data)."""


class Clock:
    def __init__(self, now: float = 7_200.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Spliced:
    request_id: str
    name: str
    bytes_in: int = 0
    bytes_out: int = 0


def record(name: str, *, status: int = 200, bytes_in: int = 100, bytes_out: int = 1000,
           ms: float = 20.0, rid: str = "r1") -> RequestRecord:  # fmt: skip
    return RequestRecord(
        request_id=rid, peer="127.0.0.1:1", host=f"{name}.localhost", name=name, method="GET",
        target="/", status=status, bytes_in=bytes_in, bytes_out=bytes_out, duration_ms=ms,
    )  # fmt: skip


def tracker(
    clock: Clock, sent: list[tuple[str, str, dict[str, object]]], **options: object
) -> Activity:
    settings: dict[str, object] = {
        "idle_after_s": 5.0, "min_bytes_per_minute": 0, "usage_interval_s": 3600.0,
        "router_id": "r-a", **options,
    }  # fmt: skip
    return Activity(**settings, send=lambda *event: sent.append(event), clock=clock)  # type: ignore[arg-type]


def kinds(sent: list[tuple[str, str, dict[str, object]]]) -> list[tuple[str, str]]:
    return [(kind, name) for kind, name, _ in sent]


def test_the_tick_is_half_the_idle_time_within_bounds() -> None:
    assert tick_interval_s(5) == 2.5
    assert tick_interval_s(3600) == 10.0
    assert tick_interval_s(0.2) == 0.5
    assert tick_interval_s(0) == 10.0  # off: still sampling WebSockets for usage


def test_intervals_are_aligned_to_the_epoch() -> None:
    assert interval_start(7_199.9, 3600) == 3600
    assert interval_start(7_200.0, 3600) == 7200


def test_a_name_held_without_activity_goes_idle_once_and_a_request_makes_it_active() -> None:
    clock, sent = Clock(), Sent()
    activity = tracker(clock, sent)
    up = clock.now
    activity.tick([], [("app", up)])
    clock.now += 4.9
    activity.tick([], [("app", up)])
    assert sent == []
    clock.now += 0.1
    activity.tick([], [("app", up)])
    clock.now += 10
    activity.tick([], [("app", up)])  # said once
    assert kinds(sent) == [("idle", "app")]
    assert sent[0][2] == {"last_activity": up, "idle_after_s": 5.0}
    activity.on_request(record("app"))
    assert kinds(sent) == [("idle", "app"), ("active", "app")]  # at once, not at the next tick
    assert activity.names["app"].idle is False


def test_requests_keep_a_name_active() -> None:
    clock, sent = Clock(), Sent()
    activity = tracker(clock, sent)
    for _ in range(10):
        activity.tick([], [("app", 7_200.0)])
        activity.on_request(record("app"))
        clock.now += 3
    assert sent == []


def test_idle_off_sends_no_idle_event() -> None:
    clock, sent = Clock(), Sent()
    activity = tracker(clock, sent, idle_after_s=0.0)
    activity.tick([], [("app", clock.now)])
    clock.now += 10_000
    activity.tick([], [("app", 7_200.0)])
    assert "idle" not in [kind for kind, _ in kinds(sent)]


def test_websocket_traffic_below_the_minimum_per_minute_is_not_activity() -> None:
    clock, sent = Clock(), Sent()
    activity = tracker(clock, sent, min_bytes_per_minute=1000)
    ws = Spliced("w1", "app")
    for _ in range(5):  # 20 bytes every 2.5 s: 480 bytes a minute
        ws.bytes_in += 10
        ws.bytes_out += 10
        activity.tick([ws], [("app", 7_200.0)])
        clock.now += 2.5
    activity.tick([ws], [("app", 7_200.0)])
    assert kinds(sent) == [("idle", "app")]
    # Above it: 400 bytes a tick is activity once the minute's sum reaches 1000.
    for _ in range(3):
        ws.bytes_out += 400
        clock.now += 2.5
        activity.tick([ws], [("app", 7_200.0)])
    assert kinds(sent) == [("idle", "app"), ("active", "app")]
    assert activity.names["app"].last == clock.now


def test_websocket_bytes_and_seconds_are_counted_once_between_ticks_and_its_end() -> None:
    clock, sent = Clock(), Sent()
    activity = tracker(clock, sent)
    ws = Spliced("w1", "app", bytes_in=300, bytes_out=200)
    activity.tick([ws], [])
    clock.now += 10
    ws.bytes_in, ws.bytes_out = 1300, 5200
    activity.tick([ws], [])
    clock.now += 4
    activity.on_request(record("app", status=101, bytes_in=1400, bytes_out=5300, ms=15_000,
                               rid="w1"))  # fmt: skip
    usage = activity.names["app"].usage
    assert (usage.requests, usage.bytes_in, usage.bytes_out) == (1, 1400, 5300)
    assert usage.websocket_s == pytest.approx(14.0)  # from its first tick
    assert usage.connection_s == 0


def test_usage_is_sent_per_name_at_the_interval_end_and_restarts() -> None:
    clock, sent = Clock(now=3600 * 5 + 10), Sent()
    activity = tracker(clock, sent, idle_after_s=0.0)
    activity.on_request(record("app", bytes_in=10, bytes_out=90, ms=500))
    activity.on_request(record("app", bytes_in=5, bytes_out=5, ms=250))
    activity.on_request(record("other"))
    clock.now = 3600 * 6 + 1
    activity.tick([], [("app", 0.0)])
    usage = {name: data for kind, name, data in sent if kind == "usage"}
    assert usage["app"] == {
        "start": 18_000.0, "end": 21_600.0, "interval_s": 3600.0, "router_id": "r-a",
        "requests": 2, "bytes_in": 15, "bytes_out": 95, "connection_s": 0.75, "websocket_s": 0.0,
    }  # fmt: skip
    assert usage["other"]["requests"] == 1
    assert activity.interval_start == 21_600.0
    assert not activity.names["app"].usage
    assert activity.names["app"].total().requests == 2
    sent.clear()
    clock.now += 3600
    activity.tick([], [("app", 0.0)])
    assert sent == []  # nothing happened: nothing sent
    assert "other" not in activity.names  # not held and nothing to say: forgotten


def test_the_checkpoint_carries_an_interval_across_a_restart(tmp_path: Path) -> None:
    clock, sent = Clock(now=3600 * 5 + 10), Sent()
    path = tmp_path / "usage.json"
    first = tracker(clock, sent, checkpoint=path)
    first.on_request(record("app", bytes_in=10, bytes_out=90))
    first.save()
    assert json.loads(path.read_text())["usage"]["app"]["requests"] == 1
    clock.now += 100
    second = tracker(clock, sent, checkpoint=path)
    assert not second.loaded  # (a router that failed to start leaves the file alone)
    second.load()
    assert second.loaded
    second.on_request(record("app", bytes_in=1, bytes_out=1))
    assert second.names["app"].usage.requests == 2
    assert second.names["app"].usage.bytes_out == 91
    # A checkpoint whose interval ended while the router was down is sent at start.
    clock.now += 3600
    third = tracker(clock, sent, checkpoint=path)
    third.load()
    assert kinds(sent) == [("usage", "app")]
    assert sent[0][2]["requests"] == 1 and sent[0][2]["start"] == 18_000.0
    assert "app" not in third.names or not third.names["app"].usage


def test_a_bad_checkpoint_is_set_aside_not_fatal(tmp_path: Path) -> None:
    clock, sent = Clock(), Sent()
    path = tmp_path / "usage.json"
    path.write_text(
        '{"v": 1, "interval_start": 0, "interval_s": 60, "usage": {"a": {"requests": -1}}}'
    )
    activity = tracker(clock, sent, checkpoint=path)
    activity.load()
    assert not path.exists()
    assert (tmp_path / "usage.json.bad").exists()
    assert activity.names == {}


@pytest.mark.parametrize(
    "raw",
    [b"", b"[]", b'{"v": 2}', b'{"v": 1, "interval_start": "x", "interval_s": 1, "usage": {}}',
     b'{"v": 1, "interval_start": 0, "interval_s": 0, "usage": {}}',
     b'{"v": 1, "interval_start": 0, "interval_s": 1, "usage": {"a": []}}'],
)  # fmt: skip
def test_parse_checkpoint_refuses_what_it_did_not_write(raw: bytes) -> None:
    with pytest.raises(ValueError, match=r"JSON|version|numbers|positive|object"):
        parse_checkpoint(raw)


def test_usage_round_trips() -> None:
    usage = Usage(3, 10, 20, 1.5, 2.25)
    assert Usage.from_json(usage.to_json()) == usage
