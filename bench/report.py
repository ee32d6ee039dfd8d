"""RESULTS.md and results.png from one run's raw results (``results.json``).

    .venv/bin/python bench/report.py bench/results.json   # render again, same directory

Figures are medians over the repeats of a row; ratios are against the
"sshd + nginx, keepalive" row (the DIT4C design) of the same run. Goals are
checked here and printed PASS/FAIL (or "not measured").
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rows import ANCHOR, ROWS

KEYS = (
    "rps", "p50_ms", "p99_ms", "errors", "mb_s", "setup_ms", "rss_idle_mib", "rss_after_mib",
    "router_cpu_us", "client_cpu_us", "helper_cpu_us",
)  # fmt: skip
X = "\N{MULTIPLICATION SIGN}"
OPENSSH, LISTENER = "hostmux-openssh", "hostmux-listener"
METRICS = "hostmux-openssh-metrics"
AUTHHELPER = "hostmux-authhelper"
# CPU time is counted in clock ticks (10 ms): per-tunnel figures need enough tunnels.
MIN_FOR_CPU = 50
Row = list[str]


def _median(values: list[Any]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def medians(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per row: runs, runs ok, and the median of each figure over the runs that worked."""
    out: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys(r["row"] for r in runs):
        mine = [r for r in runs if r["row"] == name]
        ok = [r for r in mine if r.get("ok")]
        out[name] = {"runs": len(mine), "ok": len(ok)}
        out[name].update({key: _median([r.get(key) for r in ok]) for key in KEYS})
    return out


def _fmt(v: float | None, digits: int = 0, suffix: str = "") -> str:
    return "—" if v is None else f"{v:,.{digits}f}{suffix}"


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _table(header: Row, rows: list[Row]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(r) + " |" for r in rows),
    ]


def _cell(text: object, limit: int = 200) -> str:
    return str(text)[:limit].replace("\n", " ").replace("|", "/")


# -- goals -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Goal:
    text: str
    measured: str
    reference: str
    ratio: str
    passed: bool | None  # None: not measured
    verdict: str | None = None  # instead of PASS/FAIL, e.g. for a stretch the machine limits

    def row(self) -> Row:
        verdict = (
            self.verdict or {True: "PASS", False: "**FAIL**", None: "not measured"}[self.passed]
        )
        return [self.text, self.measured, self.reference, self.ratio, verdict]


# (row, reference row, figure, wanted ratio, higher is better)
RATIO_GOALS = (
    (OPENSSH, ANCHOR, "rps", 1.0, True),
    (OPENSSH, ANCHOR, "p99_ms", 1.0, False),
    (OPENSSH, ANCHOR, "mb_s", 1.5, True),
    (OPENSSH, ANCHOR, "setup_ms", 0.5, False),
    (LISTENER, OPENSSH, "rps", 0.8, True),
    (LISTENER, OPENSSH, "p99_ms", 1.25, False),  # "0.8x as good" for a lower-is-better figure
    (LISTENER, OPENSSH, "mb_s", 0.8, True),
    (LISTENER, OPENSSH, "setup_ms", 1.25, False),
    (METRICS, OPENSSH, "router_cpu_us", 1.05, False),  # issue 19: metrics on, CPU per request
)
FIGURES = {
    "rps": "req/s", "p99_ms": "p99", "mb_s": "bulk MB/s", "setup_ms": "tunnel setup",
    "router_cpu_us": "router CPU per request",
}  # fmt: skip
UNITS = {"rps": "", "p99_ms": " ms", "mb_s": "", "setup_ms": " ms", "router_cpu_us": " µs"}
SHORT = {
    OPENSSH: "hostmux + OpenSSH", LISTENER: "hostmux + listener", ANCHOR: "anchor",
    METRICS: "hostmux + OpenSSH, metrics on",
}  # fmt: skip


def _ratio_goal(
    text: str, ours: float | None, theirs: float | None, want: float, higher: bool, unit: str
) -> Goal:
    ratio = _ratio(ours, theirs)
    measured, reference = _fmt(ours, 1, unit), _fmt(theirs, 1, unit)
    if ratio is None:
        return Goal(text, measured, reference, "—", None)
    passed = ratio >= want if higher else ratio <= want
    shown = f"{ratio:.2f}"
    if shown == f"{want:.2f}" and ratio != want:
        shown = f"{ratio:.4f}"  # so a verdict decided past the second decimal is visible
    return Goal(text, measured, reference, f"{shown}{X}", passed)


