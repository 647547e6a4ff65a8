#!/usr/bin/env bash
# Installs what building and testing Conveyor needs on a fresh Debian 12 machine (as root, or
# with sudo). Safe to run again: it installs only what is missing.
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

need_apt=()
for cmd_pkg in "cc:build-essential" "pkg-config:pkg-config" "git:git" "ip:iproute2" "curl:curl" "redis-server:redis-server" "python3:python3" "clang:clang" "make:make" "nft:nftables"; do
  cmd="${cmd_pkg%%:*}"; pkg="${cmd_pkg#*:}"
  command -v "$cmd" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if [ ! -e /etc/ssl/certs/ca-certificates.crt ]; then need_apt+=(ca-certificates); fi
# The tests check every /metrics with promtool (Debian's prometheus package; installed for
# that, not to run).
if [ "${CONVEYOR_SETUP_LINT:-0}" = "1" ] && ! command -v promtool >/dev/null 2>&1; then
  need_apt+=(prometheus)
fi
# Real HTTP frameworks the executors are tested against (control/tests/real_http.rs).
if ! python3 -c "import flask" >/dev/null 2>&1; then need_apt+=(python3-flask); fi
# OpenWhisk's Python runtime serves Flask on gevent (control/tests/real_http.rs runs an
# equivalent): Debian's python3-gevent, for PATH's python3 or Debian's own.
if ! python3 -c "import gevent, flask" >/dev/null 2>&1 \
  && ! /usr/bin/python3 -c "import gevent, flask" >/dev/null 2>&1; then
  need_apt+=(python3-gevent python3-flask)
fi
# redis-py (Debian's python3-redis), a Redis client no one here wrote, talks to Conveyor's
# Redis protocol server (control/tests/resp_clients.rs), for PATH's python3 or Debian's own.
if ! python3 -c "import redis" >/dev/null 2>&1 \
  && ! /usr/bin/python3 -c "import redis" >/dev/null 2>&1; then
  need_apt+=(python3-redis)
fi
# ebpf/: libbpf (built from libbpf-sys's bundled source) needs libelf and zlib headers; the XDP
# programs need the kernel's UAPI headers.
# dataplane/dpdk-sys: DPDK 22.11's headers and libraries (with the PMD plugins), and libclang
# for bindgen. The rdma transport: libibverbs and librdmacm (they load without a device).
for hdr_pkg in "/usr/include/gelf.h:libelf-dev" "/usr/include/zlib.h:zlib1g-dev" \
  "/usr/include/linux/bpf.h:linux-libc-dev" "/usr/include/dpdk/rte_eal.h:libdpdk-dev" \
  "/usr/lib/llvm-14/lib/libclang.so:libclang-dev" \
  "/usr/include/infiniband/verbs.h:libibverbs-dev" "/usr/include/rdma/rdma_cma.h:librdmacm-dev"; do
  [ -e "${hdr_pkg%%:*}" ] || need_apt+=("${hdr_pkg#*:}")
done
if [ "${#need_apt[@]}" -gt 0 ]; then
  echo "setup: installing ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
  # prometheus is installed for its promtool (the tests check /metrics with it), not to run.
  if [[ " ${need_apt[*]} " == *" prometheus "* ]] && [ -d /run/systemd/system ]; then
    $SUDO systemctl disable --now prometheus >/dev/null 2>&1 || true
  fi
fi

