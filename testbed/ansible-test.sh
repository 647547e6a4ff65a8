#!/usr/bin/env bash
# Tests ansible/ for real: ansible-lint and --syntax-check, then site.yml applied to three hosts
# made in network namespaces (each with its own sshd; the controller in a fourth namespace),
# the verify play across them, and a second apply that must change nothing. The packages
# role runs first against this machine (localhost, which has a route to the mirror); the
# namespace hosts then find the packages installed (they have no route out).
#
# Needs root. Outside root it says that it did not run (and fails under CI=true).
#   ANSIBLE_KEEP=1   leaves the hosts and services up afterwards (for a look)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
if [ "$(id -u)" -ne 0 ]; then
  echo "ansible-test: NOT RUN: needs root (network namespaces, sshd, /etc)"
  [ "${CI:-}" = "true" ] && exit 1
  exit 0
fi
prefix=ans
work="$root/target/ansible-test"
venv="$root/target/ansible-venv"
mkdir -p "$work"

# The controller's tools, pinned.
need=()
command -v sshd >/dev/null 2>&1 || [ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v start-stop-daemon >/dev/null 2>&1 || need+=(dpkg)
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
if [ "${#need[@]}" -gt 0 ]; then
  echo "ansible-test: installing ${need[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
if ! "$venv/bin/pip" freeze 2>/dev/null | sort | grep -qxF "$(grep -E '^ansible-core==' ansible/requirements.txt)"; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip
  "$venv/bin/pip" install -q -r ansible/requirements.txt
fi
export PATH="$venv/bin:$PATH"
export ANSIBLE_CONFIG="$root/ansible/ansible.cfg"
export ANSIBLE_FORCE_COLOR=0 ANSIBLE_NOCOLOR=1
# Connection multiplexing sockets of this run only (a master left from a run whose namespaces
# are gone would hang the next one).
cpdir="$(mktemp -d /tmp/conveyor-ansible-cp.XXXXXX)"
export ANSIBLE_SSH_CONTROL_PATH_DIR="$cpdir"

echo "== ansible-lint"
(cd ansible && ansible-lint --offline --nocolor)
echo "== ansible-playbook --syntax-check"
for inv in local netns connectx; do
  (cd ansible && ansible-playbook -i "inventories/$inv/hosts.yml" site.yml verify.yml --syntax-check >/dev/null)
done

echo "== build the release the playbook copies"
cargo build --release --locked -p conveyor
# Without debug information: a fifth of the size to copy to every host.
objcopy --strip-debug target/release/conveyor "$work/conveyor"

pids=()
cleanup() {
  if [ "${ANSIBLE_KEEP:-0}" = "1" ]; then
    echo "ansible-test: left up (ANSIBLE_KEEP=1): namespaces $prefix-*, sshd pids ${pids[*]:-}"
    return
  fi
  for name in trigger invoker-0 invoker-1 control; do
    if [ -x /usr/local/sbin/conveyor-service ]; then
      ip netns exec "$prefix-h0" /usr/local/sbin/conveyor-service stop "$name" >/dev/null 2>&1 || true
    fi
  done
  for sock in "$cpdir"/*; do
    [ -S "$sock" ] && ssh -O exit -o ControlPath="$sock" x >/dev/null 2>&1 || true
  done
  rm -rf "$cpdir"
  for p in "${pids[@]}"; do
    pkill -P "$p" 2>/dev/null || true   # its sessions
    kill "$p" 2>/dev/null || true
  done
  bash testbed/netns.sh down --prefix "$prefix" || true
}
trap cleanup EXIT

echo "== packages role against this machine (it has the route to the mirror)"
(cd ansible && ansible-playbook -i inventories/local/hosts.yml site.yml --tags packages \
  -e conveyor_packages_dpdk_enabled=true -e conveyor_packages_rdma_enabled=true \
  --limit trigger | tail -n 4)

echo "== three hosts in namespaces, each with its own sshd"
bash testbed/netns.sh up 4 --prefix "$prefix"
rm -f "$work/id" "$work/id.pub" "$work/host_key" "$work/host_key.pub"
ssh-keygen -q -t ed25519 -N '' -f "$work/id"
ssh-keygen -q -t ed25519 -N '' -f "$work/host_key"
cp "$work/id.pub" "$work/authorized_keys"
chmod 600 "$work/authorized_keys"
mkdir -p /run/sshd
for i in 0 1 2; do
  addr="$(bash testbed/netns.sh addr "$i")"
  ip netns exec "$prefix-h$i" /usr/sbin/sshd -D -e \
    -o "ListenAddress=$addr" -o "HostKey=$work/host_key" \
    -o "AuthorizedKeysFile=$work/authorized_keys" -o PermitRootLogin=prohibit-password \
    -o PasswordAuthentication=no -o UsePAM=no -o StrictModes=no \
    -o "PidFile=$work/sshd-$i.pid" 2>"$work/sshd-$i.log" &
  pids+=($!)
done
export CONVEYOR_ANSIBLE_KEY="$work/id"
ctl() { ip netns exec "$prefix-h3" env PATH="$PATH" "$@"; }
for i in 0 1 2; do
  addr="$(bash testbed/netns.sh addr "$i")"
  for _ in $(seq 50); do
    ctl ssh -q -i "$work/id" -o BatchMode=yes -o StrictHostKeyChecking=no \
      -o UserKnownHostsFile=/dev/null "root@$addr" true 2>/dev/null && break
    sleep 0.2
  done
done

run() {
  (cd ansible && ctl ansible-playbook -i inventories/netns/hosts.yml \
    -e "conveyor_binary_src=$work/conveyor" -e "conveyor_verify_results=$work/verify" "$@")
}
echo "== a group key published with Conveyor is refused, naming what to do"
published="$(printf '0%.0s' $(seq 63))1"
if run site.yml -e "conveyor_group_key=$published" >"$work/refused.log" 2>&1; then
  echo "ansible-test: site.yml accepted the published group key" >&2
  exit 1
fi
grep -q "conveyor_group_key must be 64 hexadecimal digits" "$work/refused.log" \
  || { cat "$work/refused.log" >&2; exit 1; }
echo "== site.yml, first apply"
run site.yml | tee "$work/apply1.log" | tail -n 6
echo "== the systemd units it wrote pass systemd-analyze verify (no systemd runs them here)"
for unit in /etc/systemd/system/conveyor-*.service; do
  grep -q '^User=conveyor$' "$unit" || { echo "ansible-test: $unit runs as root" >&2; exit 1; }
  found="$(systemd-analyze verify "$unit" 2>&1 | grep -v 'Unit configured to use KillMode=none' || true)"
  [ -z "$found" ] || { echo "ansible-test: $unit: $found" >&2; exit 1; }
done
echo "== site.yml, second apply: nothing may change"
run site.yml | tee "$work/apply2.log" | tail -n 6
if grep -E '^h[0-9] +:' "$work/apply2.log" | grep -vqE 'changed=0 .*failed=0'; then
  echo "ansible-test: the second apply changed something:" >&2
  # The task of each change, and the logs of the services (a member that stopped between the
  # applies is started again, which is a change).
  grep -E '^TASK|^(changed|ok|skipping):' "$work/apply2.log" | grep -B1 -E '^changed:' >&2 || true
  for f in /var/log/conveyor/*.log; do echo "-- $f" >&2; tail -n 30 "$f" >&2; done
  exit 1
fi
echo "== the installed group serves (control plane: view with three members)"
ok=0
for _ in $(seq 100); do
  # Any order: a member that was suspected (150 ms failure timeout on a loaded machine) and
  # rejoined comes last.
  if ctl curl -sf "http://10.77.0.1:7500/v1/view" 2>/dev/null | python3 -c 'import json, sys; sys.exit(sorted(json.load(sys.stdin)["members"]) != ["invoker-0", "invoker-1", "trigger"])'; then ok=1; break; fi
  sleep 0.2
done
ctl curl -sf "http://10.77.0.1:7500/v1/view" || true; echo
[ "$ok" = 1 ] || { echo "ansible-test: the installed group did not form a view of three" >&2; exit 1; }
echo "== verify.yml across the hosts"
run verify.yml | tee "$work/verify.log" | grep -E 'verified:|failed:|PLAY RECAP|^h[0-9] ' || true
grep -q 'verified: 2000 requests' "$work/verify.log" || { echo "ansible-test: verify failed" >&2; tail -40 "$work/verify.log" >&2; exit 1; }
if grep -E '^h[0-9] +:' "$work/verify.log" | grep -vqE 'failed=0'; then echo "ansible-test: verify failed" >&2; exit 1; fi
echo "== testbed/experiment.sh across the hosts (2 runs), results in one folder"
ctl bash testbed/experiment.sh -i ansible/inventories/netns/hosts.yml --runs 2 \
  --requests 1000 --rate 1000 --chain 2 --fn-us 20 --out "$work/experiment" \
  -- -e "conveyor_binary_src=$work/conveyor"
for f in run-1/report.json run-2/report.json run-1/latency.hlog run-2/latency.hlog run-1/latency.hgrm summary.json summary.md hosts/h0; do
  [ -s "$work/experiment/$f" ] || { echo "ansible-test: the experiment left no $f" >&2; exit 1; }
done
grep -q 'HISTF' "$work/experiment/run-1/latency.hlog" || { echo "ansible-test: latency.hlog holds no histogram" >&2; exit 1; }
echo "== site.yml with two shards: every member runs a member of each, the control plane shows both"
# The namespace hosts share one /etc: the first host's apply rewrites the group file for all,
# so the others see no change and would not restart. Stopped first, every service is started
# by the apply with the new file (on real hosts the template's change restarts each).
for svc in control trigger invoker-0 invoker-1; do /usr/local/sbin/conveyor-service stop "$svc" || true; done
run site.yml -e conveyor_shards=2 -e '{"conveyor_shard_place": {"demo.classify": 1}}' \
  | tee "$work/apply-shards.log" | tail -n 6
if grep -E '^h[0-9] +:' "$work/apply-shards.log" | grep -vqE 'failed=0'; then
  echo "ansible-test: the sharded apply failed" >&2; exit 1
fi
ip netns exec "$prefix-h0" /opt/conveyor/bin/conveyor check --config /etc/conveyor/group.toml \
  | tee "$work/check-shards.log"
grep -q 'queue demo.classify on shard 1 (placed)' "$work/check-shards.log" \
  || { echo "ansible-test: the group file has no shards" >&2; exit 1; }
ok=0
for _ in $(seq 150); do
  if ctl curl -sf "http://10.77.0.1:7500/v1/shards" 2>/dev/null | python3 -c 2>/dev/null '
import json, sys
d = json.load(sys.stdin)
sys.exit(not (len(d["shards"]) == 2 and all(sorted(s["members"]) == ["invoker-0", "invoker-1", "trigger"] and s["map_version"] == 1 for s in d["shards"])))'; then ok=1; break; fi
  sleep 0.2
done
ctl curl -sf "http://10.77.0.1:7500/v1/shards" | head -c 600 || true; echo
[ "$ok" = 1 ] || { echo "ansible-test: the sharded group did not form two views of three with the map" >&2; for f in /var/log/conveyor/*.log; do echo "-- $f" >&2; tail -n 20 "$f" >&2; done; exit 1; }
echo "== ansible: all passed"
