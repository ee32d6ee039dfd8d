"""Issue 18's lines of the benchmark's Goals table (``bench/report.py``): exact verdicts."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _load_report() -> ModuleType:
    # bench/ is scripts, not a package: report.py imports its neighbours by name.
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return importlib.import_module("report")


report = _load_report()


def t(text: str) -> str:
    """``text`` with ``~`` for the multiplication sign the report writes."""
    return text.replace("~", report.X)


def medians(**rows: dict[str, float]) -> dict[str, dict[str, Any]]:
    return {
        name.replace("_", "-"): {"runs": 2, "ok": 2, **figures} for name, figures in rows.items()
    }


def by_text(goals: list[Any], start: str) -> list[Any]:
    return [g for g in goals if g.text.startswith(start)]


def test_router_cpu_is_judged_against_the_ceiling_and_against_sshd_nginx() -> None:
    m = medians(
        hostmux_openssh={"router_cpu_us": 150.0},
        pipe_ceiling={"router_cpu_us": 100.0},
        sshd_nginx_ka={"router_cpu_us": 70.0},
    )
    ceiling, anchor = by_text(report.issue18_goals(m, {}), "router CPU/request")
    assert ceiling.row() == [
        t("router CPU/request, hostmux + OpenSSH ≤ 1.6~ the asyncssh ceiling"),
        "150.0 µs", "100.0 µs", t("1.50~"), "PASS",
    ]  # fmt: skip
    assert anchor.ratio == t("2.14~")
    assert anchor.passed is False
    assert anchor.row()[-1] == "**FAIL**"


def test_tls_and_wss_ratios_need_at_least_their_share() -> None:
    m = medians(
        hostmux_tls={"rps": 5000.0, "mb_s": 290.0},
        sshd_nginx_tls={"rps": 5000.0, "mb_s": 200.0},
        hostmux_wss={"rps": 900.0, "mb_s": 89.0},
        hostmux_listener={"rps": 1000.0, "mb_s": 100.0},
    )
    goals = report.issue18_goals(m, {})
    tls_rps, tls_bulk = by_text(goals, "hostmux TLS")
    assert (tls_rps.ratio, tls_rps.passed) == (t("1.00~"), True)
    assert (tls_bulk.ratio, tls_bulk.passed) == (t("1.45~"), False)
    wss_rps, wss_bulk = by_text(goals, "listener over WSS")
    assert (wss_rps.ratio, wss_rps.passed) == (t("0.90~"), True)
    assert (wss_bulk.ratio, wss_bulk.passed) == (t("0.89~"), False)


def test_rows_not_in_the_run_are_not_measured() -> None:
    goals = report.issue18_goals(medians(hostmux_listener={"rps": 1000.0}), {})
    assert [g.passed for g in goals] == [None] * len(goals)
    assert {g.row()[-1] for g in goals} == {"not measured"}


@pytest.mark.parametrize(
    ("listener", "sshd", "floor", "ratio", "passed"),
    [
        (100.0, 210.0, 90.0, t("0.48~"), True),  # floor under half of sshd's: half of sshd's counts
        (110.0, 210.0, 90.0, t("0.52~"), False),
        (200.0, 210.0, 180.0, t("1.11~ floor (0.95~ sshd)"), True),  # floor above: 1.2x of it
        (220.0, 210.0, 180.0, t("1.22~ floor (1.05~ sshd)"), False),
        (100.0, 210.0, None, t("0.48~"), True),  # no floor measured: half of sshd's
        (200.0, 210.0, None, t("0.95~"), False),
    ],
)
def test_listener_setup_is_half_of_sshd_or_at_most_1_2x_the_import_floor(
    listener: float, sshd: float, floor: float | None, ratio: str, passed: bool
) -> None:
    goal = report.setup_goal(listener, sshd, floor)
    assert (goal.ratio, goal.passed) == (ratio, passed)
    assert goal.reference.startswith(f"sshd + OpenSSH {sshd:,.0f} ms; floor ")


def test_listener_setup_goal_from_a_run() -> None:
    m = medians(hostmux_listener={"setup_ms": 200.0}, sshd_nginx_ka={"setup_ms": 210.0})
    results = {"import_floor": {"median_ms": 180.0}}
    (goal,) = by_text(report.issue18_goals(m, results), "listener set-up")
    assert goal.passed is True
    assert goal.reference == "sshd + OpenSSH 210 ms; floor 180 ms"


def test_reconnect_goal_is_the_median_under_two_seconds() -> None:
    ok = report.reconnect_goal({"median_back_ms": 150.0, "restarts": [{}] * 5})
    assert (ok.measured, ok.passed) == ("150 ms (median of 5)", True)
    slow = report.reconnect_goal({"median_back_ms": 2001.0, "restarts": [{}] * 5})
    assert slow.passed is False
    failed = report.reconnect_goal({"error": "the listener exited"})
    assert (failed.measured, failed.passed) == ("the listener exited", None)
    assert report.reconnect_goal(None).passed is None


def test_the_goals_table_has_the_old_lines_and_issue_18s() -> None:
    results = {
        "runs": [
            {"row": "hostmux-listener", "ok": True, "rps": 1000.0, "mb_s": 100.0},
            {"row": "hostmux-wss", "ok": True, "rps": 950.0, "mb_s": 95.0},
        ],
        "options": {"rows": ["hostmux-listener", "hostmux-wss"], "bulk_bytes": 50 << 20},
        "reconnect": {"median_back_ms": 150.0, "restarts": [{}]},
    }
    text = "\n".join(report.render_rows(results))
    assert t("| hostmux + listener req/s ≥ 0.8~ hostmux + OpenSSH |") in text
    wss = "listener over WSS {} ≥ 0.9~ the listener over SSH | {} | 0.95~ | PASS |"
    assert t(wss.format("req/s", "950.0 | 1,000.0")) in text
    assert t(wss.format("bulk MB/s", "95.0 | 100.0")) in text
    assert "150 ms (median of 1) | 2 s |  | PASS |" in text
