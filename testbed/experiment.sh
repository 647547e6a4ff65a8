#!/usr/bin/env bash
# Runs an experiment across the hosts of an Ansible inventory (Conveyor installed by
# ansible/site.yml) and collects everything into one results folder:
#   OUT/run-K/report.json     the trigger's JSON report of run K
#   OUT/run-K/latency.hlog    its HdrHistogram interval log (end-to-end latency, microseconds)
#   OUT/run-K/latency.hgrm    its percentile distribution (milliseconds; hdr-plot reads it)
#   OUT/hosts/HOST.json       each host's description (CPU, kernel, NICs: Ansible facts)
#   OUT/summary.json, OUT/summary.md   medians over the runs, per-run figures, the command
#
# Each run is a verification group of its own on the same hosts (ansible/verify.yml, ports +50),
# so the installed group keeps serving. Fails if a run loses or duplicates a request.
#
#   testbed/experiment.sh -i ansible/inventories/connectx/hosts.yml --runs 5 \
#       --workload constant --rate 1000 --requests 10000 --chain 3 --fn-us 60 [--out DIR]
#
# Extra arguments after -- go to ansible-playbook (e.g. -- --ask-vault-pass).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
inv="" runs=3 workload=constant rate=1000 requests=5000 chain=3 fn_us=60 out="" name=experiment
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    -i|--inventory) inv="$2"; shift 2 ;;
    --runs) runs="$2"; shift 2 ;;
    --workload) workload="$2"; shift 2 ;;
    --rate) rate="$2"; shift 2 ;;
    --requests) requests="$2"; shift 2 ;;
    --chain) chain="$2"; shift 2 ;;
    --fn-us) fn_us="$2"; shift 2 ;;
    --name) name="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --) shift; extra=("$@"); break ;;
    *) echo "experiment.sh: unknown option $1 (see the comment at the top)" >&2; exit 2 ;;
  esac
done
[ -n "$inv" ] || { echo "experiment.sh: -i INVENTORY is required" >&2; exit 2; }
[ -f "$inv" ] || { echo "experiment.sh: no inventory at $inv" >&2; exit 2; }
case "$workload" in constant|burst) ;; *) echo "experiment.sh: --workload is constant or burst, not $workload" >&2; exit 2 ;; esac
for v in runs rate requests chain fn_us; do
  [[ "${!v}" =~ ^[0-9]+$ ]] && [ "${!v}" -gt 0 ] || { echo "experiment.sh: --${v//_/-} must be a positive integer, not ${!v}" >&2; exit 2; }
done
inv="$(cd "$(dirname "$inv")" && pwd)/$(basename "$inv")"
out="${out:-$root/results/$name-$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$out/hosts"
out="$(cd "$out" && pwd)"
if ! command -v ansible-playbook >/dev/null 2>&1 && [ -x "$root/target/ansible-venv/bin/ansible-playbook" ]; then
  export PATH="$root/target/ansible-venv/bin:$PATH"
fi
command -v ansible-playbook >/dev/null 2>&1 || { echo "experiment.sh: ansible-playbook not found (pip install -r ansible/requirements.txt)" >&2; exit 1; }
export ANSIBLE_CONFIG="$root/ansible/ansible.cfg"
cd "$root/ansible"

echo "experiment: $runs run(s) of $workload, $requests requests, rate $rate/s, chain $chain x ${fn_us} us -> $out"
# Each host's description: one line per host, "HOST | SUCCESS => {facts}".
ansible -i "$inv" conveyor_members -m ansible.builtin.setup -a 'gather_subset=hardware,network' \
  -o "${extra[@]}" > "$out/hosts.txt"
python3 - "$out" <<'PY'
import json, os, sys
out = sys.argv[1]
for line in open(os.path.join(out, "hosts.txt")):
    host, sep, rest = line.partition(" | SUCCESS => ")
    if sep:
        json.dump(json.loads(rest), open(os.path.join(out, "hosts", host.strip()), "w"), indent=1)
