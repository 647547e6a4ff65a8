#!/usr/bin/env bash
# Two `conveyor` binaries, one workload, runs alternating A and B in one sitting (this machine
# is shared and noisy: compare only within one run), then the medians side by side and B's as
# a ratio of A's.
#
#   bash testbed/ab.sh --a OLD_BINARY --b NEW_BINARY [--runs 3] -- BENCH_ARGS...
#   e.g. bash testbed/ab.sh --a /tmp/conveyor-old --b target/release/conveyor -- \
#          --workload burst --requests 10000
#
# Prints one line per run and a summary; the JSON reports are kept in --out (default: a
# temporary directory, printed). A run that fails is said and left out of the medians.
set -euo pipefail
a="" b="" runs=3 out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --a) a="$2"; shift 2 ;;
    --b) b="$2"; shift 2 ;;
    --runs) runs="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --) shift; break ;;
    *) echo "ab.sh: unexpected $1 (bench arguments go after --)" >&2; exit 2 ;;
  esac
done
[ -x "$a" ] && [ -x "$b" ] || { echo "ab.sh: --a and --b must be conveyor binaries" >&2; exit 2; }
out="${out:-$(mktemp -d)}"
mkdir -p "$out"
for i in $(seq 1 "$runs"); do
  for side in a b; do
    bin="$a"; [ "$side" = b ] && bin="$b"
    if ! "$bin" bench "$@" --json "$out/$side-$i.json" >/dev/null 2>"$out/$side-$i.log"; then
      # A run that could not complete is counted and left out of the medians, not hidden.
      echo "$side$i: FAILED: $(grep -m1 'error' "$out/$side-$i.log" | tail -c 200)"
      rm -f "$out/$side-$i.json"
      continue
    fi
    python3 - "$out/$side-$i.json" "$side" "$i" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))[0]
drain = f", drain {r['drain_s']:.3f} s" if r.get("drain_s") is not None else ""
print(f"{sys.argv[2]}{sys.argv[3]}: completed {r['completed']}/{r['sent']}, lost {r['lost']}, dup {r['duplicates']}, "
      f"latency p50 {r['latency_us']['p50']} p99 {r['latency_us']['p99']} us, "
      f"overhead p50 {r['overhead_us']['p50']} p99 {r['overhead_us']['p99']} us, "
      f"{r['throughput_rps']:.0f} req/s{drain}")
EOF
  done
done
python3 - "$out" "$runs" <<'EOF'
import json, statistics, sys
out, runs = sys.argv[1], int(sys.argv[2])
import os
def load(side):
    return [json.load(open(f"{out}/{side}-{i}.json"))[0]
            for i in range(1, runs + 1) if os.path.exists(f"{out}/{side}-{i}.json")]
A, B = load("a"), load("b")
if not A or not B:
    sys.exit("ab.sh: no completed run on one side")
rows = [("latency p50 us", lambda r: r["latency_us"]["p50"]),
        ("latency p99 us", lambda r: r["latency_us"]["p99"]),
        ("overhead p50 us", lambda r: r["overhead_us"]["p50"]),
        ("overhead p99 us", lambda r: r["overhead_us"]["p99"]),
        ("throughput req/s", lambda r: r["throughput_rps"])]
if all(r.get("drain_s") is not None for r in A + B):
    rows.append(("drain s", lambda r: r["drain_s"]))
print(f"medians of {runs} alternating runs, {len(A)} of A and {len(B)} of B completed (reports in {out}):")
print(f"{'':18} {'A':>10} {'B':>10} {'B/A':>6}")
for name, f in rows:
    ma, mb = statistics.median(map(f, A)), statistics.median(map(f, B))
    print(f"{name:18} {ma:>10.3f} {mb:>10.3f} {mb / ma if ma else float('nan'):>6.2f}")
EOF
