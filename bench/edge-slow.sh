#!/usr/bin/env bash
# Rate matching at the edge: does a slow client slow the fill? An origin, an edge and two
# clients in network namespaces this script creates and deletes (origin side 10.97.0.0/24,
# client side 10.97.1.0/24; the slow client's link shaped by `tbf` in the hub). The origin
# sends at --rate; the slow client's link carries --slow-rate (1 % of it by default).
#
# Cases, interleaved run by run: "fast" (one unshaped client of the object), "fast+slow" (the
# slow client asks first, the fast one right after). Each run starts a new edge on an empty
# disk tier, so each run is one fill of the same object from the origin (a new session).
# Fill time: the edge's own figure (/status, last_fill_seconds: from the fill's start until
# every block is in the cache). The fast client's time (curl's time_total) beside it.
#
# Usage: bench/edge-slow.sh [--size 64M] [--runs 5] [--rate 40M] [--slow-rate 3200kbit]
#                           [--bin target/release/blockcast] [--work /tmp/blockcast-edge-slow]
set -uo pipefail

SIZE=64M
RUNS=5
RATE=40M
SLOW=3200kbit
BIN=""
WORK=/tmp/blockcast-edge-slow
while [ $# -gt 0 ]; do
  case "$1" in
    --size) SIZE=$2; shift 2 ;;
    --runs) RUNS=$2; shift 2 ;;
    --rate) RATE=$2; shift 2 ;;
    --slow-rate) SLOW=$2; shift 2 ;;
    --bin) BIN=$2; shift 2 ;;
    --work) WORK=$2; shift 2 ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "unknown option: $1" >&2; exit 2 ;;
  esac
done

ROOT=$(cd "$(dirname "$0")/.." && pwd)
[ -n "$BIN" ] || BIN=$ROOT/target/release/blockcast
. "$ROOT/bench/lib/netns.sh"
GUARD=$(ns_guard_path "$ROOT")
P=bcedg
SRV=10.97.0.1
EDGE_UP=10.97.0.2
EDGE=10.97.1.1
FAST=10.97.1.2
SLOWIP=10.97.1.3

log() { echo "[edge-slow] $*" >&2; }
die() { log "error: $*"; exit 1; }
[ "$(id -u)" = 0 ] || die "needs root (network namespaces)"
for t in ip tc curl jq; do command -v $t >/dev/null || die "needs $t"; done
[ -x "$BIN" ] || die "no binary $BIN"

ALL_NS=("$P-hub" "$P-srv" "$P-edge" "$P-fast" "$P-slow")
ns_cleanup_on_exit "$WORK/edge-disk" "$WORK/catalog"
ip netns add "$P-hub"
ip -n "$P-hub" link set lo up
for br in br0 br1; do
  ip -n "$P-hub" link add $br type bridge mcast_snooping 0
  ip -n "$P-hub" link set $br up
done
link() {  # namespace-name address bridge hub-port inner-name
  local ns=$P-$1
  ip netns list | grep -qw "^$ns" || { ip netns add "$ns"; ip -n "$ns" link set lo up; }
  ip link add "$4" netns "$P-hub" type veth peer name "$5" netns "$ns"
  ip -n "$P-hub" link set "$4" master "$3" up
  ip -n "$ns" link set "$5" up
  ip -n "$ns" addr add "$2/24" dev "$5"
}
link srv $SRV br0 q-srv veth0
ip -n "$P-srv" route add 224.0.0.0/4 dev veth0
link edge $EDGE_UP br0 q-edge veth0
ip -n "$P-edge" route add 224.0.0.0/4 dev veth0
link edge $EDGE br1 q-edge1 veth1
link fast $FAST br1 q-fast veth0
link slow $SLOWIP br1 q-slow veth0
# What the hub sends toward the slow client: shaped.
tc -n "$P-hub" qdisc add dev q-slow root tbf rate "$SLOW" burst 32kb latency 400ms

rm -rf "$WORK"
mkdir -p "$WORK/catalog"
head -c "$(numfmt --from=iec "${SIZE%B}")" /dev/urandom > "$WORK/catalog/.obj.tmp"
mv "$WORK/catalog/.obj.tmp" "$WORK/catalog/obj.bin"
BYTES=$(stat -c %s "$WORK/catalog/obj.bin")