os.remove(os.path.join(out, "hosts.txt"))
PY
for k in $(seq 1 "$runs"); do
  echo "== run $k of $runs"
  ansible-playbook -i "$inv" verify.yml \
    -e "conveyor_verify_workload=$workload" -e "conveyor_verify_rate=$rate" \
    -e "conveyor_verify_requests=$requests" -e "conveyor_verify_chain=$chain" \
    -e "conveyor_verify_fn_us=$fn_us" -e "conveyor_verify_results=$out/run-$k" \
    "${extra[@]}" > "$out/run-$k.log" 2>&1 || { echo "experiment.sh: run $k failed; see $out/run-$k.log" >&2; tail -20 "$out/run-$k.log" >&2; exit 1; }
  grep -o 'verified: [^"]*' "$out/run-$k.log" | head -1
done

python3 - "$out" "$runs" "$workload" "$requests" "$rate" "$chain" "$fn_us" "$inv" <<'PY'
import json, os, statistics, sys
out, runs = sys.argv[1], int(sys.argv[2])
workload, requests, rate, chain, fn_us, inv = sys.argv[3:9]
reps = [json.load(open(os.path.join(out, f"run-{k}", "report.json"))) for k in range(1, runs + 1)]
def med(f):
    return statistics.median(f(r) for r in reps)
summary = {
    "workload": workload, "requests": int(requests), "rate": float(rate), "chain": int(chain),
    "fn_us": int(fn_us), "inventory": inv, "runs": runs,
    "median": {
        "latency_p50_us": med(lambda r: r["latency_us"]["p50"]),
        "latency_p99_us": med(lambda r: r["latency_us"]["p99"]),
        "overhead_p50_us": med(lambda r: r["overhead_us"]["p50"]),
        "overhead_p99_us": med(lambda r: r["overhead_us"]["p99"]),
        "throughput_rps": med(lambda r: r["throughput_rps"]),
    },
    "lost": sum(r["lost"] for r in reps), "duplicates": sum(r["duplicates"] for r in reps),
    "per_run": [{k: r[k] for k in ("completed", "lost", "duplicates", "throughput_rps", "drain_s")}
                | {"latency_p50_us": r["latency_us"]["p50"], "latency_p99_us": r["latency_us"]["p99"]}
                for r in reps],
}
hosts = {}
for f in sorted(os.listdir(os.path.join(out, "hosts"))):
    try:
        facts = json.load(open(os.path.join(out, "hosts", f))).get("ansible_facts", {})
    except (OSError, ValueError):
        continue
    hosts[f] = {
        "cpu": (facts.get("ansible_processor") or ["?", "?", "?"])[-1],
        "vcpus": facts.get("ansible_processor_vcpus"),
        "memory_mb": facts.get("ansible_memtotal_mb"),
        "kernel": facts.get("ansible_kernel"),
        "os": f'{facts.get("ansible_distribution", "?")} {facts.get("ansible_distribution_version", "")}',
    }
summary["hosts"] = hosts
json.dump(summary, open(os.path.join(out, "summary.json"), "w"), indent=2)
m = summary["median"]
lines = [
    f"# Experiment: {workload}, {requests} requests at {rate}/s, chain {chain} x {fn_us} us",
    "", f"Inventory `{inv}`, {runs} runs; medians over the runs.", "",
    "| figure | median |", "|---|---|",
] + [f"| {k} | {v} |" for k, v in m.items()] + [
    "", f"Lost {summary['lost']}, duplicates {summary['duplicates']} (all runs).", "",
    "| run | completed | latency p50 us | p99 us | throughput/s |", "|---|---|---|---|---|",
] + [f"| {i + 1} | {r['completed']} | {r['latency_p50_us']} | {r['latency_p99_us']} | {r['throughput_rps']} |"
     for i, r in enumerate(summary["per_run"])] + [
    "", "| host | CPU | vCPUs | memory MB | kernel | OS |", "|---|---|---|---|---|---|",
] + [f"| {h} | {d['cpu']} | {d['vcpus']} | {d['memory_mb']} | {d['kernel']} | {d['os']} |" for h, d in hosts.items()] + [
    "", "Latency interval logs (HdrHistogram): `run-K/latency.hlog`; percentiles: `run-K/latency.hgrm`.", ""]
open(os.path.join(out, "summary.md"), "w").write("\n".join(lines))
print(f"experiment: medians latency p50 {m['latency_p50_us']} us, p99 {m['latency_p99_us']} us; lost {summary['lost']}, duplicates {summary['duplicates']}")
PY
echo "experiment: results in $out"
