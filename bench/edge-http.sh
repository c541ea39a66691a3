#!/usr/bin/env bash
# HTTP throughput of the edge's tiers beside nginx serving the same file, same client (curl),
# same run. Everything runs in one network namespace this script creates and deletes, on its
# loopback only: an origin (sessions to the edges over loopback multicast, TTL 1), two edges
# filled once from it ("ram": a RAM tier larger than the object; "disk": a RAM tier of two
# blocks, so the object is served from the disk tier, its files read through the page cache
# and re-verified by BLAKE3 block by block), and nginx (the distribution's) serving the
# catalog directory. Rounds interleave the three: nginx, edge ram, edge disk, nginx, ...
# Each case: one curl of the whole object to /dev/null, its speed_download. After the runs,
# each edge's /status shows from which tier its bytes went.
#
# Usage: bench/edge-http.sh [--size 256M] [--runs 5] [--bin target/release/blockcast]
#                           [--work /tmp/blockcast-edge-http]
set -uo pipefail

SIZE=256M
RUNS=5
BIN=""
WORK=/tmp/blockcast-edge-http
while [ $# -gt 0 ]; do
  case "$1" in
    --size) SIZE=$2; shift 2 ;;
    --runs) RUNS=$2; shift 2 ;;
    --bin) BIN=$2; shift 2 ;;
    --work) WORK=$2; shift 2 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "unknown option: $1" >&2; exit 2 ;;
  esac
done
ROOT=$(cd "$(dirname "$0")/.." && pwd)
[ -n "$BIN" ] || BIN=$ROOT/target/release/blockcast
GUARD=/work/shared/tools/net-guard
NS=bcehttp
L=127.0.0.1

log() { echo "[edge-http] $*" >&2; }
die() { log "error: $*"; exit 1; }
[ "$(id -u)" = 0 ] || die "needs root (a network namespace)"
for t in ip curl jq nginx; do command -v $t >/dev/null || die "needs $t"; done
[ -x "$BIN" ] || die "no binary $BIN"

cleanup() {
  local rc=$? pid
  trap - EXIT INT TERM
  for pid in $(ip netns pids $NS 2>/dev/null); do kill -KILL "$pid" 2>/dev/null; done
  ip netns del $NS 2>/dev/null
  rm -rf "$WORK/catalog" "$WORK/ram" "$WORK/disk"
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
head -c "$(numfmt --from=iec "${SIZE%B}")" /dev/urandom > "$WORK/catalog/.obj.tmp"
mv "$WORK/catalog/.obj.tmp" "$WORK/catalog/obj.bin"
BYTES=$(stat -c %s "$WORK/catalog/obj.bin")

in_ns "$BIN" origin --catalog "$WORK/catalog" --iface $L --listen $L:9100 --groups 239.255.98.0/24 \
  --settle 0 --rescan 0.2 --no-hash-cache --metrics $L:9300 -q > "$WORK/origin.log" 2>&1 &
for _ in $(seq 600); do
  n=$(in_ns curl -s http://$L:9300/metrics | awk '$1=="blockcast_origin_catalog_objects"{print $2}')
  [ "$n" = 1 ] && break
  sleep 0.1
done
[ "$n" = 1 ] || die "the origin did not publish the object"
in_ns "$BIN" edge --origin $L:9100 --iface $L --http $L:8081 --ram 1G --disk "$WORK/ram" \
  --disk-size 2G -q > "$WORK/edge-ram.log" 2>&1 &
in_ns "$BIN" edge --origin $L:9100 --iface $L --http $L:8082 --ram 2200k --disk "$WORK/disk" \
  --disk-size 2G -q > "$WORK/edge-disk.log" 2>&1 &
cat > "$WORK/nginx.conf" <<EOF
worker_processes 1;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log;
events { worker_connections 64; }
http {
  access_log off;
  sendfile on;
  server { listen $L:8090; root $WORK/catalog; }
}
EOF
in_ns nginx -c "$WORK/nginx.conf" -g 'daemon off;' > "$WORK/nginx.log" 2>&1 &
for port in 8081 8082 8090; do
  for _ in $(seq 200); do
    in_ns curl -s -o /dev/null http://$L:$port/ && break
    sleep 0.05
  done
done
# Fill both edges (one at a time), then one warm read each.
for port in 8081 8082 8081 8082; do
  in_ns curl -sf --max-time 300 -o "$WORK/check.bin" http://$L:$port/obj.bin || die "edge on $port"
  cmp -s "$WORK/check.bin" "$WORK/catalog/obj.bin" || die "edge on $port: copy differs"
done
rm -f "$WORK/check.bin"
tier_bytes() { in_ns curl -s http://$L:$1/status | jq -r '"\(.sent_bytes_ram) \(.sent_bytes_disk)"'; }
read -r r0 d0 <<<"$(tier_bytes 8081)"
read -r r1 d1 <<<"$(tier_bytes 8082)"

CSV=$WORK/runs.csv
echo "round,case,bytes_per_sec" > "$CSV"
for r in $(seq 1 "$RUNS"); do
  for c in nginx:8090 edge-ram:8081 edge-disk:8082; do
    name=${c%%:*} port=${c##*:}
    s=$(in_ns curl -s --max-time 300 -o /dev/null -w '%{speed_download}' http://$L:$port/obj.bin)
    echo "$r,$name,$s" >> "$CSV"
    log "round $r $name: $(echo "$s" | awk '{printf "%.2f GB/s", $1/1e9}')"
  done
done
read -r r0b d0b <<<"$(tier_bytes 8081)"
read -r r1b d1b <<<"$(tier_bytes 8082)"

median() { sort -g | awk '{a[NR]=$1} END{printf "%.2f", ((NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2)/1e9}'; }
slowest() { sort -g | head -1 | awk '{printf "%.2f", $1/1e9}'; }
echo
echo "object $BYTES bytes, $RUNS rounds, one curl at a time on loopback"
echo
echo "| case | GB/s median | GB/s slowest | / nginx (medians) |"
echo "|---|---|---|---|"
ng=$(awk -F, '$2=="nginx"{print $3}' "$CSV" | median)
for c in nginx edge-ram edge-disk; do
  m=$(awk -F, -v c=$c '$2==c{print $3}' "$CSV" | median)
  w=$(awk -F, -v c=$c '$2==c{print $3}' "$CSV" | slowest)
  echo "| $c | $m | $w | $(echo "$m $ng" | awk '{printf "%.2f", $1/$2}') |"
done
echo
echo "edge-ram sent $(( (r0b - r0) / 1048576 )) MiB from RAM, $(( (d0b - d0) / 1048576 )) MiB from disk during the rounds"
echo "edge-disk sent $(( (r1b - r1) / 1048576 )) MiB from RAM, $(( (d1b - d1) / 1048576 )) MiB from disk during the rounds"
echo "every run: $CSV"
