"""The side-by-side benchmark: ``python bench/run.py`` (see bench/README.md).

Runs the shared harness's anchors and the hostmux rows in one run, writes
``bench/RESULTS.md``, then checks the performance goals against the
"sshd + nginx, keepalive" anchor (``ssh-unix-ka``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import hostmux_rows  # noqa: E402,F401  (registers the hostmux rows)
import peers  # noqa: E402

DEFAULT_ROWS = "direct,nginx-proxy-ka,ssh-unix-ka,hostmux-openssh,hostmux-listener,hostmux-tls"
ANCHOR = "ssh-unix-ka"


def goals(results: list[dict]) -> str:
    def median(name: str, key: str) -> float | None:
        values = sorted(r[key] for r in results if r["system"] == name and r["ok"] and r.get(key))
        return values[len(values) // 2] if values else None

    anchor = {k: median(ANCHOR, k) for k in ("ok_rps", "p99_ms", "mb_s", "setup_ms")}
    lines = [
        "",
        "## Goals (ratios against sshd + nginx, keepalive, same run)",
        "",
        "| goal | hostmux | anchor | ratio | met |",
        "|---|---|---|---|---|",
    ]

    def row(label: str, name: str, key: str, want: float, higher: bool) -> None:
        ours, theirs = median(name, key), anchor[key]
        if ours is None or theirs is None:
            lines.append(f"| {label} | — | — | — | not measured |")
            return
        ratio = ours / theirs
        met = ratio >= want if higher else ratio <= want
        lines.append(
            f"| {label} | {ours:,.1f} | {theirs:,.1f} | {ratio:.2f}x | {'yes' if met else 'NO'} |"
        )

    row("small requests req/s >= 1.0x", "hostmux-openssh", "ok_rps", 1.0, True)
    row("p99 latency <= 1.0x", "hostmux-openssh", "p99_ms", 1.0, False)
    row("bulk MB/s >= 1.5x", "hostmux-openssh", "mb_s", 1.5, True)
    row("tunnel setup <= 0.5x", "hostmux-openssh", "setup_ms", 0.5, False)
    for key, label in (("ok_rps", "req/s"), ("mb_s", "bulk MB/s")):
        ours, base = median("hostmux-listener", key), median("hostmux-openssh", key)
        if ours and base:
            ok = ours / base >= 0.8
            lines.append(
                f"| listener {label} >= 0.8x OpenSSH client | {ours:,.1f} | {base:,.1f} | "
                f"{ours / base:.2f}x | {'yes' if ok else 'NO'} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    argv = sys.argv[1:]
    if not any(a.startswith("--only") for a in argv):
        argv += ["--only", DEFAULT_ROWS]
    if not any(a.startswith("--out") for a in argv):
        argv += ["--out", str(HERE / "RESULTS.md")]
    json_path = Path("/tmp") / "hostmux-bench.json"
    if not any(a.startswith("--json") for a in argv):
        argv += ["--json", str(json_path)]
    out = Path(argv[argv.index("--out") + 1])
    json_path = Path(argv[argv.index("--json") + 1])
    sys.argv = [sys.argv[0], *argv, "--title", "# hostmux benchmark results"]
    peers.main()
    results = json.loads(json_path.read_text())
    table = goals(results)
    print(table)
    if str(out) != "-":
        command = "python bench/run.py " + " ".join(sys.argv[1:-2])
        out.write_text(out.read_text() + table + f"\nProduced by: `{command}`\n")


if __name__ == "__main__":
    main()
