#!/usr/bin/env bash
# The partition-heal sequence of issue 19 on the real control plane of ../shared/realk8s (three
# kube-apiservers v1.28, etcd, kube-controller-manager; anonymous auth off, as RKE2/K3s run it):
#   1. three copies of the daemon, one per node kubeconfig, in the namespace eco-ha;
#   2. a follower's apiserver is cut off (every packet dropped) for CUT seconds, then revived;
#   3. the leader's host dies: its daemon SIGKILLed, its apiserver black-holed.
# Prints when the follower's client answered again and restarted its silent watches, and how long
# after the leader's death the dead apiserver left default/kubernetes-vip.
#
# Usage (as root, after ../shared/realk8s/build.sh): tests/realk8s/partition-heal.sh [BINARY]
#   BINARY defaults to target/debug/endpoint-copier. CUT (default 25) sets the cut's length.
# Needs nothing else; leaves the control plane running (ha-stop.sh stops it), logs in $OUT.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
RK=${RK:-$(cd .. && pwd)/shared/realk8s}
REALK8S=${REALK8S:-$(cd .. && pwd)/realk8s}
BIN=$(realpath "${1:-target/debug/endpoint-copier}")
CUT=${CUT:-25}
OUT=${OUT:-$(mktemp -d /tmp/partition-heal.XXXX)}
say() { printf '%s %s\n' "$(date +%H:%M:%S.%3N)" "$*"; }
now() { date +%s.%N; }
k() { "$RK/ha-exec.sh" kubectl "$@"; }

"$RK/ha-stop.sh" >/dev/null 2>&1 || true
HA_ANONYMOUS_AUTH=false "$RK/ha-start.sh" >"$OUT/ha-start.log" 2>&1
k apply -f - >/dev/null <<'YAML'
apiVersion: v1
kind: Service
metadata: {name: kubernetes-vip, namespace: default, labels: {serviceType: kubernetes-vip}}
spec:
  type: LoadBalancer
  ports: [{name: k8s-api, port: 6443, targetPort: 6443, protocol: TCP}]
YAML

pids=()
for n in 1 2 3; do
  mkdir -p "$OUT/node$n/config.d" "$OUT/node$n/run"
  cat >"$OUT/node$n/config.d/50-site.toml" <<TOML
kubeconfig = "$REALK8S/ha/node$n.kubeconfig"
[lease]
identity = "node-$n"
runtime_dir = "$OUT/node$n/run"
[metrics]
listen = ""
TOML
  ip netns exec eco-ha env ENDPOINT_COPIER_LOG=info "$BIN" --config-dir "$OUT/node$n/config.d" run \
    >"$OUT/node$n.log" 2>&1 &
  pids[$n]=$!
done
ready() { k get endpointslice -n default kubernetes-vip \
  -o jsonpath='{range .endpoints[?(@.conditions.ready==true)]}{.addresses[0]} {end}' 2>/dev/null || true; }
until [ "$(ready | wc -w)" = 3 ]; do sleep 0.2; done
say "kubernetes-vip: $(ready)"
leader=$(k get lease -n kube-system endpoint-copier -o jsonpath='{.spec.holderIdentity}')
L=${leader#node-}; F=$(( L % 3 + 1 ))
# Read through a node that stays up: node 1's kubeconfig (the default) may be the dying one's.
export HA_NODE=$(( F % 3 + 1 )); [ "$HA_NODE" = "$L" ] && HA_NODE=$F
say "leader node-$L; cutting off node-$F for $CUT s"
sleep 12   # two member heartbeats, so every copy has seen the others renew
"$RK/ha-kill.sh" "$F" --partition >/dev/null
sleep "$CUT"
healed=$(now)
"$RK/ha-revive.sh" "$F" >/dev/null
say "node-$F healed"
until grep -q "answers again" "$OUT/node$F.log"; do sleep 0.1; done
line=$(grep "answers again" "$OUT/node$F.log" | tail -1)
at=$(date -d "$(cut -d' ' -f1 <<<"$line")" +%s.%N)
say "node-$F's watches started over $(awk -v a="$healed" -v b="$at" 'BEGIN { printf "%.2f", b - a }') s after the heal: ${line#* }"
until [ "$(ready | wc -w)" = 3 ]; do sleep 0.2; done
sleep 12
say "node-$L's host dies (daemon SIGKILLed, apiserver black-holed)"
died=$(now)
kill -KILL "${pids[$L]}"
"$RK/ha-kill.sh" "$L" --blackhole >/dev/null
until r=$(ready) && [ -n "$r" ] && ! grep -qw "192.0.2.$L" <<<"$r"; do
  awk -v a="$died" -v b="$(now)" 'BEGIN { exit !(b - a > 60) }' && { say "FAIL: 192.0.2.$L still ready after 60 s"; exit 1; }
  sleep 0.1
done
out=$(awk -v a="$died" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }')
say "192.0.2.$L out of kubernetes-vip $out s after its host died; ready now: $(ready)"
conflicts=$(cat "$OUT"/node*.log | grep -c "conflict" || true)
say "log lines about conflicts: $conflicts"
for n in 1 2 3; do [ "$n" = "$L" ] || kill -TERM "${pids[$n]}" 2>/dev/null || true; done
wait 2>/dev/null || true
"$RK/ha-revive.sh" "$L" >/dev/null
echo "logs: $OUT"
