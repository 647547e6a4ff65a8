#!/usr/bin/env bash
# Conveyor's multi-host test bed on one machine: N hosts in network namespaces, each with an
# eth0 on a shared bridge (in a hub namespace of its own, so nothing touches the root
# namespace's interfaces), addresses 10.77.0.1 .. 10.77.0.N/24, and optionally a tc netem
# discipline on every host's eth0 (so every link, both ways, gets it). Needs root.
#
#   netns.sh up N [--prefix P] [--netem "loss 5% delay 50us"] [--queues Q]
#                                                                creates P-h0 .. P-h(N-1), P-hub;
#                                                                Q receive/transmit queues per eth0
#   netns.sh down [--prefix P]                                   removes every namespace P-*
#   netns.sh addr I                                              prints host I's address
#
# Run a command on host I with: ip netns exec P-hI COMMAND
set -euo pipefail

cmd="${1:-}"; shift || true
prefix="cv"
netem=""
n=""
queues=1
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) prefix="$2"; shift 2 ;;
    --netem) netem="$2"; shift 2 ;;
    --queues) queues="$2"; shift 2 ;;
    *) if [ -z "$n" ]; then n="$1"; shift; else echo "netns.sh: unexpected argument $1" >&2; exit 2; fi ;;
  esac
done

addr() { echo "10.77.0.$(( $1 + 1 ))"; }

down() {
  for ns in $(ip netns list | awk '{print $1}' | grep -E "^${prefix}-(h[0-9]+|hub)$" || true); do
    ip netns del "$ns"
  done
}

case "$cmd" in
  up)
    if [ "$(id -u)" -ne 0 ]; then echo "netns.sh: needs root (network namespaces)" >&2; exit 1; fi
    if ! [[ "$n" =~ ^[0-9]+$ ]] || [ "$n" -lt 1 ] || [ "$n" -gt 250 ]; then
      echo "netns.sh: up needs a host count between 1 and 250" >&2; exit 2
    fi
    if ! [[ "$queues" =~ ^[0-9]+$ ]] || [ "$queues" -lt 1 ] || [ "$queues" -gt 64 ]; then
      echo "netns.sh: --queues needs a count between 1 and 64" >&2; exit 2
    fi
    down
    trap 'down' ERR
    ip netns add "${prefix}-hub"
    ip -n "${prefix}-hub" link add br0 type bridge
    ip -n "${prefix}-hub" link set br0 up
    ip -n "${prefix}-hub" link set lo up
    for i in $(seq 0 $(( n - 1 ))); do
      host="${prefix}-h$i"
      port="${prefix}h$i"
      ip netns add "$host"
      ip link add "$port" numtxqueues "$queues" numrxqueues "$queues" type veth \
        peer name eth0 netns "$host" numtxqueues "$queues" numrxqueues "$queues"
      ip link set "$port" netns "${prefix}-hub"
      ip -n "${prefix}-hub" link set "$port" master br0
      ip -n "${prefix}-hub" link set "$port" up
      ip -n "$host" addr add "$(addr "$i")/24" dev eth0
      ip -n "$host" link set eth0 up
      ip -n "$host" link set lo up
      if [ -n "$netem" ]; then
        # shellcheck disable=SC2086
        if ! err=$(ip netns exec "$host" tc qdisc add dev eth0 root netem $netem 2>&1); then
          if grep -q "NET_SCH_NETEM is not set" <(zcat /proc/config.gz 2>/dev/null); then
            echo "netns.sh: this kernel has no netem (CONFIG_NET_SCH_NETEM is not set), so links cannot be given loss or delay here; use conveyor's --impair instead" >&2
          else
            echo "netns.sh: tc netem $netem: $err" >&2
          fi
          down
          exit 1
        fi
      fi
    done
    echo "netns.sh: $n hosts ${prefix}-h0..${prefix}-h$(( n - 1 )) on 10.77.0.0/24${netem:+ with netem \"$netem\"}"
    ;;
  down) down ;;
  addr) addr "$n" ;;
  *) sed -n '2,12p' "$0" >&2; exit 2 ;;
esac
