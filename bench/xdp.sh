#!/usr/bin/env bash
# AF_XDP against the socket path on veth: one transfer per datapath in turn, N receivers.
#
# Everything runs inside network namespaces this script creates and deletes (a server and up
# to four receivers, each on a veth to a bridge in a hub namespace, 10.97.0.0/24, MTU 1500:
# native XDP on veth takes frames up to a page, and a 1400-byte unit is one frame);
# `net-guard check` runs at the end. One round runs every case once per datapath, the
# datapaths alternating within the round, so both see the same machine; --runs rounds.
# Datapath `socket`: serve and receive on the kernel's sockets (io_uring + GSO out, recvmmsg +
# GRO in). Datapath `xdp`: `--datapath xdp` on serve (the first pass as AF_XDP frames) and on
# every receive (an XDP program on the receiver's veth takes the session's frames into an
# AF_XDP socket); copy mode on veth. Each run: receivers start, 1 s later the server; time =
# server start -> last receiver exited (hashing at start included, as a first serve; fsync
# included). Every copy is checked with BLAKE3.
#
# Usage: bench/xdp.sh [--size 512M] [--runs 5] [--receivers "1 4"] [--rate 2G]
#                     [--datapaths "socket xdp"] [--bin target/release/blockcast]
#                     [--work /tmp/blockcast-xdp] [--renice]
# --rate is the server's fixed rate (both datapaths: the same pacing); "auto" follows the
# receivers. --datapaths "xdp" runs one datapath only (under `perf record`, say). --renice
# lowers every running rustc and cargo to nice 19 before each run.
# Output: one Markdown table (per case and datapath: time min / median / max, GB/s per
# receiver at the median, server CPU s/GB, receivers' CPU s/GB summed over receivers, repair
# units, socket + XDP drops, xdp / socket time), and a CSV of every run in the work directory.
set -uo pipefail

SIZE=512M
RUNS=5
RECEIVERS="1 4"
RATE=2G
DATAPATHS="socket xdp"
BIN=""
WORK=/tmp/blockcast-xdp
RENICE=0
while [ $# -gt 0 ]; do
  case "$1" in
    --size) SIZE=$2; shift 2 ;;
    --runs) RUNS=$2; shift 2 ;;
    --receivers) RECEIVERS=$2; shift 2 ;;
    --rate) RATE=$2; shift 2 ;;
    --datapaths) DATAPATHS=$2; shift 2 ;;
    --bin) BIN=$2; shift 2 ;;
    --work) WORK=$2; shift 2 ;;
    --renice) RENICE=1; shift ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
    *) echo "unknown option: $1" >&2; exit 2 ;;
  esac
done

ROOT=$(cd "$(dirname "$0")/.." && pwd)
[ -n "$BIN" ] || BIN=$ROOT/target/release/blockcast
. "$ROOT/bench/lib/netns.sh"
GUARD=$(ns_guard_path "$ROOT")
MTU=1500
MAXN=4
P=bcxdp
SRV_IP=10.97.0.1
rip() { echo "10.97.0.1$1"; }

log() { echo "[xdp] $*" >&2; }
die() { log "error: $*"; exit 1; }
[ "$(id -u)" = 0 ] || die "needs root (network namespaces, XDP)"
for t in nft ip b3sum bc jq; do command -v $t >/dev/null || die "needs $t"; done
[ -x "$BIN" ] || die "no binary $BIN"

"$GUARD" up || die "net-guard up failed"
ALL_NS=("$P-hub" "$P-srv")
for i in $(seq 1 $MAXN); do ALL_NS+=("$P-r$i"); done
ns_cleanup_on_exit "$WORK/out"
ns_hub
ns_host srv "$SRV_IP" q-srv
for i in $(seq 1 $MAXN); do ns_host "r$i" "$(rip "$i")" "q-r$i"; done
ns_raise_root_buffers
ns_check_no_default_route

use_receivers() {
  local n=$1 i
  for i in $(seq 1 $MAXN); do
    if [ "$i" -le "$n" ]; then ip -n "$P-hub" link set "q-r$i" up; else ip -n "$P-hub" link set "q-r$i" down; fi
  done
}

mkdir -p "$WORK/out" "$WORK/logs"
SRC=$WORK/src.bin
want=$(numfmt --from=iec "$SIZE")
if [ ! -f "$SRC" ] || [ "$(stat -c %s "$SRC")" != "$want" ]; then
  head -c "$want" /dev/urandom > "$SRC.tmp" && mv "$SRC.tmp" "$SRC"
fi
BYTES=$(stat -c %s "$SRC")
SRC_HASH=$(b3sum --no-names "$SRC")
cat "$SRC" > /dev/null
TO=(timeout -k 5 120)
now() { date +%s.%N; }
summary() { jq -s 'map(select(.event == "summary")) | last' "$1" 2>/dev/null; }
SEQ=0