def _limit_goal(text: str, value: float | None, limit: float, higher: bool, unit: str) -> Goal:
    reference = f"{limit:,.0f}{unit}"
    if value is None:
        return Goal(text, "—", reference, "—", None)
    passed = value >= limit if higher else value <= limit
    return Goal(text, _fmt(value, 1, unit), reference, "", passed)


def goals(m: dict[str, dict[str, Any]], scale: dict[str, Any] | None) -> list[Goal]:
    found = []
    for a, b, key, want, higher in RATIO_GOALS:
        text = f"{SHORT[a]} {FIGURES[key]} {'≥' if higher else '≤'} {want}{X} {SHORT[b]}"
        ours, theirs = m.get(a, {}).get(key), m.get(b, {}).get(key)
        found.append(_ratio_goal(text, ours, theirs, want, higher, UNITS[key]))
    scale = scale or {}
    steps = scale.get("tunnels", {}).get("steps", [])
    step: dict[str, Any] = next((s for s in steps if s["n"] == 10_000), {})
    keepalive = scale.get("keepalive", {})
    ka_rss = keepalive.get("rss_mib") if keepalive.get("connections") == 10_000 else None
    idle = m.get(OPENSSH, {}).get("rss_idle_mib")
    limits = [
        ("10,000 idle tunnels: router RSS ≤ 192 MiB", step.get("rss_mib"), 192, False, " MiB"),
        ("10,000 idle tunnels: set-up ≥ 500 tunnels/s (the step 1,000 → 10,000)",
         step.get("rate"), 500, True, "/s"),
        ("10,000 idle keep-alive connections: router RSS ≤ 160 MiB", ka_rss, 160, False, " MiB"),
        ("idle router RSS ≤ 64 MiB (hostmux + OpenSSH, one tunnel)", idle, 64, False, " MiB"),
    ]  # fmt: skip
    return [
        *found, *(_limit_goal(*limit) for limit in limits), _stretch_goal(scale),
        *chain_goals(m),
    ]  # fmt: skip


def chain_goals(m: dict[str, dict[str, Any]]) -> list[Goal]:
    """Issue 18: the whole chain through the auth helper against the router alone, and the
    helper's CPU per request against the router's in the same row."""
    chain, alone = m.get(AUTHHELPER, {}), m.get(OPENSSH, {})
    name = "hostmux + OpenSSH + auth helper"
    return [
        _ratio_goal(f"{name} req/s ≥ 0.8{X} hostmux + OpenSSH",
                    chain.get("rps"), alone.get("rps"), 0.8, True, ""),
        _ratio_goal(f"{name} p99 ≤ 1.5{X} hostmux + OpenSSH",
                    chain.get("p99_ms"), alone.get("p99_ms"), 1.5, False, " ms"),
        _ratio_goal(f"{name}: helper CPU/req ≤ 0.5{X} router CPU/req (same row)",
                    chain.get("helper_cpu_us"), chain.get("router_cpu_us"), 0.5, False, " µs"),
    ]  # fmt: skip


# -- issue 18's goals: router CPU, TLS, WSS, listener start-up, reconnect ----------------

CEILING, TLS, NGINX_TLS, WSS = "pipe-ceiling", "hostmux-tls", "sshd-nginx-tls", "hostmux-wss"
# (row, reference row, figure, wanted ratio, higher is better, what the line says)
ISSUE18_RATIO_GOALS = (
    (OPENSSH, CEILING, "router_cpu_us", 1.6, False, "router CPU/request, hostmux + OpenSSH"),
    (OPENSSH, ANCHOR, "router_cpu_us", 2.0, False, "router CPU/request, hostmux + OpenSSH"),
    (TLS, NGINX_TLS, "rps", 1.0, True, "hostmux TLS + OpenSSH req/s"),
    (TLS, NGINX_TLS, "mb_s", 1.5, True, "hostmux TLS + OpenSSH bulk MB/s"),
    (WSS, LISTENER, "rps", 0.9, True, "listener over WSS req/s"),
    (WSS, LISTENER, "mb_s", 0.9, True, "listener over WSS bulk MB/s"),
)  # fmt: skip
SHORT_18 = {
    CEILING: "the asyncssh ceiling", ANCHOR: "sshd + nginx", NGINX_TLS: "nginx TLS + sshd",
    LISTENER: "the listener over SSH",
}  # fmt: skip
UNITS_18 = {"router_cpu_us": " µs", "rps": "", "mb_s": ""}
# Listener set-up: at most this share of sshd + OpenSSH's set-up, or, when the import
# floor is above that, at most this multiple of the floor.
SETUP_SHARE, FLOOR_MULTIPLE = 0.5, 1.2
RECONNECT_LIMIT_MS = 2000.0


