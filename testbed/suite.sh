#!/usr/bin/env bash
# DIFFUSE's four experiments (section 5) for every available backend and transport, and a
# Markdown report with the plots, a table of the figures and the machine description.
#
#   bash testbed/suite.sh [--out DIR] [--quick] [--hosts local|netns] [--backends LIST]
#                         [--transports LIST] [--conveyor PATH]
#
#   --out DIR         where the report, the JSON reports, the plots and the HDR logs go
#                     (default: suite-YYYYmmdd-HHMMSS)
#   --quick           short runs (seconds, not minutes): checks the whole kit works
#   --hosts           local (default) or netns (each member and broker in its own namespace
#                     host; needs root)
#   --backends LIST   comma list; default: conveyor, plus redis if redis-server is installed,
#                     plus kafka if tansu is (a Kafka-protocol broker, not Apache Kafka)
#   --transports LIST Conveyor transports to try (default udp,shm,afxdp,dpdk,rdma); the ones
#                     this build or machine cannot run are listed in the report as such
#   --conveyor PATH   the binary (default: build it with cargo --release)
#
# Every backend of one experiment runs in one `conveyor bench` invocation, one after the other,
# so the figures of a table row come from the same run. Runs on other transports than the
# first add Conveyor-only invocations.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT="suite-$(date +%Y%m%d-%H%M%S)"
QUICK=0
HOSTS=local
BACKENDS=""
TRANSPORTS="udp,shm,afxdp,dpdk,rdma"
BIN=""
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT="$2"; shift 2 ;;
    --quick) QUICK=1; shift ;;
    --hosts) HOSTS="$2"; shift 2 ;;
    --backends) BACKENDS="$2"; shift 2 ;;
    --transports) TRANSPORTS="$2"; shift 2 ;;
    --conveyor) BIN="$2"; shift 2 ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "suite.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$HOSTS" in local|netns) ;; *) echo "suite.sh: --hosts must be local or netns" >&2; exit 2 ;; esac
if [ "$HOSTS" = netns ] && [ "$(id -u)" -ne 0 ]; then
  echo "suite.sh: --hosts netns needs root (network namespaces)" >&2; exit 2
fi
if ! command -v python3 >/dev/null 2>&1; then
  echo "suite.sh: python3 is needed to write the report (apt-get install python3)" >&2; exit 2
fi

export PATH="$HOME/.cargo/bin:$PATH"
if [ -z "$BIN" ]; then
  cargo build --release --locked -p conveyor >&2
  BIN="$PWD/target/release/conveyor"
fi
[ -x "$BIN" ] || { echo "suite.sh: $BIN is not executable" >&2; exit 2; }

if [ -z "$BACKENDS" ]; then
  BACKENDS=conveyor
  command -v redis-server >/dev/null 2>&1 && BACKENDS="$BACKENDS,redis"
  { command -v tansu >/dev/null 2>&1 || [ -n "${CONVEYOR_TANSU:-}" ]; } && BACKENDS="$BACKENDS,kafka"
fi
mkdir -p "$OUT/json" "$OUT/hlog" "$OUT/logs"
OUT="$(cd "$OUT" && pwd)"
echo "suite: backends $BACKENDS, hosts $HOSTS, output $OUT" >&2

# Which transports run here: a one-request probe of each.
RUN_TRANSPORTS=()
: > "$OUT/transports.txt"
IFS=',' read -r -a TRY <<< "$TRANSPORTS"
for t in "${TRY[@]}"; do
  if msg=$("$BIN" bench --backend conveyor --transport "$t" --hosts "$HOSTS" --workload burst \
      --requests 1 --chain 1 --fn-us 1 2>&1 >/dev/null); then
    RUN_TRANSPORTS+=("$t")
    echo "$t	runs" >> "$OUT/transports.txt"
  else
    why=$(printf '%s\n' "$msg" | grep -v '^\s*$' | tail -n 1)
    echo "$t	$why" >> "$OUT/transports.txt"
  fi
done
if [ "${#RUN_TRANSPORTS[@]}" -eq 0 ]; then
  echo "suite: no transport runs here; see $OUT/transports.txt" >&2; exit 1
fi
echo "suite: transports that run: ${RUN_TRANSPORTS[*]}" >&2

if [ "$QUICK" = 1 ]; then
  CHAINS="2 5"; DURATION=2; RAMP_DURATION=3; REQUESTS=1000; BAL_DURATION=4
