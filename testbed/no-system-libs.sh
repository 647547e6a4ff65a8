#!/usr/bin/env bash
# The protocol core, and the C client library, build and pass their tests on a machine without
# DPDK, libibverbs, librdmacm, libclang or libelf: shown here, as root, in a mount namespace
# where those packages' headers, libraries, pkg-config files and libclang are out of reach
# (empty directories and files mounted over them), with a target directory of its own (or, in CI,
# the fresh shared one, before anything else is built) so that nothing built with them is
# reused.
#
#   bash testbed/no-system-libs.sh        (root; CI runs it)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
  echo "no-system-libs.sh: needs root (a mount namespace); nothing was run" >&2
  exit 1
fi
target="${CARGO_TARGET_DIR_NO_SYSTEM_LIBS:-}"
export CARGO_TARGET_DIR="${target:-$PWD/target/no-system-libs}"
exec unshare --mount --propagation private bash -s <<'EOF'
set -euo pipefail
empty=$(mktemp -d)
hide() {
  for p in "$@"; do
    if [ -d "$p" ]; then mount --bind "$empty" "$p"
    elif [ -e "$p" ]; then mount --bind /dev/null "$p"; fi
  done
}
hide /usr/include/dpdk /usr/include/infiniband /usr/include/rdma /usr/include/libelf.h \
  /usr/include/gelf.h /usr/lib/llvm-14 /usr/lib/x86_64-linux-gnu/pkgconfig /usr/share/pkgconfig \
  /usr/lib/pkgconfig
for l in /usr/lib/x86_64-linux-gnu/libclang*.so* /usr/lib/x86_64-linux-gnu/librte_*.so* \
  /usr/lib/x86_64-linux-gnu/libibverbs.so* /usr/lib/x86_64-linux-gnu/librdmacm.so* \
  /usr/lib/x86_64-linux-gnu/libelf.so* /usr/lib/x86_64-linux-gnu/libelf-*.so; do
  hide "$l"
done
echo "no-system-libs: hidden: DPDK, libibverbs, librdmacm, libelf headers and libraries, pkg-config files, libclang"
# The control: what the transports need is really out of reach here.
for f in /usr/include/dpdk/rte_eal.h /usr/include/infiniband/verbs.h /usr/include/gelf.h; do
  if [ -s "$f" ]; then echo "no-system-libs: $f is still visible" >&2; exit 1; fi
done
for lib in libdpdk libibverbs librdmacm libelf; do
  if pkg-config --exists "$lib" 2>/dev/null; then echo "no-system-libs: pkg-config still finds $lib" >&2; exit 1; fi
done
if ls /usr/lib/llvm-14/lib/libclang*.so* >/dev/null 2>&1; then echo "no-system-libs: libclang is still visible" >&2; exit 1; fi
echo "no-system-libs: control: pkg-config finds none of libdpdk, libibverbs, librdmacm, libelf; their headers and libclang are gone"
cargo build -p conveyor-core --locked
cargo test -p conveyor-core --locked
echo "no-system-libs: conveyor-core built and passed its tests without them"
cargo build -p conveyor-mq --locked
cargo test -p conveyor-mq --locked
echo "no-system-libs: conveyor-mq (libconveyor.so) built and passed its tests without them"
EOF
