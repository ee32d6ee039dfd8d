#!/usr/bin/env bash
# Router CPU per request, before and after a change, side by side on a quiet many-core
# machine without network: the hostmux + OpenSSH row (and the sshd + nginx anchor),
# the two trees run alternately, ROUNDS rounds (medians over them). Bounded: each run
# is a few seconds of wrk; the whole script is about 5 minutes.
#   Here:   bash bench/device_bundle.sh (writes .device-bundle/), then
#           git archive BEFORE_REV | tar -x -C .device-before && echo BEFORE_REV > .device-before/REVISION
#   There:  bash bench/device_ab.sh            (tables under $OUT, default /tmp/device-ab)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/device-ab}
rounds=${ROUNDS:-3}
mkdir -p "$out"
if [ -d .device-bundle ]; then
  bash .device-bundle/setup.sh
  export PYTHONPATH=$PWD/.device-bundle/site:$PWD
  python=python3
else
  python=.venv/bin/python
fi
git rev-parse --short HEAD > REVISION 2>/dev/null || echo "after (the working tree)" > REVISION
common=(--no-install --no-scale --no-profile --repeats 1 --duration "${DURATION:-5}" --warmup 1
        --bulk-mib 10 --bulk-count 1)
for round in $(seq "$rounds"); do
  for side in before after; do
    code=.; [ "$side" = before ] && code=.device-before
    rows=hostmux-openssh; [ "$round" = 1 ] && rows=sshd-nginx-ka,hostmux-openssh
    timeout 300 "$python" bench/run.py "${common[@]}" --code "$code" --rows "$rows" \
      --out "$out/$side-$round" > "$out/$side-$round.log" 2>&1 || echo "$side-$round failed" >&2
    grep -h "router CPU" "$out/$side-$round.log" | sed "s/^/$side-$round: /" || true
  done
done
"$python" - "$out" "$rounds" <<'PY'
import json, statistics, sys
from pathlib import Path
out, rounds = Path(sys.argv[1]), int(sys.argv[2])
rows = []
for side in ("before", "after"):
    cpu, rps = [], []
    for r in range(1, rounds + 1):
        path = out / f"{side}-{r}" / "results.json"
        if not path.is_file():
            continue
        for run in json.loads(path.read_text())["runs"]:
            if run.get("row") == "hostmux-openssh" and run.get("router_cpu_us"):
                cpu.append(run["router_cpu_us"])
                rps.append(run.get("rps") or 0)
    if cpu:
        rows.append((side, len(cpu), statistics.median(cpu), statistics.median(rps), cpu))
lines = ["| tree | runs | router CPU µs/req (median) | req/s (median) | each run µs/req |", "|---|---|---|---|---|"]
lines += [f"| {s} | {n} | {c:.1f} | {r:,.0f} | {', '.join(f'{x:.1f}' for x in each)} |" for s, n, c, r, each in rows]
if len(rows) == 2:
    lines.append(f"\nafter / before router CPU per request: {rows[1][2] / rows[0][2]:.3f}")
text = "\n".join(lines)
(out / "AB.md").write_text(text + "\n")
print(text)
PY
