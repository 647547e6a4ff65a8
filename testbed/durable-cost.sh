#!/usr/bin/env bash
# What durable queues cost (issue 21), in one sitting, runs alternating: Conveyor in memory,
# Conveyor --durable beside Redis with `appendfsync always` (one invocation), and Redis with
# `appendfsync everysec`; each round runs all three, then the medians and the ratios against
# Conveyor in memory of the same sitting.
#
#   bash testbed/durable-cost.sh [--runs 3] [--out DIR] -- BENCH_ARGS...
#   e.g. bash testbed/durable-cost.sh -- --workload constant --chain 2 --rate 1000 --duration 10
#        bash testbed/durable-cost.sh -- --workload burst --requests 10000 --chain 3
#
# Needs redis-server (the bench starts it). A run that fails is said and left out.
set -euo pipefail
runs=3 out="" bin="${CONVEYOR:-target/release/conveyor}"
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --) shift; break ;;
    *) echo "durable-cost.sh: unexpected $1 (bench arguments go after --)" >&2; exit 2 ;;
  esac
done
[ -x "$bin" ] || { echo "durable-cost.sh: no $bin (cargo build --release, or set CONVEYOR)" >&2; exit 2; }
out="${out:-$(mktemp -d)}"
mkdir -p "$out"
echo "reports in $out"
for i in $(seq 1 "$runs"); do
  for side in memory durable everysec; do
    case "$side" in
      memory) extra=(--backend conveyor) ;;
      durable) extra=(--durable --backend conveyor,redis --redis-aof always) ;;
      everysec) extra=(--backend redis --redis-aof everysec) ;;
    esac
    if ! "$bin" bench "$@" "${extra[@]}" --json "$out/$side-$i.json" >/dev/null 2>"$out/$side-$i.log"; then
      echo "$side $i: FAILED: $(grep -m1 -i 'error' "$out/$side-$i.log" | tail -c 200)"
      rm -f "$out/$side-$i.json"
      continue
    fi
    echo "$side $i: done"
  done
done
python3 - "$out" "$runs" <<'EOF'
import json, os, statistics, sys
out, runs = sys.argv[1], int(sys.argv[2])
cols = {}
for side in ("memory", "durable", "everysec"):
    for i in range(1, runs + 1):
        p = f"{out}/{side}-{i}.json"
        if not os.path.exists(p):
            continue
        for r in json.load(open(p)):
            if r["backend"] == "conveyor":
                name = "conveyor --durable" if r.get("durable") else "conveyor (memory)"
            else:
                name = f"redis appendfsync {r.get('redis_aof')}"
            cols.setdefault(name, []).append(r)
rows = [("completed / sent", None),
        ("latency p50 us", lambda r: r["latency_us"]["p50"]),
        ("latency p99 us", lambda r: r["latency_us"]["p99"]),
        ("overhead p50 us", lambda r: r["overhead_us"]["p50"]),
        ("overhead p99 us", lambda r: r["overhead_us"]["p99"]),
        ("throughput req/s", lambda r: r["throughput_rps"]),
        ("drain s", lambda r: r.get("drain_s"))]
base = cols.get("conveyor (memory)")
order = ["conveyor (memory)", "conveyor --durable", "redis appendfsync always", "redis appendfsync everysec"]
names = [n for n in order if n in cols]
print("medians of", ", ".join(f"{n}: {len(cols[n])} runs" for n in names))
print("| | " + " | ".join(names) + " |")
print("|---" * (len(names) + 1) + "|")
for label, f in rows:
    cells = []
    for n in names:
        rs = cols[n]
        if f is None:
            cells.append(", ".join(f"{r['completed']}/{r['sent']}" for r in rs))
            continue
        vals = [f(r) for r in rs if f(r) is not None]
        if not vals:
            cells.append("")
            continue
        m = statistics.median(vals)
        cell = f"{m:.3f}" if label == "drain s" else f"{m:.0f}"
        if base and n != "conveyor (memory)":
            bvals = [f(r) for r in base if f(r) is not None]
            if bvals and statistics.median(bvals) > 0:
                cell += f" ({m / statistics.median(bvals):.2f}x)"
        cells.append(cell)
    print(f"| {label} | " + " | ".join(cells) + " |")
EOF