# One run: sets ELAPSED, OK, SCPU (server CPU s), RCPU (receivers' CPU s, summed), REPAIRS,
# DROPS (socket drops, summed), USED (the datapath every summary reports, or "mixed").
run_one() {  # datapath n tag
  local dp=$1 n=$2 tag=$3 i t0 t1 rc=0 pids=() spid h s
  local group=239.255.73.$((1 + SEQ % 200)):$((9600 + SEQ % 100))
  if [ "$RENICE" = 1 ]; then
    for p in $(pgrep -f 'rustc|cargo'); do renice -n 19 -p "$p" >/dev/null 2>&1; done
  fi
  rm -rf "$WORK/out"; for i in $(seq 1 "$n"); do mkdir -p "$WORK/out/r$i"; done
  for i in $(seq 1 "$n"); do
    ip netns exec "$P-r$i" "${TO[@]}" "$BIN" receive --group "$group" --iface "$(rip "$i")" \
      --out "$WORK/out/r$i/copy" --timeout 30 --datapath "$dp" -q --json \
      >"$WORK/logs/$tag.r$i.json" 2>"$WORK/logs/$tag.r$i.err" &
    pids+=($!)
  done
  sleep 1
  t0=$(now)
  ip netns exec "$P-srv" "${TO[@]}" "$BIN" serve "$SRC" --group "$group" --iface "$SRV_IP" \
    --rate "$RATE" --threads 1 --min-receivers "$n" --max-wait 20 --deadline 100 -q --json \
    --no-hash-cache --datapath "$dp" >"$WORK/logs/$tag.srv.json" 2>"$WORK/logs/$tag.srv.err" &
  spid=$!
  for i in "${pids[@]}"; do wait "$i" || rc=$?; done
  t1=$(now)
  wait "$spid" || rc=$?
  ns_kill_procs
  ELAPSED=$(echo "$t1 - $t0" | bc -l)
  OK=1
  [ "$rc" = 0 ] || OK=0
  USED=$(jq -r '.datapath // "none"' "$WORK/logs/$tag.srv.json" 2>/dev/null || echo none)
  SCPU=$(jq -r '.cpu_seconds // 0' "$WORK/logs/$tag.srv.json" 2>/dev/null || echo 0)
  REPAIRS=$(jq -r '.repair_units + .xor_units + .parity_units' "$WORK/logs/$tag.srv.json" 2>/dev/null || echo 0)
  RCPU=0; DROPS=0
  for i in $(seq 1 "$n"); do
    h=$(b3sum --no-names "$WORK/out/r$i/copy" 2>/dev/null)
    [ "$h" = "$SRC_HASH" ] || OK=0
    s=$(summary "$WORK/logs/$tag.r$i.json")
    [ "$(jq -r '.datapath' <<<"$s")" = "$USED" ] || USED=mixed
    RCPU=$(echo "$RCPU + $(jq -r '.cpu_seconds // 0' <<<"$s")" | bc -l)
    DROPS=$(( DROPS + $(jq -r '.socket_drops // 0' <<<"$s") ))
  done
}

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
CSV=$WORK/runs.csv
echo "round,datapath,receivers,seconds,ok,server_cpu_s,receivers_cpu_s,repair_units,drops,used" > "$CSV"
log "source $BYTES bytes; $RUNS rounds of receivers {$RECEIVERS} x datapaths {$DATAPATHS}; rate $RATE"
for round in $(seq 1 "$RUNS"); do
  for n in $RECEIVERS; do
    use_receivers "$n"
    for dp in $DATAPATHS; do
      SEQ=$((SEQ + 1))
      run_one "$dp" "$n" "$SEQ.$dp.n$n"
      echo "$round,$dp,$n,$ELAPSED,$OK,$SCPU,$RCPU,$REPAIRS,$DROPS,$USED" >> "$CSV"
      log "round $round n=$n $dp: $(printf '%.2f' "$ELAPSED") s, ok=$OK ($USED), server cpu $SCPU s, receivers cpu $RCPU s, repairs $REPAIRS, drops $DROPS"
    done
  done
done

# ---------------------------------------------------------------- table
GB=$(echo "$BYTES / 1000000000" | bc -l)
med() { sort -g | awk '{a[NR]=$1} END {if (NR == 0) exit; print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
col() { awk -F, -v d="$1" -v n="$2" -v c="$3" 'NR > 1 && $2 == d && $3 == n && $5 == 1 {print $c}' "$CSV"; }
echo
echo "$BIN; $(numfmt --to=iec "$BYTES"), $RUNS interleaved rounds, rate $RATE, MTU 1500, 1400-byte units, one data thread; $(nproc) cores; load average before: $LOAD_BEFORE, after: $(cut -d' ' -f1-3 /proc/loadavg) (a figure is noise unless both are well under the core count)."
echo
echo "| receivers | datapath | s min / median / max | GB/s per receiver (median) | server CPU s/GB | receivers' CPU s/GB (sum) | repair units (median) | drops (median) | verified | xdp / socket time |"
echo "|---:|---|---|---:|---:|---:|---:|---:|---|---:|"
for n in $RECEIVERS; do
  for dp in $DATAPATHS; do
    secs=$(col "$dp" "$n" 4 | sort -g)
    cnt=$(awk -F, -v d="$dp" -v n="$n" 'NR > 1 && $2 == d && $3 == n' "$CSV" | wc -l)
    okc=$(col "$dp" "$n" 4 | wc -l)
    [ -n "$secs" ] || { echo "| $n | $dp | no verified run | | | | | | 0/$cnt | |"; continue; }
    smed=$(med <<<"$secs")
    ratio=""
    if [ "$dp" = xdp ]; then
      base=$(col socket "$n" 4 | med)
      [ -z "$base" ] || ratio=$(printf '%.2fx' "$(echo "$smed / $base" | bc -l)")
    fi
    printf '| %s | %s | %.2f / %.2f / %.2f | %.3f | %.2f | %.2f | %s | %s | %s/%s | %s |\n' \
      "$n" "$dp" "$(head -1 <<<"$secs")" "$smed" "$(tail -1 <<<"$secs")" \
      "$(echo "$GB / $smed" | bc -l)" \
      "$(echo "$(col "$dp" "$n" 6 | med) / $GB" | bc -l)" \
      "$(echo "$(col "$dp" "$n" 7 | med) / $GB" | bc -l)" \
      "$(col "$dp" "$n" 8 | med)" "$(col "$dp" "$n" 9 | med)" "$okc" "$cnt" "$ratio"
  done
done
echo
echo "Every run: $CSV; logs: $WORK/logs"