def issue18_goals(m: dict[str, dict[str, Any]], results: dict[str, Any]) -> list[Goal]:
    """Issue 18's goals on router CPU, TLS, WSS, listener start-up and reconnect."""
    found = []
    for a, b, key, want, higher, what in ISSUE18_RATIO_GOALS:
        text = f"{what} {'≥' if higher else '≤'} {want}{X} {SHORT_18[b]}"
        ours, theirs = m.get(a, {}).get(key), m.get(b, {}).get(key)
        found.append(_ratio_goal(text, ours, theirs, want, higher, UNITS_18[key]))
    floor = (results.get("import_floor") or {}).get("median_ms")
    setup = m.get(LISTENER, {}).get("setup_ms")
    found.append(setup_goal(setup, m.get(ANCHOR, {}).get("setup_ms"), floor))
    found.append(reconnect_goal(results.get("reconnect")))
    return found


def setup_goal(listener_ms: float | None, sshd_ms: float | None, floor_ms: float | None) -> Goal:
    """The listener's set-up (start -> first correct answer, self-check on) against
    ``SETUP_SHARE`` of sshd + OpenSSH's, or ``FLOOR_MULTIPLE`` of the import floor
    (interpreter + asyncssh + cryptography) when the floor alone is above that share."""
    text = (
        f"listener set-up, self-check on, ≤ {SETUP_SHARE}{X} sshd + OpenSSH's (≤ "
        f"{FLOOR_MULTIPLE}{X} the import floor, interpreter + asyncssh + cryptography, if higher)"
    )
    floor = f"; floor {_fmt(floor_ms, 0, ' ms')}" if floor_ms is not None else "; floor —"
    reference = f"sshd + OpenSSH {_fmt(sshd_ms, 0, ' ms')}{floor}"
    if listener_ms is None or sshd_ms is None:
        return Goal(text, _fmt(listener_ms, 0, " ms"), reference, "—", None)
    share = listener_ms / sshd_ms
    if floor_ms is not None and floor_ms > SETUP_SHARE * sshd_ms:
        ratio = listener_ms / floor_ms
        return Goal(
            text, _fmt(listener_ms, 0, " ms"), reference,
            f"{ratio:.2f}{X} floor ({share:.2f}{X} sshd)", ratio <= FLOOR_MULTIPLE,
        )  # fmt: skip
    return Goal(
        text, _fmt(listener_ms, 0, " ms"), reference, f"{share:.2f}{X}", share <= SETUP_SHARE
    )


def reconnect_goal(reconnect: dict[str, Any] | None) -> Goal:
    """After router restarts, the median time from listening again to the first 200."""
    text = (
        f"reconnect: first correct answer ≤ {RECONNECT_LIMIT_MS / 1e3:g} s after the "
        "restarted router listens (median of the restarts, `bench/reconnect.py`)"
    )
    reference = f"{RECONNECT_LIMIT_MS / 1e3:g} s"
    if not reconnect or "median_back_ms" not in reconnect:
        why = (reconnect or {}).get("error")
        return Goal(text, _cell(why, 120) if why else "—", reference, "", None)
    back = reconnect["median_back_ms"]
    measured = f"{back:,.0f} ms (median of {len(reconnect.get('restarts', []))})"
    return Goal(text, measured, reference, "", back <= RECONNECT_LIMIT_MS)


