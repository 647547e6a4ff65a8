#!/usr/bin/env bash
# The protocol core, and the C client library, build and pass their tests on a machine without
# DPDK, libibverbs, librdmacm, libclang or libelf: shown here, as root, in a mount namespace
# where those packages' headers, libraries, pkg-config files and libclang are out of reach
# (empty directories and files mounted over them), with a target directory of its own so that
# nothing built with them is reused. As a control, the dataplane's dpdk feature must fail to
# build in the same place.
#
#   bash testbed/no-system-libs.sh        (root; CI runs it)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
  echo "no-system-libs.sh: needs root (a mount namespace); nothing was run" >&2
  exit 1
fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR_NO_SYSTEM_LIBS:-$PWD/target/no-system-libs}"
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
if pkg-config --exists libdpdk 2>/dev/null; then echo "no-system-libs: libdpdk is still visible" >&2; exit 1; fi
cargo build -p conveyor-core --locked
cargo test -p conveyor-core --locked
echo "no-system-libs: conveyor-core built and passed its tests without them"
cargo build -p conveyor-mq --locked
cargo test -p conveyor-mq --locked
echo "no-system-libs: conveyor-mq (libconveyor.so) built and passed its tests without them"
if cargo build -p conveyor-dataplane --features dpdk --locked >/tmp/no-system-libs-control.log 2>&1; then
  echo "no-system-libs: the control failed: the dataplane's dpdk feature built, so DPDK was not hidden" >&2
  exit 1
fi
echo "no-system-libs: control: the dataplane with DPDK does not build here ($(grep -m1 -o 'libdpdk[^"]*was not found[^"]*\|could not find[^"]*libdpdk[^"]*' /tmp/no-system-libs-control.log || echo 'see /tmp/no-system-libs-control.log'))"
EOF