# Rust: the workspace's rust-version or newer. Debian 12's rustc (1.63) is far too old, so a
# machine without a recent toolchain gets rustup's stable one, as Rust users install it
# (rustup-init from static.rust-lang.org, its SHA-256 checked, into ~/.cargo and ~/.rustup).
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
want="$(sed -n 's/^rust-version *= *"\([0-9.]*\)".*/\1/p' "$(dirname "$0")/../Cargo.toml" | head -n1)"
rust_ok() {
  local have
  have="$(rustc --version 2>/dev/null | awk '{print $2}')" || return 1
  [ -n "$have" ] && [ "$(printf '%s\n%s\n' "$want" "${have%%-*}" | sort -V | head -n1)" = "$want" ]
}
if ! rust_ok; then
  if command -v rustup >/dev/null 2>&1; then
    echo "setup: rustc ${want} or newer needed ($(rustc --version 2>/dev/null || echo none)); rustup: installing stable"
    rustup toolchain install stable --profile minimal -c rustfmt -c clippy
    rustup default stable
  else
    echo "setup: rustc ${want} or newer needed ($(rustc --version 2>/dev/null || echo none found)); installing rustup's stable toolchain"
    arch="$(uname -m)-unknown-linux-gnu"
    url="https://static.rust-lang.org/rustup/dist/${arch}/rustup-init"
    tmp="$(mktemp -d)"
    curl --proto '=https' --tlsv1.2 -sSf -o "$tmp/rustup-init" "$url"
    curl --proto '=https' --tlsv1.2 -sSf -o "$tmp/rustup-init.sha256" "$url.sha256"
    (cd "$tmp" && echo "$(awk '{print $1}' rustup-init.sha256)  rustup-init" | sha256sum -c --quiet)
    chmod +x "$tmp/rustup-init"
    "$tmp/rustup-init" -y --no-modify-path --profile minimal --default-toolchain stable \
      -c rustfmt -c clippy
    rm -rf "$tmp"
  fi
  rust_ok || { echo "setup: still no rustc ${want} or newer on PATH ($PATH)"; exit 1; }
fi

if command -v rustup >/dev/null 2>&1; then
  for c in rustfmt clippy; do
    rustup component list --installed 2>/dev/null | grep -q "^$c" || rustup component add "$c"
  done
fi

if [ "${CONVEYOR_SETUP_PY:-0}" = "1" ]; then
  # Real third-party components from PyPI for the tests, each set in a venv of its own (their
  # pins differ): function runtimes (awslambdaric, Mangum, FastAPI, uvicorn) and Apache
  # Airflow with its OpenFaaS hook, pinned in testbed/functions/requirements*.txt.
  root="$(cd "$(dirname "$0")/.." && pwd)"
  pyvenv() {
    local venv="$root/target/$1" req="$root/testbed/functions/$2"
    if cmp -s "$req" "$venv/requirements.txt" 2>/dev/null; then return; fi
    if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
      $SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends python3-venv
    fi
    echo "setup: installing $req into $venv"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check -r "$req"
    cp "$req" "$venv/requirements.txt"
  }
  pyvenv py-functions requirements.txt
  pyvenv py-airflow requirements-airflow.txt
fi
if [ "${CONVEYOR_SETUP_LINT:-0}" = "1" ] && ! cargo machete --version >/dev/null 2>&1; then
  # Dependencies declared and never used (testbed/test.sh fails on any).
  echo "setup: installing cargo-machete"
  cargo install cargo-machete --locked --version 0.9.2
fi
if [ "${CONVEYOR_SETUP_FUZZ:-0}" = "1" ] && ! cargo fuzz --version >/dev/null 2>&1; then
  echo "setup: installing cargo-fuzz"
  cargo install cargo-fuzz --locked --version 0.13.2
fi
if [ "${CONVEYOR_SETUP_KAFKA:-0}" = "1" ] && ! command -v tansu >/dev/null 2>&1 \
  && [ ! -x "$HOME/.cargo/bin/tansu" ]; then
  # --backend kafka's broker: tansu, a Kafka-protocol broker written in Rust (not Apache
  # Kafka, which the registries reachable here do not offer). The feature is needed for its
  # in-memory storage. About 8 minutes on 2 cores.
  echo "setup: installing tansu 0.6.0 (Kafka-protocol broker) for conveyor bench --backend kafka"
  cargo install tansu --version 0.6.0 --features dynostore --locked
fi
echo "setup: done ($(cargo --version))"
