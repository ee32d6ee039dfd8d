#!/usr/bin/env bash
# CI smoke run of the benchmark: every row and the scale benchmark at small sizes
# (2 s loads, 1 repeat, 10 MiB bulk, 1 and 100 tunnels, 100 keep-alive connections),
# in under 2 minutes. Writes to $1 (default /tmp/hostmux-bench-smoke), never to
# bench/RESULTS.md. Fails if a row or a scale part failed, or if the router's CPU per
# request (hostmux + OpenSSH) is over 4x the asyncssh pipe ceiling's in this run (the
# last line says the ratio); other goals are only reported.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-/tmp/hostmux-bench-smoke}
exec timeout --signal=TERM --kill-after=30 300 .venv/bin/python bench/run.py --quick --max-cpu-ratio 4 --out "$out"