def _stretch_goal(scale: dict[str, Any]) -> Goal:
    """The 100,000-tunnel stretch: the biggest step run, RSS per tunnel and set-up rate."""
    want = scale.get("stretch_tunnels", 100_000)
    text = f"stretch: {want:,} idle tunnels on one router (RSS per tunnel, set-up rate)"
    tunnels = scale.get("tunnels", {})
    steps = [s for s in tunnels.get("steps", []) if s["n"] > 10_000]
    if not steps:
        return Goal(text, "—", f"{want:,}", "", None)
    s = steps[-1]
    empty = tunnels.get("router_rss_empty_mib")
    per = _per_kib(s.get("rss_mib"), empty, s.get("held"))
    measured = (
        f"{s['held']:,} tunnels: {_fmt(s.get('rss_mib'), 1)} MiB "
        f"({_fmt(per, 1)} KiB per tunnel), set up at {_fmt(s.get('rate'))}/s"
    )
    if per is not None and empty is not None and s["held"] < want:
        # The estimate for the whole stretch: the empty router plus that much per tunnel.
        measured += f"; {want:,} ≈ {_fmt((empty + per * want / 1024) / 1024, 2)} GiB"
    if s["held"] >= want:
        return Goal(text, measured, f"{want:,}", "", True)
    hard = scale.get("open_files_hard")
    return Goal(
        text, measured, f"{want:,}", "", None,
        verdict=f"as far as this machine allows (open-files hard limit {_fmt(hard)})",
    )  # fmt: skip


# -- Markdown ------------------------------------------------------------------------------


def _load(avg: Any) -> str:
    return "/".join(f"{v:.2f}" for v in avg) if avg else "?"


def render_header(results: dict[str, Any]) -> list[str]:
    opts, mach = results["options"], results["machine"]
    bulk_mib = opts["bulk_bytes"] >> 20
    lines = [
        "# hostmux benchmark results",
        "",
        f"- **Date:** {results['started']} → {results['finished']}",
        f"- **Command:** `{results['command']}` (from the repository root)",
        f"- **Machine:** {mach['cpus']} CPUs ({mach['cpus_usable']} usable), {mach['cpu']}, "
        f"{mach['memory_gib']} GiB RAM, {mach['os']}, kernel {mach['kernel']}; load average "
        f"{_load(mach['load_average_start'])} at the start, "
        f"{_load(mach.get('load_average_end'))} at the end",
        f"- **Software:** hostmux {mach['hostmux_commit']}; Python {mach['python']}, "
        f"asyncssh {mach['asyncssh']}, httptools {mach.get('httptools')}, uvloop {mach['uvloop']}, "
        f"cryptography {mach['cryptography']}; {mach['nginx']}; {mach['openssh']}; "
        f"{mach['wrk']}; {mach['curl'].split(' (')[0]}",
        f"- **Method:** per row and repeat everything is started from scratch (row order "
        f"rotated between repeats; medians over {opts['repeats']} repeat(s)). Small requests: "
        f"`wrk -t2 -c64 -d{opts['duration']}s --latency` on a 1 KiB file after a "
        f"{opts['warmup']} s warm-up (req/s of 2xx/3xx). Bulk: `curl` of a {bulk_mib} MiB "
        f"file, median of {opts.get('bulk_count', 1)} download(s) per repeat (counted only if "
        f"HTTP 200 and complete; MB = 10^6 bytes). Tunnel setup: client "
        f"start → first correct `GET /1k` through the router (polled every 10 ms). Router RSS: "
        f"summed VmRSS of the router's process tree (nginx + sshd and its sessions; for "
        f"hostmux the router process only), 1 s after set-up and after the load. Load "
        f"generator, router, tunnel client and backend all share the same CPUs.",
    ]
    lines += [f"- **Note:** {note}" for note in opts.get("note") or []]
    return lines


