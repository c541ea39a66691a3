#!/usr/bin/env bash
# Run-to-run spread of blockcast: many interleaved runs per case, min / median / max, repairs.
#
# Cases: N=1 and N=4 receivers x 1400- and 8972-byte units x lossless and --loss percent
# random loss (nftables in each receiver namespace, the same rule dropping nothing in lossless
# cases; see --segment). Everything runs inside network
# namespaces this script creates and deletes (a server and four receivers on a bridge in a
# hub namespace, 10.98.0.0/24, MTU 9100 so that an 8972-byte unit, 9026 bytes with its
# headers, is one frame); `net-guard check` runs at the end. One round runs every case once
# per binary, in turn; --runs rounds. Each run: receivers start, 1 s later the server; time =
# server start -> last receiver exited (hashing the file at start included, as a first serve;
# fsync included). Every copy is checked with BLAKE3.
#
# Usage: bench/spread.sh [--size 256M] [--runs 20] [--loss 5] [--losses "0 5"] [--receivers "1 4"]
#                        [--units "1400 8972"] [--bins "target/release/blockcast"] [--segment]
#                        [--work /tmp/blockcast-spread] [--run-timeout 120] [--renice]
# --losses replaces the two loss settings (percent), e.g. --losses 0 for lossless cases only.
# --segment: the server's link sends every datagram as a frame of its own (gso_max_segs 1).
# Without it a GSO super-datagram (up to 64 KiB of units) crosses the veths and the bridge
# whole, and the loss rule drops it whole: 5 % of super-datagrams, bursts of up to 45 units.
# With it the loss is per datagram, as on a real link (and the receivers get no GRO batches).
# --renice lowers every running rustc and cargo (other people's builds on a shared box) to
# nice 19 before each run.
# --bins takes several binaries (e.g. the build before a change and this one): their runs
# alternate within every round, so both see the same machine. BC_SERVE_ARGS adds flags to
# every `serve`, BC_RECEIVE_ARGS to every `receive`; BC_SERVE_LOG="-vv" keeps the server's
# debug log (rate steps) in the logs instead of -q. A "binary" may be a wrapper script that adds
# flags (e.g. `exec blockcast "$1" --datapath xdp "${@:2}"`), to interleave two settings.
# Output: a Markdown table per binary (time and GB/s min / median / max, slowest / median,
# repair units as a share of the object's units, the receivers' socket drops, CPU seconds per
# GB of the server and of each receiver (medians), lossy median over lossless median, and the
# share of the machine's CPU time the hypervisor took while a run ran: the median, and the
# slowest run's; and the host's speed just before each run: the time one core takes to hash
# the source, in the page cache, with BLAKE3, which is memory and vector work like ours and
# shows a host slowed by its neighbours' caches or memory traffic, which steal does not), and
# a CSV of every run in the work directory.
set -uo pipefail

SIZE=256M
RUNS=20
LOSS=5
LOSSES=""
RECEIVERS="1 4"
UNITS="1400 8972"
BINS=""
WORK=/tmp/blockcast-spread
RUN_TIMEOUT=120
RENICE=0
SEGMENT=0
while [ $# -gt 0 ]; do
  case "$1" in
    --size) SIZE=$2; shift 2 ;;
    --runs) RUNS=$2; shift 2 ;;
    --loss) LOSS=$2; shift 2 ;;
    --losses) LOSSES=$2; shift 2 ;;
    --receivers) RECEIVERS=$2; shift 2 ;;
    --units) UNITS=$2; shift 2 ;;
    --bins) BINS=$2; shift 2 ;;
    --work) WORK=$2; shift 2 ;;
    --run-timeout) RUN_TIMEOUT=$2; shift 2 ;;
    --renice) RENICE=1; shift ;;
    --segment) SEGMENT=1; shift ;;
    -h|--help) sed -n '2,28p' "$0"; exit 0 ;;
    *) echo "unknown option: $1" >&2; exit 2 ;;
  esac
done

ROOT=$(cd "$(dirname "$0")/.." && pwd)
[ -n "$BINS" ] || BINS=$ROOT/target/release/blockcast
. "$ROOT/bench/lib/netns.sh"
GUARD=$(ns_guard_path "$ROOT")
MTU=9100
MAXN=4
P=bcspr
SRV_IP=10.98.0.1
rip() { echo "10.98.0.1$1"; }

