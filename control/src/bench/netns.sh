#!/usr/bin/env bash
# Conveyor's multi-host test bed on one machine: N hosts in network namespaces, each with an
# eth0 on a shared bridge (in a hub namespace of its own, so nothing touches the root
# namespace's interfaces), addresses 10.77.0.1 .. 10.77.0.N/24, and optionally loss and
# duplication on every host's eth0 egress (so every link, both ways, gets it), made by the
# kernel: nftables rules (`numgen random`) in a netdev egress chain, for every IP packet, UDP
# and TCP alike (where the kernel has no netem), or a tc netem discipline. Needs root.
#
#   netns.sh up N [--prefix P] [--netloss "loss=20%,dup=10%"] [--netem "loss 5% delay 50us"]
#                 [--queues Q]
#                                                                creates P-h0 .. P-h(N-1), P-hub;
#                                                                Q receive/transmit queues per eth0
#   netns.sh down [--prefix P]                                   removes every namespace P-*
#   netns.sh addr I                                              prints host I's address
#   netns.sh netloss-counters [--prefix P]                       packets each host's rules
#                                                                dropped and duplicated
#
# Run a command on host I with: ip netns exec P-hI COMMAND
set -euo pipefail

cmd="${1:-}"; shift || true
prefix="cv"
netem=""
netloss=""
n=""
queues=1
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) prefix="$2"; shift 2 ;;
    --netem) netem="$2"; shift 2 ;;
    --netloss) netloss="$2"; shift 2 ;;
    --queues) queues="$2"; shift 2 ;;
    *) if [ -z "$n" ]; then n="$1"; shift; else echo "netns.sh: unexpected argument $1" >&2; exit 2; fi ;;
  esac
done

addr() { echo "10.77.0.$(( $1 + 1 ))"; }

# "loss=20%,dup=10%" -> "2000 1000" (hundredths of a percent), or an error naming the field.
parse_netloss() {
  local loss=0 dup=0 item key val
  IFS=',' read -ra items <<< "$1"
  for item in "${items[@]}"; do
    key="${item%%=*}"; val="${item#*=}"
    if ! [[ "$item" == *=* && "$val" =~ ^([0-9]+)(\.([0-9]{1,2}))?%$ ]]; then
      echo "netns.sh: --netloss: '$item' is not KEY=PERCENT% (for example loss=20%,dup=10%)" >&2; return 2
    fi
    local frac="${BASH_REMATCH[3]}"
    while [ "${#frac}" -lt 2 ]; do frac="${frac}0"; done
    val=$(( 10#${BASH_REMATCH[1]} * 100 + 10#$frac ))
    if [ "$val" -gt 10000 ]; then
      echo "netns.sh: --netloss: '$item' is over 100%" >&2; return 2
    fi
    case "$key" in
      loss) loss="$val" ;;
      dup) dup="$val" ;;
      *) echo "netns.sh: --netloss: unknown key '$key' (loss, dup)" >&2; return 2 ;;
    esac
  done
  echo "$loss $dup"
}

# Loss then duplication on host $1's eth0 egress: a packet is dropped with probability loss,
# and one that is sent is sent twice with probability dup. Every IPv4 packet (ARP is left
# alone, so that neighbours resolve).
netloss_rules() {
  local host="$1" loss="$2" dup="$3"
  ip netns exec "$host" nft -f - <<NFT
table netdev conveyor_netloss {
  chain egress {
    type filter hook egress device "eth0" priority 0; policy accept;
    meta protocol ip numgen random mod 10000 < $loss counter drop
    meta protocol ip numgen random mod 10000 < $dup counter dup to "eth0"
  }
}
NFT
}

down() {
  for ns in $(ip netns list | awk '{print $1}' | grep -E "^${prefix}-(h[0-9]+|hub)$" || true); do
    # What still runs in a host (members of an interrupted bench) goes with it.
    ip netns pids "$ns" 2>/dev/null | xargs -r kill 2>/dev/null || true
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
    if [ -n "$netloss" ]; then
      rates=$(parse_netloss "$netloss") || exit 2
      if ! command -v nft >/dev/null; then
        echo "netns.sh: --netloss needs nftables (apt-get install nftables)" >&2; exit 1
      fi
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
      if [ -n "$netloss" ]; then
        # shellcheck disable=SC2086
        if ! err=$(netloss_rules "$host" $rates 2>&1); then
          echo "netns.sh: nftables loss rules on $host: $err" >&2
          down
          exit 1
        fi
      fi
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
    echo "netns.sh: $n hosts ${prefix}-h0..${prefix}-h$(( n - 1 )) on 10.77.0.0/24${netem:+ with netem \"$netem\"}${netloss:+ with kernel-made \"$netloss\" on every egress}"
    ;;
  down) down ;;
  addr) addr "$n" ;;
  netloss-counters)
    # What the rules did on each host: "HOST dropped=PACKETS duplicated=PACKETS".
    for ns in $(ip netns list | awk '{print $1}' | grep -E "^${prefix}-h[0-9]+$" || true); do
      ip netns exec "$ns" nft list table netdev conveyor_netloss 2>/dev/null \
        | awk -v h="$ns" '/counter/ { for (i = 1; i < NF; i++) if ($i == "packets") p[++k] = $(i + 1) }
            END { if (k) printf "%s dropped=%s duplicated=%s\n", h, p[1], p[2] }'
    done
    ;;
  *) sed -n '2,18p' "$0" >&2; exit 2 ;;
esac