def render_rows(results: dict[str, Any]) -> list[str]:
    m = medians(results["runs"])
    order = [r for r in results["options"]["rows"] if r in m]
    anchor = m.get(ANCHOR, {})
    bulk_mib = results["options"]["bulk_bytes"] >> 20
    header = [
        "row", "runs ok", "req/s 1 KiB", f"{X} anchor", "p50 ms", "p99 ms", "errors/run",
        f"MB/s {bulk_mib} MiB", f"{X} anchor", "tunnel setup ms", f"{X} anchor",
        "router RSS idle MiB", "RSS after load MiB", "router CPU µs/req", "client CPU µs/req",
    ]  # fmt: skip
    table = []
    for name in order:
        a = m[name]
        x = {k: _fmt(_ratio(a[k], anchor.get(k)), 2, X) for k in ("rps", "mb_s", "setup_ms")}
        label = f"**{ROWS[name].label}**" if name == ANCHOR else ROWS[name].label
        table.append([
            label, f"{a['ok']}/{a['runs']}", _fmt(a["rps"]), x["rps"], _fmt(a["p50_ms"], 2),
            _fmt(a["p99_ms"], 2), _fmt(a["errors"]), _fmt(a["mb_s"]), x["mb_s"],
            _fmt(a["setup_ms"]), x["setup_ms"], _fmt(a["rss_idle_mib"], 1),
            _fmt(a["rss_after_mib"], 1), _fmt(a["router_cpu_us"]), _fmt(a["client_cpu_us"]),
        ])  # fmt: skip
    lines = ["## Side by side", "", *_table(header, table)]
    h, n = m.get("hostmux-tls", {}), m.get("sshd-nginx-tls", {})
    if h and n:
        lines += [
            "",
            "TLS, hostmux terminating vs nginx terminating in front of sshd: "
            f"req/s {_fmt(_ratio(h['rps'], n['rps']), 2, X)}, "
            f"p99 {_fmt(_ratio(h['p99_ms'], n['p99_ms']), 2, X)}, "
            f"bulk {_fmt(_ratio(h['mb_s'], n['mb_s']), 2, X)}.",
        ]
    c, o = m.get("pipe-ceiling", {}), m.get(OPENSSH, {})
    if c and o and anchor:
        lines += [
            "",
            "Ceiling: with no HTTP work at all, asyncssh piping reaches "
            f"{_fmt(_ratio(c['rps'], anchor.get('rps')), 2, X)} of the anchor's req/s at "
            f"{_fmt(c['router_cpu_us'])} µs of router CPU per request; the full router "
            f"(hostmux + OpenSSH) reaches {_fmt(_ratio(o['rps'], c['rps']), 2, X)} of that "
            f"ceiling at {_fmt(o['router_cpu_us'])} µs.",
        ]
    ah = m.get(AUTHHELPER, {})
    if ah and o:
        lines += [
            "",
            "Auth helper chain (hostmux + OpenSSH + auth helper vs hostmux + OpenSSH): "
            f"req/s {_fmt(_ratio(ah['rps'], o['rps']), 2, X)}, "
            f"p99 {_fmt(_ratio(ah['p99_ms'], o['p99_ms']), 2, X)}; CPU per request: "
            f"router {_fmt(ah['router_cpu_us'])} µs, helper {_fmt(ah['helper_cpu_us'])} µs "
            f"({_fmt(_ratio(ah['helper_cpu_us'], ah['router_cpu_us']), 2, X)} the router's), "
            f"router alone in hostmux + OpenSSH {_fmt(o['router_cpu_us'])} µs.",
        ]
    lines += ["", "Rows:"]
    lines += [f"- **{ROWS[n].label}** (`{n}`): {ROWS[n].description}" for n in order]
    lines += ["", "## Goals", ""]
    every = [*goals(m, results.get("scale")), *issue18_goals(m, results)]
    lines += _table(["goal", "measured", "reference", "ratio", "result"], [g.row() for g in every])
    return lines


def _per_kib(rss: float | None, base: float | None, count: int | None) -> float | None:
    if rss is None or base is None or not count:
        return None
    return (rss - base) * 1024 / count


def _step_row(s: dict[str, Any], empty_mib: float | None) -> Row:
    return [
        f"{s['n']:,}", f"{s['added']:,}", f"{s['failed']:,}", _fmt(s["seconds"], 1),
        _fmt(s.get("rate")),
        _fmt(s.get("router_cpu_ms_per_tunnel") if s["added"] >= MIN_FOR_CPU else None, 2),
        _fmt(s.get("router_idle_cpu_pct"), 1), _fmt(s.get("rss_mib"), 1),
        _fmt(_per_kib(s.get("rss_mib"), empty_mib, s.get("held"))),
        _fmt(s.get("rss_after_wrk_mib"), 1), _fmt(s.get("rps")), _fmt(s.get("p99_ms"), 2),
        _fmt(s.get("wrk_errors")), _fmt(s.get("clients_rss_mib")),
    ]  # fmt: skip