ip netns exec "$P-srv" "$BIN" origin --catalog "$WORK/catalog" --iface $SRV --listen $SRV:9100 \
  --groups 239.255.97.0/24 --settle 0 --rescan 0.2 --no-hash-cache --batch-window 0.05 \
  --join-grace 0.5 --rate "$RATE" --metrics $SRV:9300 -q > "$WORK/origin.log" 2>&1 &
for _ in $(seq 300); do
  n=$(ip netns exec "$P-srv" curl -s http://$SRV:9300/metrics | awk '$1=="blockcast_origin_catalog_objects"{print $2}')
  [ "$n" = 1 ] && break
  sleep 0.1
done
[ "$n" = 1 ] || die "the origin did not publish the object"

CSV=$WORK/runs.csv
echo "run,case,fill_s,fast_client_s,slow_client_bytes" > "$CSV"
one_run() {  # run case
  rm -rf "$WORK/edge-disk"
  ip netns exec "$P-edge" "$BIN" edge --origin $SRV:9100 --iface $EDGE_UP --http $EDGE:8080 \
    --ram 256M --disk "$WORK/edge-disk" --disk-size 1G -q > "$WORK/edge-$1.log" 2>&1 &
  local edge_pid=$!
  for _ in $(seq 200); do
    ip netns exec "$P-fast" curl -sf -o /dev/null http://$EDGE:8080/status && break
    sleep 0.05
  done
  local slow_pid=""
  if [ "$2" = fast+slow ]; then
    ip netns exec "$P-slow" curl -s --max-time 600 -o "$WORK/slow.bin" http://$EDGE:8080/obj.bin &
    slow_pid=$!
    # The slow client's request is in (its response started) before the fast one asks.
    for _ in $(seq 200); do
      [ -s "$WORK/slow.bin" ] && break
      sleep 0.02
    done
  fi
  local t
  t=$(ip netns exec "$P-fast" curl -s --max-time 120 -o "$WORK/fast.bin" -w '%{time_total}' http://$EDGE:8080/obj.bin)
  cmp -s "$WORK/fast.bin" "$WORK/catalog/obj.bin" || die "run $1: the fast client's copy differs"
  local fill=""
  for _ in $(seq 200); do
    fill=$(ip netns exec "$P-fast" curl -s http://$EDGE:8080/status | jq -r '.objects[] | select(.name=="obj.bin") | .last_fill_seconds // empty')
    [ -n "$fill" ] && break
    sleep 0.05
  done
  local slow_bytes=0
  if [ -n "$slow_pid" ]; then
    slow_bytes=$(stat -c %s "$WORK/slow.bin")
    kill "$slow_pid" 2>/dev/null; wait "$slow_pid" 2>/dev/null
    rm -f "$WORK/slow.bin"
  fi
  kill -INT "$edge_pid"; wait "$edge_pid"
  echo "$1,$2,$fill,$t,$slow_bytes" >> "$CSV"
  log "run $1 $2: fill ${fill}s, fast client ${t}s, slow client had $slow_bytes bytes"
}
for r in $(seq 1 "$RUNS"); do
  one_run "$r" fast
  one_run "$r" fast+slow
done

median() { sort -g | awk '{a[NR]=$1} END{printf "%.3f", (NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2}'; }
slowest() { sort -g | tail -1 | awk '{printf "%.3f", $1}'; }
echo
echo "object $BYTES bytes, origin --rate $RATE, slow client link $SLOW, $RUNS runs per case"
echo
echo "| case | fill median (s) | fill slowest (s) | fast client median (s) |"
echo "|---|---|---|---|"
for c in fast fast+slow; do
  f=$(awk -F, -v c=$c '$2==c{print $3}' "$CSV")
  t=$(awk -F, -v c=$c '$2==c{print $4}' "$CSV")
  echo "| $c | $(echo "$f" | median) | $(echo "$f" | slowest) | $(echo "$t" | median) |"
done
fm=$(awk -F, '$2=="fast"{print $3}' "$CSV" | median)
sm=$(awk -F, '$2=="fast+slow"{print $3}' "$CSV" | median)
echo
echo "fill time ratio (fast+slow / fast, medians): $(echo "$sm $fm" | awk '{printf "%.3f", $1/$2}')"
echo "every run: $CSV"
