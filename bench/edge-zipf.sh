#!/usr/bin/env bash
# Hit ratio and origin bytes of the edge for a replayed Zipf request trace. One network
# namespace this script creates and deletes, loopback only: an origin with --objects objects
# of --object-size bytes, and one edge with a small RAM tier and a disk tier smaller than the
# catalog. The trace: --requests names drawn with Zipf(--skew) popularity over the objects
# (object k, ranked from 1, asked for with probability proportional to 1/k^skew), from a fixed
# seed, written to WORK/trace.txt by the Python below; requests are replayed one after the
# other with curl, each body checked against the catalog's file.
# Hit ratio: requests that started no fill (1 - fills / requests; the edge's /status counts
# fills the origin granted); byte hit ratio: 1 - origin bytes / bytes sent to clients.
#
# Usage: bench/edge-zipf.sh [--objects 40] [--object-size 2M] [--requests 400] [--skew 1.0]
#                           [--ram 4M] [--disk-size 24M] [--seed 1]
#                           [--bin target/release/blockcast] [--work /tmp/blockcast-edge-zipf]
set -uo pipefail

OBJECTS=40
OSIZE=2M
REQUESTS=400
SKEW=1.0
RAM=4M
DISK=24M
SEED=1
BIN=""
WORK=/tmp/blockcast-edge-zipf
while [ $# -gt 0 ]; do
  case "$1" in
    --objects) OBJECTS=$2; shift 2 ;;
    --object-size) OSIZE=$2; shift 2 ;;
    --requests) REQUESTS=$2; shift 2 ;;
    --skew) SKEW=$2; shift 2 ;;
    --ram) RAM=$2; shift 2 ;;
    --disk-size) DISK=$2; shift 2 ;;
    --seed) SEED=$2; shift 2 ;;
    --bin) BIN=$2; shift 2 ;;
    --work) WORK=$2; shift 2 ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "unknown option: $1" >&2; exit 2 ;;
  esac
done
ROOT=$(cd "$(dirname "$0")/.." && pwd)
[ -n "$BIN" ] || BIN=$ROOT/target/release/blockcast
GUARD=/work/shared/tools/net-guard
NS=bcezipf
L=127.0.0.1

log() { echo "[edge-zipf] $*" >&2; }
die() { log "error: $*"; exit 1; }
[ "$(id -u)" = 0 ] || die "needs root (a network namespace)"
for t in ip curl jq python3; do command -v $t >/dev/null || die "needs $t"; done
[ -x "$BIN" ] || die "no binary $BIN"

cleanup() {
  local rc=$? pid
  trap - EXIT INT TERM
  for pid in $(ip netns pids $NS 2>/dev/null); do kill -KILL "$pid" 2>/dev/null; done
  ip netns del $NS 2>/dev/null
  rm -rf "$WORK/catalog" "$WORK/disk" "$WORK/got.bin"
  log "namespace deleted; $("$GUARD" check)"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM
ip netns del $NS 2>/dev/null
ip netns add $NS
ip -n $NS link set lo up
in_ns() { ip netns exec $NS "$@"; }

rm -rf "$WORK"
mkdir -p "$WORK/catalog"
BYTES=$(numfmt --from=iec "${OSIZE%B}")
for k in $(seq 1 "$OBJECTS"); do
  head -c "$BYTES" /dev/urandom > "$WORK/catalog/.o$k.tmp"
  mv "$WORK/catalog/.o$k.tmp" "$WORK/catalog/o$k.bin"
done
python3 - "$OBJECTS" "$REQUESTS" "$SKEW" "$SEED" > "$WORK/trace.txt" <<'EOF'
import random, sys
n, m, s, seed = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
rng = random.Random(seed)
weights = [1.0 / (k ** s) for k in range(1, n + 1)]
for k in rng.choices(range(1, n + 1), weights=weights, k=m):
    print(f"o{k}.bin")
EOF
DISTINCT=$(sort -u "$WORK/trace.txt" | wc -l)

in_ns "$BIN" origin --catalog "$WORK/catalog" --iface $L --listen $L:9100 --groups 239.255.99.0/24 \
  --settle 0 --rescan 0.2 --no-hash-cache --batch-window 0.02 --join-grace 0.5 \
  --metrics $L:9300 -q > "$WORK/origin.log" 2>&1 &
for _ in $(seq 600); do
  n=$(in_ns curl -s http://$L:9300/metrics | awk '$1=="blockcast_origin_catalog_objects"{print $2}')
  [ "$n" = "$OBJECTS" ] && break
  sleep 0.1
done
[ "$n" = "$OBJECTS" ] || die "the origin did not publish the objects"
in_ns "$BIN" edge --origin $L:9100 --iface $L --http $L:8081 --ram "$RAM" --disk "$WORK/disk" \
  --disk-size "$DISK" -q > "$WORK/edge.log" 2>&1 &
for _ in $(seq 200); do
  in_ns curl -sf -o /dev/null http://$L:8081/status && break
  sleep 0.05
done

start=$(date +%s.%N)
while read -r name; do
  in_ns curl -sf --max-time 60 -o "$WORK/got.bin" "http://$L:8081/$name" || die "$name: request failed"
  cmp -s "$WORK/got.bin" "$WORK/catalog/$name" || die "$name: the copy differs"
done < "$WORK/trace.txt"
end=$(date +%s.%N)
ST=$(in_ns curl -s http://$L:8081/status)
fills=$(echo "$ST" | jq .fills.started)
origin=$(echo "$ST" | jq .fills.origin_bytes)
sent=$(echo "$ST" | jq '.sent_bytes_ram + .sent_bytes_disk')
echo
echo "$OBJECTS objects of $BYTES bytes, $REQUESTS requests (Zipf skew $SKEW, seed $SEED, $DISTINCT distinct names), edge --ram $RAM --disk-size $DISK"
echo
echo "| requests | fills | hit ratio | bytes to clients | bytes from the origin | byte hit ratio | RAM hits | disk hits | misses (blocks) | seconds |"
echo "|---|---|---|---|---|---|---|---|---|---|"
echo "$ST" | jq -r --arg req "$REQUESTS" --arg t "$(echo "$end $start" | awk '{printf "%.1f", $1-$2}')" \
  '"| \($req) | \(.fills.started) | \(1 - .fills.started / ($req|tonumber) | . * 1000 | round / 1000) | \(.sent_bytes_ram + .sent_bytes_disk) | \(.fills.origin_bytes) | \(1 - .fills.origin_bytes / (.sent_bytes_ram + .sent_bytes_disk) | . * 1000 | round / 1000) | \(.tiers.ram_hits) | \(.tiers.disk_hits) | \(.tiers.misses) | \($t) |"'
echo
echo "ideal (an unbounded cache): $DISTINCT fills, hit ratio $(echo "$DISTINCT $REQUESTS" | awk '{printf "%.3f", 1-$1/$2}')"
echo "fills $fills, origin bytes $origin, sent $sent; trace: $WORK/trace.txt"