def render_scale(scale: dict[str, Any]) -> list[str]:
    opts = scale.get("options", {})
    lines = ["## Scale: one router, many idle tunnels", ""]
    tunnels = scale.get("tunnels", {})
    if "error" in tunnels:
        lines.append(f"Tunnels part FAILED: {_cell(tunnels['error'], 500)}")
    else:
        empty = tunnels.get("router_rss_empty_mib")
        lines += [
            f"Tunnels held by {opts.get('clients')} `tunnel_swarm.py` processes (asyncssh; per "
            f"tunnel one SSH connection with one `forward_remote_port`, SSH keepalive every "
            f"{opts.get('keepalive_s'):g} s like the listener's default; "
            f"{opts.get('concurrency')} handshakes in flight per process). tunnels/s: tunnels "
            f"added / wall time of the step; router CPU ms/tunnel: the router's CPU time during "
            f"the step / tunnels added (1,000 / it = the set-up rate one core could sustain). "
            f"Then the tunnels idle for 5 s (router idle CPU %: keepalives) and the router's RSS "
            f"is read (the router process only; {_fmt(empty, 1)} MiB with no tunnel). req/s: "
            f"`wrk -t2 -c64 -d{opts.get('wrk_duration_s')}s` through tunnel `bench-0` at each N.",
            "",
        ]
        header = [
            "tunnels N", "added", "failed", "set-up s", "tunnels/s", "router CPU ms/tunnel",
            "router idle CPU %", "router RSS MiB",
            "KiB per tunnel", "RSS after wrk MiB", "req/s via one tunnel", "p99 ms",
            "wrk errors", "tunnel clients' RSS MiB",
        ]  # fmt: skip
        lines += _table(header, [_step_row(s, empty) for s in tunnels.get("steps", [])])
        errors = sorted({e for s in tunnels.get("steps", []) for e in s.get("errors", [])})
        if errors:
            lines += ["", "Tunnel failures: " + "; ".join(f"`{e}`" for e in errors[:5])]
    lines += ["", "### Idle keep-alive HTTP connections", ""]
    ka = scale.get("keepalive", {})
    if "error" in ka:
        lines.append(f"Keep-alive part FAILED: {_cell(ka['error'], 500)}")
    elif ka:
        lines += [
            f"A fresh router with one `hostmux-listener` tunnel; `keepalive_crowd.py` opens "
            f"{ka['connections']:,} connections to the plain HTTP port (from 8 loopback source "
            f"addresses), sends one `GET /1k` on each (each then keeps its SSH channel to the "
            f"tunnel for reuse), reads the answer and holds the connection open.",
            "",
        ]
        header = [
            "connections", "answered 200", "still open when measured", "failed", "opened in s",
            "router RSS before MiB", "router RSS with them MiB", "KiB per connection",
        ]  # fmt: skip
        per = _per_kib(ka.get("rss_mib"), ka.get("rss_before_mib"), ka.get("open"))
        row = [
            f"{ka['connections']:,}", f"{ka.get('open', 0):,}", f"{ka.get('still_open', 0):,}",
            f"{ka.get('failed', 0):,}", _fmt(ka.get("seconds"), 1),
            _fmt(ka.get("rss_before_mib"), 1), _fmt(ka.get("rss_mib"), 1), _fmt(per, 1),
        ]  # fmt: skip
        lines += _table(header, [row])
        if ka.get("errors"):
            lines += ["", "Failures: " + "; ".join(f"`{e}`" for e in ka["errors"])]
    return lines


def render_oddities(runs: list[dict[str, Any]], scale: dict[str, Any] | None) -> list[str]:
    lines = ["## Errors, non-2xx answers, log lines, memory growth", ""]
    for r in runs:
        notes = []
        if r.get("non2xx"):
            notes.append(f"{r['non2xx']} non-2xx/3xx responses")
        if r.get("socket_errors"):
            notes.append(f"{r['socket_errors']} wrk socket errors")
        if r.get("died"):
            notes.append(f"died: {r['died']}")
        if r.get("log"):
            shown = " / ".join(f"`{_cell(x, 160)}`" for x in r["log"][:3])
            notes.append(f"{len(r['log'])} router log line(s): {shown}")
        if not r.get("ok"):
            notes.append("FAILED: " + _cell(r.get("error", ""), 300))
        if notes:
            lines.append(f"- {r['row']} (repeat {r['repeat']}): " + "; ".join(notes))
    for part in ("tunnels", "keepalive"):
        logged = ((scale or {}).get(part) or {}).get("router_log") or []
        if logged:
            shown = " / ".join(f"`{_cell(x, 160)}`" for x in logged[:3])
            lines.append(f"- scale, {part}: {len(logged)} router log line(s): {shown}")
    if len(lines) == 2:
        lines.append(
            "- None: only 2xx answers, no socket errors, no log line at warning level or above."
        )
    hostmux = [r for r in runs if r["row"].startswith("hostmux") and r.get("ok")]
    if hostmux:
        growth = [r["rss_after_mib"] - r["rss_idle_mib"] for r in hostmux]
        lines.append(
            f"- hostmux router RSS growth over a run (idle → after wrk and the bulk download): "
            f"{min(growth):+.1f} to {max(growth):+.1f} MiB."
        )
    return lines


