#!/usr/bin/env bash
# The project's whole test suite, from a fresh Debian 12 machine: installs what is missing, then
# formatting, lints, the protocol core's isolation (its dependencies, and a build without the
# system libraries of the transports), the C library's, unit and property tests, the
# deterministic simulator over many seeds, end-to-end runs of the `conveyor` binary (tests that
# need root are `#[ignore = "needs root"]` and run here only as root), and a short run of every
# fuzz target.
#
#   SIM_SEEDS   simulator seeds (default 6000)       FUZZ_SECONDS per fuzz target (default 30)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
CONVEYOR_SETUP_FUZZ=1 CONVEYOR_SETUP_KAFKA=1 CONVEYOR_SETUP_PY=1 CONVEYOR_SETUP_LINT=1 \
  bash testbed/setup.sh
# The Kafka-protocol baseline's tests must run here, not skip.
export CONVEYOR_REQUIRE_TANSU=1

export SIM_SEEDS="${SIM_SEEDS:-6000}"
FUZZ_SECONDS="${FUZZ_SECONDS:-30}"

section() { echo "== [$(date +%T)] $*"; }

section "cargo fmt --check"
cargo fmt --all -- --check
section "the protocol core and the C library without DPDK, libibverbs, libclang or libelf (a mount namespace hides them)"
# On a fresh clone, in the shared target directory and before anything else is built: nothing
# built with those libraries can be reused, and what it builds (the core, the lean C library)
# is reused after. Elsewhere, in a target directory of its own.
if [ "$(id -u)" -eq 0 ]; then
  shared=""
  [ -e target/debug ] || shared="$PWD/target"  # a fresh clone (CI): build once, here
  nsl_log=$(mktemp)
  if ! CARGO_TARGET_DIR_NO_SYSTEM_LIBS="$shared" bash testbed/no-system-libs.sh > "$nsl_log" 2>&1; then
    # The whole error, not just cargo's last line (a failure here once showed only "could not
    # compile").
    grep -v '^ *Compiling ' "$nsl_log" | tail -n 60
    echo "no-system-libs.sh failed"
    exit 1
  fi
  grep -E '^no-system-libs|^test result' "$nsl_log" || true
  rm -f "$nsl_log"
  lean_so="${shared:-$PWD/target/no-system-libs}/debug/libconveyor.so"
else
  echo "NOT RUN: testbed/no-system-libs.sh needs root (a mount namespace)"
  cargo build -p conveyor-mq --locked
  lean_so=target/debug/libconveyor.so
fi
section "libconveyor.so on its own: none of DPDK, libibverbs, libbpf, nor the bench's crates"
# As built alone (just above, in whichever target directory that was; a workspace build unifies
# the dataplane's features and links DPDK into target/debug's, so a second run of this script
# must not look there).
if ldd "$lean_so" | grep -E 'librte|libibverbs|librdmacm|libelf|libbpf|librdkafka|libz'; then
  echo "libconveyor.so needs the libraries above"; exit 1
fi
if cargo tree -p conveyor-mq -e normal --prefix none --locked | grep -E '^(rdkafka|redis|plotters|indicatif|libbpf-rs|dpdk-sys|rdma-sys) v'; then
  echo "conveyor-mq depends on the crates above"; exit 1
fi
section "the protocol core's dependencies: none of dpdk-sys, rdma-sys, libbpf, libc, crossbeam, tracing"
core_tree="$(cargo tree -p conveyor-core -e normal --prefix none --locked)"
if grep -E '^(dpdk-sys|rdma-sys|libbpf-sys|libbpf-rs|libc|crossbeam[a-z-]*|tracing[a-z-]*) v' <<<"$core_tree"; then
  echo "conveyor-core depends on the crates above"; exit 1
fi
if cargo tree -p conveyor-testbed -e normal --prefix none --locked | grep -q '^conveyor-dataplane v'; then
  echo "conveyor-testbed depends on conveyor-dataplane; it must drive conveyor-core alone"; exit 1
fi
if (cd dataplane/core/fuzz && cargo tree -e normal --prefix none) | grep -q '^conveyor-dataplane v'; then
  echo "the fuzz targets depend on conveyor-dataplane"; exit 1
fi
section "no unused dependencies (cargo machete)"
# (cargo deny's advisory check is not run: its database is on GitHub, which CI cannot reach.)
cargo machete
section "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
section "cargo build"
cargo build --workspace --locked
# The C client library's test links libconveyor.so: the one built alone above was replaced by
# the workspace build's (with every medium), which serves it as well.
section "cargo test (simulator: $SIM_SEEDS seeds; tests that need root: $([ "$(id -u)" -eq 0 ] && echo run || echo 'ignored, not run'))"
if [ "$(id -u)" -eq 0 ]; then
  cargo test --workspace --locked -- --include-ignored
else
  cargo test --workspace --locked
fi
section "simulator totals (the seeds above: views, joins, re-queues, each corner's count)"
cat "${CARGO_TARGET_DIR:-target}/tmp/sim-totals.txt"
section "sharded-deployment simulator totals (forwarding, faults, map moves)"
cat "${CARGO_TARGET_DIR:-target}/tmp/shard-sim-totals.txt"
section "the latency-study suite, quick (every backend, the report and its plots)"
suite_out="$(mktemp -d)/suite"
bash testbed/suite.sh --quick --out "$suite_out" --conveyor target/debug/conveyor
for b in conveyor redis kafka; do
  grep -q "| 2 | $b |" "$suite_out/REPORT.md" || { echo "suite: no $b row in the report"; exit 1; }
done
for f in fig4-constant-udp fig5-ramp-udp fig6-burst-udp fig7-balance-udp; do
  grep -q "<svg" "$suite_out/$f.svg" || { echo "suite: $f.svg is not an SVG"; exit 1; }
done
rm -rf "$(dirname "$suite_out")"
section "ansible/ applied to namespace hosts, verified, applied again (no change)"
bash testbed/ansible-test.sh
section "fuzz targets, ${FUZZ_SECONDS}s each"
(
  cd dataplane/core
  for target in frame member log; do
    # cargo-fuzz needs nightly flags; RUSTC_BOOTSTRAP lets the stable compiler accept them.
    RUSTC_BOOTSTRAP=1 cargo fuzz run "$target" -- -max_total_time="$FUZZ_SECONDS" -rss_limit_mb=2048 2>&1 | tail -n 2
  done
)
(
  cd control/resp
  RUSTC_BOOTSTRAP=1 cargo fuzz run request -- -max_total_time="$FUZZ_SECONDS" -rss_limit_mb=2048 2>&1 | tail -n 2
)
section "all tests passed"