else
  CHAINS="2 3 4 5"; DURATION=10; RAMP_DURATION=20; REQUESTS=10000; BAL_DURATION=20
fi

# bench NAME TRANSPORT BACKENDS ARGS...: one invocation, its JSON, log and HDR logs.
bench() {
  local name="$1" transport="$2" backends="$3"; shift 3
  echo "suite: $name ($transport; $backends)" >&2
  CONVEYOR_NO_PROGRESS=1 "$BIN" bench --backend "$backends" --transport "$transport" \
    --hosts "$HOSTS" --json "$OUT/json/$name-$transport.json" \
    --hlog "$OUT/hlog/$name-$transport" "$@" 2> "$OUT/logs/$name-$transport.log" \
    || { echo "suite: $name ($transport) failed; its log:" >&2; tail -n 20 "$OUT/logs/$name-$transport.log" >&2; exit 1; }
}

first=1
for t in "${RUN_TRANSPORTS[@]}"; do
  # Baselines do not depend on Conveyor's transport: they run with the first one only.
  if [ "$first" = 1 ]; then b="$BACKENDS"; else b=conveyor; fi
  for c in $CHAINS; do
    bench "constant-chain$c" "$t" "$b" --workload constant --chain "$c" --fn-us 60 \
      --rate 1000 --duration "$DURATION"
  done
  bench ramp "$t" "$b" --workload ramp --chain 3 --fn-us 60 --duration "$RAMP_DURATION" \
    --plot "$OUT/fig5-ramp-$t.svg"
  bench burst "$t" "$b" --workload burst --chain 3 --fn-us 60 --requests "$REQUESTS" \
    --plot "$OUT/fig6-burst-$t.svg"
  bench balance "$t" "$b" --workload balance --chain 1 --fn-us 35000 --rate 40 \
    --duration "$BAL_DURATION" --plot "$OUT/fig7-balance-$t.svg"
  files=()
  for c in $CHAINS; do files+=("$OUT/json/constant-chain$c-$t.json"); done
  "$BIN" plot --out "$OUT/fig4-constant-$t.svg" "${files[@]}" 2>> "$OUT/logs/plot.log"
  first=0
done

# The machine.
{
  echo "cpu	$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
  echo "cores	$(nproc)"
  echo "memory	$(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
  echo "kernel	$(uname -r)"
  echo "os	$(. /etc/os-release && echo "$PRETTY_NAME")"
  echo "conveyor	$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (with local changes)')"
  echo "redis	$(redis-server --version 2>/dev/null | head -n1 || echo 'not installed')"
  echo "kafka-protocol broker	$( (tansu --version || "${CONVEYOR_TANSU:-false}" --version) 2>/dev/null | head -n1 || echo 'not installed') (tansu, not Apache Kafka)"
  echo "hosts	$HOSTS"
} > "$OUT/machine.txt"

python3 - "$OUT" "$QUICK" <<'PY'
import json, os, sys, glob
out, quick = sys.argv[1], sys.argv[2] == "1"
def load(name):
    p = os.path.join(out, "json", name)
    return json.load(open(p)) if os.path.exists(p) else []
machine = [l.rstrip("\n").split("\t", 1) for l in open(os.path.join(out, "machine.txt"))]
transports = [l.rstrip("\n").split("\t", 1) for l in open(os.path.join(out, "transports.txt"))]
runs = [t for t, why in transports if why == "runs"]
L = []
L.append("# Conveyor latency study: DIFFUSE's four experiments")
L.append("")
if quick:
    L.append("**Quick run** (`--quick`): short runs that check the kit works; the figures are not for publication.")
    L.append("")
L.append("Every backend of a table row ran in the same `conveyor bench` invocation, one after the other, on this machine. "
         "Overhead is end-to-end latency minus the functions' own measured time; latency is measured from each request's "
         "intended send time (open loop). The `kafka` backend speaks the Kafka protocol to **tansu**, a Kafka-protocol "
         "broker, not Apache Kafka. Ratios are the baseline's figure over Conveyor's.")
L.append("")
L.append("## Machine")
L.append("")
L.append("| | |")
L.append("|---|---|")
for k, v in machine:
    L.append(f"| {k} | {v} |")
L.append("")
L.append("## Transports")
L.append("")
L.append("| transport | status |")
L.append("|---|---|")
for t, why in transports:
    L.append(f"| {t} | {why} |")