def render_profile(profile: dict[str, Any]) -> list[str]:
    lines = ["## Where the router's time goes (small requests)", ""]
    if "own" not in profile:
        return [*lines, f"Profile FAILED: {_cell(profile.get('error'), 500)}"]
    svg = profile.get("svg")
    lines += [
        f"`py-spy record --rate 200{' --native' if profile.get('native') else ''}` "
        f"on the router for {profile['duration_s']} s during "
        f"`wrk -t2 -c64` on `/1k` through a fresh hostmux + OpenSSH row "
        f"({profile['samples']:,} samples of busy time; "
        f"{profile.get('idle_worker_samples', 0):,} samples of an idle executor thread, which "
        f"py-spy counted as busy, left out; "
        f"{_fmt(profile.get('wrk_rps_while_sampled'))} req/s while sampled). "
        + (f"Flame graph: [`{svg}`]({svg})." if svg else ""),
        "",
    ]
    if profile.get("kinds"):
        lines += [
            "What ran, by the frame each sample ended in (native stacks: a sample in C "
            "counts for the C it was in, not for the Python that called it):",
            "",
            *_table(
                ["what ran", "share"], [[k["kind"], f"{k['pct']:.1f}%"] for k in profile["kinds"]]
            ),
            "",
        ]
    if profile.get("areas"):
        lines += [
            "In short — share of the router's busy time spent in (a sample counts for every "
            "area on its stack, so shares overlap and need not add up to 100%):",
            "",
            *_table(["area", "share"], [[a["area"], f"{a['pct']:.1f}%"] for a in profile["areas"]]),
            "",
        ]
    lines += [
        "Own time by package (the package of the innermost frame; without native stacks, "
        "time in C code called from Python counts for the calling frame):",
        "",
    ]
    lines += _table(
        ["package", "share"], [[p["package"], f"{p['pct']:.1f}%"] for p in profile["packages"]]
    )
    lines += ["", "Top 15 functions by own time:", ""]
    lines += _table(
        ["#", "function", "file", "own"],
        [
            [str(i), f"`{f['function']}`", f"`{f['file']}`", f"{f['pct']:.1f}%"]
            for i, f in enumerate(profile["own"], 1)
        ],
    )
    inclusive = [f for f in profile["inclusive"] if f["pct"] < 90][:15]
    lines += [
        "",
        "Biggest inclusive shares (a function and all it calls; outer loop frames left out):",
        "",
    ]
    lines += _table(
        ["function", "file", "inclusive"],
        [[f"`{f['function']}`", f"`{f['file']}`", f"{f['pct']:.1f}%"] for f in inclusive],
    )
    return lines


def _run_row(r: dict[str, Any]) -> Row:
    return [
        r["row"], str(r["repeat"]), _fmt(r.get("rps")), _fmt(r.get("p99_ms"), 2),
        _fmt(r.get("errors")), _fmt(r.get("mb_s")), _fmt(r.get("setup_ms")),
        f"{_fmt(r.get('rss_idle_mib'), 1)} → {_fmt(r.get('rss_after_mib'), 1)}",
        "" if r.get("ok") else "FAILED: " + _cell(r.get("error", "")),
    ]  # fmt: skip


def render_runs(runs: list[dict[str, Any]]) -> list[str]:
    header = ["row", "repeat", "req/s", "p99 ms", "errors", "MB/s", "setup ms", "RSS MiB", "note"]
    table = [_run_row(r) for r in runs]
    return ["## Every run", "", *_table(header, table)]