log() { echo "[spread] $*" >&2; }
die() { log "error: $*"; exit 1; }
[ "$(id -u)" = 0 ] || die "needs root (network namespaces)"
for t in nft ip b3sum bc jq; do command -v $t >/dev/null || die "needs $t"; done
for b in $BINS; do [ -x "$b" ] || die "no binary $b"; done

"$GUARD" up || die "net-guard up failed"
ALL_NS=("$P-hub" "$P-srv")
for i in $(seq 1 $MAXN); do ALL_NS+=("$P-r$i"); done
ns_cleanup_on_exit "$WORK/out"
ns_hub
ns_host srv "$SRV_IP" q-srv
[ "$SEGMENT" = 0 ] || ip -n "$P-srv" link set veth0 gso_max_segs 1
for i in $(seq 1 $MAXN); do ns_host "r$i" "$(rip "$i")" "q-r$i"; done
ns_raise_root_buffers

use_receivers() {
  local n=$1 i
  for i in $(seq 1 $MAXN); do
    if [ "$i" -le "$n" ]; then ip -n "$P-hub" link set "q-r$i" up; else ip -n "$P-hub" link set "q-r$i" down; fi
  done
}
# Permille of all UDP arriving in each receiver namespace; -1 removes the rule. A lossless case
# gets the same rule dropping nothing: the rule runs in the softirq of the sender's CPU (veth
# delivers on the CPU that sends), 2-3 % of the server's CPU at 1400-byte units, and a
# lossless case without it measured that as part of what loss costs.
set_loss() {
  local pm=$1 i ns
  for i in $(seq 1 $MAXN); do
    ns=$P-r$i
    ip netns exec "$ns" nft delete table inet loss 2>/dev/null
    [ "$pm" -ge 0 ] || continue
    ip netns exec "$ns" nft -f - <<NFT
table inet loss {
  chain in {
    type filter hook input priority 0; policy accept;
    meta l4proto udp numgen random mod 1000 < $pm counter drop
  }
}
NFT
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
TO=(timeout -k 5 "$RUN_TIMEOUT")
now() { date +%s.%N; }
SEQ=0

# The machine's CPU time so far: "steal total" in clock ticks, from /proc/stat (steal: time
# the hypervisor gave this guest's CPUs to others; total: user to steal).
cpu_ticks() { awk '$1 == "cpu" {print $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9; exit}' /proc/stat; }

# The host's speed now: seconds one core takes to hash the source (in the page cache).
probe() {
  local a b
  a=$(now); b3sum --num-threads 1 --no-names "$SRC" >/dev/null; b=$(now)
  printf '%.3f' "$(echo "$b - $a" | bc -l)"
}

# One run: sets PROBE (the host's speed just before it, `probe`), ELAPSED, OK, REPAIRS (units sent again: originals, XOR repairs, parity),
# DROPS (the receivers' socket drops, summed), RCPU (the receivers' CPU seconds, summed), SCPU
# (the server's CPU seconds), STEAL (per cent of the machine's CPU time the hypervisor took
# while the run ran: a slow run with a high figure is the host's, not ours).
run_one() {  # bin n unit tag
  local bin=$1 n=$2 unit=$3 tag=$4 i t0 t1 rc=0 pids=() spid h
  local group=239.255.74.$((1 + SEQ % 200)):$((9400 + SEQ % 100))
  if [ "$RENICE" = 1 ]; then
    for p in $(pgrep -f 'rustc|cargo'); do renice -n 19 -p "$p" >/dev/null 2>&1; done
  fi
  rm -rf "$WORK/out"; for i in $(seq 1 "$n"); do mkdir -p "$WORK/out/r$i"; done
  PROBE=$(probe)
  for i in $(seq 1 "$n"); do
    ip netns exec "$P-r$i" "${TO[@]}" "$bin" receive --group "$group" --iface "$(rip "$i")" \
      --out "$WORK/out/r$i/copy" --timeout 30 -q --json ${BC_RECEIVE_ARGS:-} >"$WORK/logs/$tag.r$i.json" 2>&1 &
    pids+=($!)
  done
  sleep 1
  t0=$(now)
  local c0 c1
  c0=$(cpu_ticks)
  ip netns exec "$P-srv" "${TO[@]}" "$bin" serve "$SRC" --group "$group" --iface "$SRV_IP" \
    --unit-size "$unit" --min-receivers "$n" --max-wait 20 --deadline 100 ${BC_SERVE_LOG:--q} --json \
    --no-hash-cache ${BC_SERVE_ARGS:-} >"$WORK/logs/$tag.srv.json" 2>"$WORK/logs/$tag.srv.err" &
  spid=$!
  for i in "${pids[@]}"; do wait "$i" || rc=$?; done
  t1=$(now)
  c1=$(cpu_ticks)
  STEAL=$(awk -v a="$c0" -v b="$c1" 'BEGIN {split(a, x, " "); split(b, y, " "); d = y[2] - x[2]; printf "%.1f", (d > 0 ? 100 * (y[1] - x[1]) / d : 0)}')
  wait "$spid" || rc=$?
  ns_kill_procs
  ELAPSED=$(echo "$t1 - $t0" | bc -l)
  OK=1
  [ "$rc" = 0 ] || OK=0
  for i in $(seq 1 "$n"); do
    h=$(b3sum --no-names "$WORK/out/r$i/copy" 2>/dev/null)
    [ "$h" = "$SRC_HASH" ] || OK=0
  done
  REPAIRS=$(jq -s 'last | .repair_units + .xor_units + .parity_units' "$WORK/logs/$tag.srv.json" 2>/dev/null || echo 0)
  SCPU=$(jq -s 'last | .cpu_seconds // 0' "$WORK/logs/$tag.srv.json" 2>/dev/null || echo 0)
  DROPS=0; RCPU=0
  for i in $(seq 1 "$n"); do
    DROPS=$(( DROPS + $(jq -s 'map(select(.event == "summary")) | last | .socket_drops // 0' "$WORK/logs/$tag.r$i.json" 2>/dev/null || echo 0) ))
    RCPU=$(echo "$RCPU + $(jq -s 'map(select(.event == "summary")) | last | .cpu_seconds // 0' "$WORK/logs/$tag.r$i.json" 2>/dev/null || echo 0)" | bc -l)
  done
}

CSV=$WORK/runs.csv
echo "round,bin,receivers,unit,loss_pct,seconds,ok,repair_units,socket_drops,receiver_cpu_s,server_cpu_s,steal_pct,probe_s" > "$CSV"
cases=()
[ -n "$LOSSES" ] || LOSSES="0 $LOSS"
for n in $RECEIVERS; do for u in $UNITS; do for l in $LOSSES; do cases+=("$n|$u|$l"); done; done; done
log "source $BYTES bytes; $RUNS rounds of ${#cases[@]} cases x $(wc -w <<<"$BINS") binaries"
for round in $(seq 1 "$RUNS"); do
  for c in "${cases[@]}"; do
    IFS='|' read -r n u l <<<"$c"
    use_receivers "$n"
    set_loss $((l * 10))
    bi=0
    for bin in $BINS; do
      SEQ=$((SEQ + 1)); bi=$((bi + 1))
      run_one "$bin" "$n" "$u" "$SEQ.b$bi.n$n.u$u.l$l"
      echo "$round,$bi,$n,$u,$l,$ELAPSED,$OK,$REPAIRS,$DROPS,$RCPU,$SCPU,$STEAL,$PROBE" >> "$CSV"
      log "round $round bin $bi n=$n unit=$u loss=$l%: $(printf '%.2f' "$ELAPSED") s, ok=$OK, repairs $REPAIRS, drops $DROPS, steal $STEAL %, host probe $PROBE s"
    done
  done
done
set_loss -1

# ---------------------------------------------------------------- tables
units_of() { echo $(( (BYTES + $1 - 1) / $1 )); }
bi=0
for bin in $BINS; do
  bi=$((bi + 1))
  echo
  echo "Binary $bi: $bin. $(numfmt --to=iec "$BYTES"), $RUNS interleaved rounds, MTU $MTU, loss by nftables in each receiver namespace ($([ "$SEGMENT" = 1 ] && echo "per datagram: --segment" || echo "per GSO super-datagram"))."
  echo
  echo "| receivers | unit | loss | s min / median / max | GB/s per receiver min / median / max | slowest / median (GB/s) | repair units, median (max) | as % of units | socket drops, median | server CPU s/GB | receiver CPU s/GB | verified | lossy / lossless time | steal %, median (slowest run) | host probe s, median (slowest run) |"
  echo "|---:|---:|---:|---|---|---:|---|---:|---:|---:|---:|---|---:|---|---|"
  for c in "${cases[@]}"; do
    IFS='|' read -r n u l <<<"$c"
    rows=$(awk -F, -v b="$bi" -v n="$n" -v u="$u" -v l="$l" 'NR > 1 && $2 == b && $3 == n && $4 == u && $5 == l' "$CSV")
    secs=$(cut -d, -f6 <<<"$rows" | sort -g)
    cnt=$(wc -l <<<"$secs")
    med() { awk '{a[NR]=$1} END {if (NR == 0) exit; print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
    smin=$(head -1 <<<"$secs"); smax=$(tail -1 <<<"$secs"); smed=$(med <<<"$secs")
    g() { printf '%.3f' "$(echo "$BYTES / $1 / 1000000000" | bc -l)"; }
    rmed=$(cut -d, -f8 <<<"$rows" | sort -g | med); rmax=$(cut -d, -f8 <<<"$rows" | sort -g | tail -1)
    dmed=$(cut -d, -f9 <<<"$rows" | sort -g | med)
    gb=$(echo "$BYTES / 1000000000" | bc -l)
    rcpu=$(cut -d, -f10 <<<"$rows" | sort -g | med); scpu=$(cut -d, -f11 <<<"$rows" | sort -g | med)
    rcpu=$(printf '%.2f' "$(echo "${rcpu:-0} / $n / $gb" | bc -l)"); scpu=$(printf '%.2f' "$(echo "${scpu:-0} / $gb" | bc -l)")
    okc=$(cut -d, -f7 <<<"$rows" | grep -c '^1$')
    pct=$(echo "scale=2; 100 * $rmed / $(units_of "$u")" | bc -l)
    ratio=$(echo "scale=3; $smed / $smax" | bc -l)
    lossy=""
    if [ "$l" != 0 ]; then
      base=$(awk -F, -v b="$bi" -v n="$n" -v u="$u" 'NR > 1 && $2 == b && $3 == n && $4 == u && $5 == 0 {print $6}' "$CSV" | sort -g | med)
      # No lossless case among --losses: nothing to compare with.
      [ -n "$base" ] && lossy=$(printf '%.2fx' "$(echo "$smed / $base" | bc -l)")
    fi
    steal=$(cut -d, -f12 <<<"$rows" | sort -g | med)
    steal_slowest=$(sort -t, -k6,6g <<<"$rows" | tail -1 | cut -d, -f12)
    probe_med=$(cut -d, -f13 <<<"$rows" | sort -g | med)
    probe_slowest=$(sort -t, -k6,6g <<<"$rows" | tail -1 | cut -d, -f13)
    printf '| %s | %s | %s %% | %.2f / %.2f / %.2f | %s / %s / %s | %.2f | %s (%s) | %s | %s | %s | %s | %s/%s | %s | %s (%s) | %s (%s) |\n' \
      "$n" "$u" "$l" "$smin" "$smed" "$smax" "$(g "$smax")" "$(g "$smed")" "$(g "$smin")" "$ratio" \
      "$rmed" "$rmax" "$pct" "$dmed" "$scpu" "$rcpu" "$okc" "$cnt" "$lossy" "$steal" "$steal_slowest" \
      "$probe_med" "$probe_slowest"
  done
  # How far each case's times follow the host's speed: Pearson's r of time and probe.
  echo
  printf 'Time against the host probe (r, per case, in the order above):'
  for c in "${cases[@]}"; do
    IFS='|' read -r n u l <<<"$c"
    awk -F, -v b="$bi" -v n="$n" -v u="$u" -v l="$l" '
      NR > 1 && $2 == b && $3 == n && $4 == u && $5 == l {x = $13; y = $6; k++; sx += x; sy += y; sxx += x * x; syy += y * y; sxy += x * y}
      END {d = (k * sxx - sx * sx) * (k * syy - sy * sy); if (k > 2 && d > 0) printf " %.2f", (k * sxy - sx * sy) / sqrt(d); else printf " -"}' "$CSV"
  done
  echo
done
echo
echo "Every run: $CSV; logs: $WORK/logs"