L.append("")
def ratio(a, b):
    return f"{a / b:.2f}x" if a and b else "n/a"
for t in runs:
    L.append(f"## Transport {t}")
    L.append("")
    # Figure 4
    L.append(f"### Constant load: overhead against chain length (DIFFUSE figure 4)")
    L.append("")
    L.append(f"![constant](fig4-constant-{t}.svg)")
    L.append("")
    L.append("| chain | backend | sent | lost | dup | latency p50 us | overhead p50 us | overhead p99 us | overhead p50 vs conveyor |")
    L.append("|---|---|---|---|---|---|---|---|---|")
    for p in sorted(glob.glob(os.path.join(out, "json", f"constant-chain*-{t}.json")),
                    key=lambda p: int(os.path.basename(p).split("chain")[1].split("-")[0])):
        es = json.load(open(p))
        c = next((e for e in es if e["backend"] == "conveyor"), None)
        for e in es:
            r = ratio(e["overhead_us"]["p50"], c["overhead_us"]["p50"]) if c else "n/a"
            L.append(f"| {e['chain']} | {e['backend']} | {e['sent']} | {e['lost']} | {e['duplicates']} | "
                     f"{e['latency_us']['p50']} | {e['overhead_us']['p50']} | {e['overhead_us']['p99']} | {r} |")
    L.append("")
    # Figure 5
    es = load(f"ramp-{t}.json")
    L.append("### Ramp: throughput and latency against offered rate (DIFFUSE figure 5)")
    L.append("")
    L.append(f"![ramp](fig5-ramp-{t}.svg)")
    L.append("")
    L.append("| backend | critical rate req/s | steps served | highest step tried req/s | lost | dup |")
    L.append("|---|---|---|---|---|---|")
    for e in es:
        steps = e.get("steps") or []
        served = sum(1 for s in steps if s.get("served"))
        top = steps[-1]["rate"] if steps else "n/a"
        L.append(f"| {e['backend']} | {e.get('critical_rate_rps')} | {served} of {len(steps)} | {top} | {e['lost']} | {e['duplicates']} |")
    L.append("")
    # Figure 6
    es = load(f"burst-{t}.json")
    L.append("### Burst: latency CDF and drain time (DIFFUSE figure 6)")
    L.append("")
    L.append(f"![burst](fig6-burst-{t}.svg)")
    L.append("")
    L.append("| backend | requests | drain s | functions alone s | added s | added vs conveyor | latency p50 us | p99 us | lost | dup |")
    L.append("|---|---|---|---|---|---|---|---|---|---|")
    c = next((e for e in es if e["backend"] == "conveyor"), None)
    for e in es:
        added = (e["drain_s"] or 0) - (e["drain_floor_s"] or 0)
        cadded = (c["drain_s"] or 0) - (c["drain_floor_s"] or 0) if c else 0
        L.append(f"| {e['backend']} | {e['sent']} | {e['drain_s']:.3f} | {e['drain_floor_s']:.3f} | {added:.3f} | "
                 f"{ratio(added, cadded) if cadded > 0 else 'n/a'} | {e['latency_us']['p50']} | {e['latency_us']['p99']} | {e['lost']} | {e['duplicates']} |")
    L.append("")
    # Figure 7
    es = load(f"balance-{t}.json")
    L.append("### Balance: share of the work with one host saturated (DIFFUSE figure 7)")
    L.append("")
    L.append(f"![balance](fig7-balance-{t}.svg)")
    L.append("")
    L.append("| backend | invoker-0 (shares its core with a CPU hog) | the others | function runs |")
    L.append("|---|---|---|---|")
    for e in es:
        pi = e["per_invoker"]; tot = sum(pi.values()) or 1
        h = pi.get("invoker-0", 0)
        L.append(f"| {e['backend']} | {100 * h / tot:.1f}% | {100 * (tot - h) / tot:.1f}% | {tot} |")
    L.append("")
L.append("## Files")
L.append("")
L.append("`json/` holds every invocation's report (the `conveyor bench` contract), `hlog/` the HdrHistogram "
         "interval logs (one per backend and run), `logs/` what each invocation printed.")
open(os.path.join(out, "REPORT.md"), "w").write("\n".join(L) + "\n")
PY
echo "suite: report written to $OUT/REPORT.md" >&2
