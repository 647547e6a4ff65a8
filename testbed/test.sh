#!/usr/bin/env bash
# The project's whole test suite, from a fresh Debian 12 machine: installs what is missing, then
# formatting, lints, unit and property tests, the deterministic simulator over many seeds,
# end-to-end runs of the `conveyor` binary, and a short run of every fuzz target.
#
#   SIM_SEEDS   simulator seeds (default 6000)       FUZZ_SECONDS per fuzz target (default 30)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
CONVEYOR_SETUP_FUZZ=1 CONVEYOR_SETUP_KAFKA=1 bash testbed/setup.sh
# The Kafka-protocol baseline's tests must run here, not skip.
export CONVEYOR_REQUIRE_TANSU=1

export SIM_SEEDS="${SIM_SEEDS:-6000}"
FUZZ_SECONDS="${FUZZ_SECONDS:-30}"

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo build (the binary and libconveyor.so, which the C client library's test links)"
cargo build --workspace --locked
echo "== cargo test (simulator: $SIM_SEEDS seeds)"
cargo test --workspace --locked
echo "== the latency-study suite, quick (every backend, the report and its plots)"
suite_out="$(mktemp -d)/suite"
bash testbed/suite.sh --quick --out "$suite_out" --conveyor target/debug/conveyor
for b in conveyor redis kafka; do
  grep -q "| 2 | $b |" "$suite_out/REPORT.md" || { echo "suite: no $b row in the report"; exit 1; }
done
for f in fig4-constant-udp fig5-ramp-udp fig6-burst-udp fig7-balance-udp; do
  grep -q "<svg" "$suite_out/$f.svg" || { echo "suite: $f.svg is not an SVG"; exit 1; }
done
rm -rf "$(dirname "$suite_out")"
echo "== ansible/ applied to namespace hosts, verified, applied again (no change)"
bash testbed/ansible-test.sh
echo "== fuzz targets, ${FUZZ_SECONDS}s each"
(
  cd dataplane/core
  for target in frame member; do
    # cargo-fuzz needs nightly flags; RUSTC_BOOTSTRAP lets the stable compiler accept them.
    RUSTC_BOOTSTRAP=1 cargo fuzz run "$target" -- -max_total_time="$FUZZ_SECONDS" -rss_limit_mb=2048 2>&1 | tail -n 2
  done
)
echo "== all tests passed"