def render(results: dict[str, Any], has_plot: bool) -> str:
    lines = [*render_header(results), "", *render_rows(results)]
    if results.get("scale"):
        lines += ["", *render_scale(results["scale"])]
    if has_plot:
        lines += ["", "![results](results.png)"]
    lines += ["", *render_oddities(results["runs"], results.get("scale"))]
    if results.get("profile"):
        lines += ["", *render_profile(results["profile"])]
    lines += ["", *render_runs(results["runs"])]
    return "\n".join(lines) + "\n"


# -- the plot ------------------------------------------------------------------------------


def plot(results: dict[str, Any], path: Path) -> bool:
    """results.png: req/s and MB/s per row; req/s and RSS vs tunnel count (log x)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    m = medians(results["runs"])
    order = [r for r in results["options"]["rows"] if r in m]
    labels = [
        ROWS[n].label.replace(" (", "\n(").replace(", ", ",\n").replace(" + ", " +\n")
        for n in order
    ]
    colours = [
        "tab:orange" if n.startswith("hostmux") else "tab:red" if n == ANCHOR else "tab:gray"
        for n in order
    ]
    scale = results.get("scale") or {}
    steps = (scale.get("tunnels") or {}).get("steps") or []
    fig, axes = plt.subplots(2 if steps else 1, 2, figsize=(14, 9 if steps else 4.5), squeeze=False)

    def bars(ax: Any, key: str, title: str) -> None:
        values = [m[n][key] or 0 for n in order]
        ax.bar(range(len(order)), values, color=colours)
        ax.set_xticks(range(len(order)), labels, fontsize=7)
        ax.set_title(title)
        for i, v in enumerate(values):
            ax.annotate(f"{v:,.0f}", (i, v), ha="center", va="bottom", fontsize=7)

    bars(axes[0][0], "rps", "small requests: req/s (1 KiB, wrk -c64)")
    bars(axes[0][1], "mb_s", f"bulk: MB/s ({results['options']['bulk_bytes'] >> 20} MiB, curl)")
    if steps:
        ns = [s["n"] for s in steps]
        ax = axes[1][0]
        ax.plot(ns, [s.get("rps") or 0 for s in steps], marker="o")
        ax.set_xscale("log")
        ax.set_ylim(bottom=0)
        ax.set_title("req/s through one tunnel vs idle tunnels held")
        ax.set_xlabel("tunnels N")
        ax = axes[1][1]
        ax.plot(ns, [s.get("rss_mib") or 0 for s in steps], marker="o", label="router RSS MiB")
        ax.axhline(192, color="tab:red", linestyle="--", linewidth=1, label="goal: 192 MiB")
        ka = scale.get("keepalive") or {}
        if ka.get("rss_mib"):
            label = f"{ka['connections']:,} keep-alive connections (1 tunnel)"
            ax.scatter([ka["connections"]], [ka["rss_mib"]], marker="s", color="tab:green",
                       label=label)  # fmt: skip
        ax.set_xscale("log")
        ax.set_ylim(bottom=0)
        ax.set_title("router RSS vs idle tunnels held")
        ax.set_xlabel("tunnels N (or connections)")
        ax.legend(fontsize=8)
    fig.suptitle(f"hostmux benchmark, {results['started'][:16]} (orange: hostmux, red: anchor)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_report(results: dict[str, Any], out: Path) -> bool:
    """Write RESULTS.md and results.png into ``out``; True if a row or a scale part failed."""
    has_plot = plot(results, out / "results.png")
    report = out / "RESULTS.md"
    text = render(results, has_plot)
    # The cluster benchmark's section (bench/cluster.py) is its own run's: keep it.
    old = report.read_text() if report.exists() else ""
    kept = re.search(r"<!-- cluster:begin -->.*?<!-- cluster:end -->\n?", old, re.S)
    report.write_text(text if kept is None else text.rstrip() + "\n\n" + kept.group(0))
    failed = any(a["ok"] == 0 for a in medians(results["runs"]).values())
    scale = results.get("scale") or {}
    return failed or any("error" in (scale.get(p) or {}) for p in ("tunnels", "keepalive"))


def main() -> None:
    """Render RESULTS.md and results.png again from a results.json (same directory)."""
    if len(sys.argv) != 2:
        sys.exit("usage: report.py RESULTS_JSON")
    path = Path(sys.argv[1])
    write_report(json.loads(path.read_text()), path.parent)


if __name__ == "__main__":
    main()
