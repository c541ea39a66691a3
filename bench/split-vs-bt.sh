#!/usr/bin/env bash
# blockcast split mode against BitTorrent (aria2c + opentracker) on the same network: one server
# and four members, no multicast. Called by `bench/compare.sh split-vs-bt [options]` or directly.
#
# Everything runs inside network namespaces this script creates and deletes (no eth0, no default
# route): a hub namespace holding the bridge (MTU 1500) with the tracker's address on it, one
# server namespace and four member namespaces joined to it by veth pairs (MTU 1500), addresses
# 10.98.0.0/24. The files live on tmpfs. Runs are interleaved (split, bittorrent, split, ...);
# every copy is checked with BLAKE3 against the source, every process runs under `timeout`.
#
# Timing, the same for both: the members (leechers) start first, 1 s later the server (seeder)
# starts: t0; the run's time is t0 -> the last member has the whole file (blockcast: the last
# `receive` exits after verifying every block and syncing; aria2c: the last leecher's
# --on-bt-download-complete hook, run once every piece has passed its SHA-1, before seeding).
# Neither hashes the file inside the timed part: the torrent is made beforehand and blockcast
# reads its hashes from the hash cache (`blockcast hash` beforehand).
# Upload: every host's veth0 tx bytes over the run (what it put on its link, headers included;
# TCP acks too) over the file size; for blockcast also the server's units sent (data, repairs,
# parity) times the unit size over the file size.
#
# Usage: bench/split-vs-bt.sh [--size 1G] [--reps 3] [--tools "split bittorrent"] [--unit 1400]
#                             [--run-timeout 120] [--work /dev/shm/blockcast-bt] [--no-install]
# Environment: BC_BIN (default target/release/blockcast), BC_SERVE_ARGS and BC_RECEIVE_ARGS
# add flags to blockcast's serve and receive.
set -uo pipefail

SIZE=1G
REPS=3
TOOLS="split bittorrent"
UNIT=1400
RUN_TIMEOUT=120
WORK=/dev/shm/blockcast-bt
INSTALL=1
while [ $# -gt 0 ]; do
  case "$1" in
    --size) SIZE=$2; shift 2 ;;
    --reps) REPS=$2; shift 2 ;;
    --tools) TOOLS=$2; shift 2 ;;
    --unit) UNIT=$2; shift 2 ;;
    --run-timeout) RUN_TIMEOUT=$2; shift 2 ;;
    --work) WORK=$2; shift 2 ;;
    --no-install) INSTALL=0; shift ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
    *) echo "unknown option: $1" >&2; exit 2 ;;
  esac
done

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BC=${BC_BIN:-$ROOT/target/release/blockcast}
. "$ROOT/bench/lib/netns.sh"
GUARD=$(ns_guard_path "$ROOT")
N=4
P=bcbt                        # namespaces: $P-hub, $P-srv, $P-m1 .. $P-m4
SRV_IP=10.98.0.1
TRACKER_IP=10.98.0.254        # on the bridge, in the hub namespace
mip() { echo "10.98.0.1$1"; } # member i -> 10.98.0.1i
CONTROL_PORT=47200
MTU=1500

log() { echo "[split-vs-bt] $*" >&2; }
die() { log "error: $*"; exit 1; }
[ "$(id -u)" = 0 ] || die "needs root (network namespaces)"
exec 9>/tmp/blockcast-split-vs-bt.lock
flock -n 9 || die "another split-vs-bt run holds /tmp/blockcast-split-vs-bt.lock"

need=()
command -v aria2c >/dev/null || need+=(aria2)
command -v opentracker >/dev/null || need+=(opentracker)
command -v mktorrent >/dev/null || need+=(mktorrent)
command -v b3sum >/dev/null || need+=(b3sum)
command -v bc >/dev/null || need+=(bc)
if [ ${#need[@]} -gt 0 ]; then
  [ $INSTALL = 1 ] || die "missing: ${need[*]}"
  log "installing ${need[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null \
    || die "apt-get install failed"
fi
[ -x "$BC" ] || die "no $BC (cargo build --release -p blockcast)"

"$GUARD" up || die "net-guard up failed"
ALL_NS=("$P-hub" "$P-srv")
for i in $(seq 1 $N); do ALL_NS+=("$P-m$i"); done
ns_cleanup_on_exit "$WORK/out"

# ---------------------------------------------------------------- topology
ns_hub
ip -n "$P-hub" addr add "$TRACKER_IP/24" dev br0
ns_host srv "$SRV_IP" p-srv
for i in $(seq 1 $N); do ns_host "m$i" "$(mip "$i")" "p-m$i"; done
ns_raise_root_buffers
ns_check_no_default_route

# ---------------------------------------------------------------- files
mkdir -p "$WORK/src" "$WORK/logs" "$WORK/out"
SRC=$WORK/src/src.bin
want=$(numfmt --from=iec "$SIZE")
if [ ! -f "$SRC" ] || [ "$(stat -c %s "$SRC")" != "$want" ]; then
  log "generating $SRC ($SIZE random bytes)"
  rm -f "$WORK/src.torrent"
  head -c "$want" /dev/urandom > "$SRC.tmp" && mv "$SRC.tmp" "$SRC"
fi
BYTES=$(stat -c %s "$SRC")
SRC_HASH=$(b3sum --no-names "$SRC")
TORRENT=$WORK/src.torrent
if [ ! -f "$TORRENT" ]; then
  log "making the torrent (1 MiB pieces)"
  timeout 300 mktorrent -l 20 -a "http://$TRACKER_IP:6969/announce" -o "$TORRENT" "$SRC" >/dev/null \
    || die "mktorrent failed"
fi
INFO_HASH=$(aria2c -S "$TORRENT" | sed -n 's/^Info Hash: //p')
[ -n "$INFO_HASH" ] || die "no info hash in $TORRENT"
echo "$INFO_HASH" > "$WORK/whitelist"
HOOK=$WORK/done-hook.sh
cat > "$HOOK" <<'EOF'
#!/bin/sh
# aria2c --on-bt-download-complete: $3 is the file's path; the time goes beside it.
date +%s.%N > "$(dirname "$3")/.done"
EOF
chmod +x "$HOOK"
# blockcast's hashes, made beforehand as the torrent is (the cache takes a file once it has not
# changed for 2 s: ask until it has, bounded).
for try in $(seq 1 20); do
  cached=$("$BC" hash "$SRC" --unit-size "$UNIT" --hash-cache "$WORK/hashes" --json |
    sed -n 's/.*"from_cache":\([0-9]*\).*/\1/p')
  [ "$cached" = 1 ] && break
  sleep 0.5
done
[ "$cached" = 1 ] || die "the hash cache did not take $SRC"

# The tracker, for the whole bench (bounded by a timeout of its own).
TOTAL_TIMEOUT=$(( (RUN_TIMEOUT + 30) * REPS * 2 + 120 ))
ip netns exec "$P-hub" timeout -k 5 "$TOTAL_TIMEOUT" opentracker -i "$TRACKER_IP" -p 6969 -P 6969 \
  -w "$WORK/whitelist" >"$WORK/logs/tracker.log" 2>&1 &

# ---------------------------------------------------------------- helpers
now() { date +%s.%N; }
TO=(timeout -k 5 "$RUN_TIMEOUT")
hosts() { echo srv; for i in $(seq 1 $N); do echo "m$i"; done; }
tx_bytes() { ip netns exec "$P-$1" cat /sys/class/net/veth0/statistics/tx_bytes; }
snapshot() { local h; for h in $(hosts); do TX0[$h]=$(tx_bytes "$h"); done; }
uploads() {  # sets UP[host] = tx bytes since the snapshot
  local h; for h in $(hosts); do UP[$h]=$(( $(tx_bytes "$h") - ${TX0[$h]} )); done
}
reset_out() { local i; rm -rf "$WORK/out"; for i in $(seq 1 $N); do mkdir -p "$WORK/out/m$i"; done; }
verify_copies() {  # path-of-copy-i function name
  local i f h good=1
  for i in $(seq 1 $N); do
    f=$($1 "$i")
    if [ ! -f "$f" ]; then log "  m$i: no copy at $f"; good=0; continue; fi
    h=$(b3sum --no-names "$f")
    [ "$h" = "$SRC_HASH" ] || { log "  m$i: hash mismatch ($(stat -c %s "$f") bytes)"; good=0; }
  done
  echo $good
}
declare -A TX0 UP
kill_run_procs() {  # what a run left behind (the tracker in the hub stays)
  local ns pid
  for ns in "${ALL_NS[@]:1}"; do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null; done
  done
}

split_copy() { echo "$WORK/out/m$1/copy"; }
run_split() {  # tag; sets ELAPSED OK UNITS_X
  local tag=$1 i t0 t1 rc=0 pids=() spid
  for i in $(seq 1 $N); do
    ip netns exec "$P-m$i" "${TO[@]}" "$BC" receive --server "$SRV_IP:$CONTROL_PORT" \
      --iface "$(mip "$i")" --out "$(split_copy "$i")" --timeout 30 ${BC_QUIET--q} --json ${BC_RECEIVE_ARGS:-} \
      >"$WORK/logs/$tag.m$i.log" 2>"$WORK/logs/$tag.m$i.err" &
    pids+=($!)
  done
  sleep 1
  t0=$(now)
  ip netns exec "$P-srv" "${TO[@]}" "$BC" serve "$SRC" --split --iface "$SRV_IP" \
    --control-port "$CONTROL_PORT" --unit-size "$UNIT" --min-receivers $N --max-wait 20 \
    --deadline "$((RUN_TIMEOUT - 10))" --hash-cache "$WORK/hashes" ${BC_QUIET--q} --json ${BC_SERVE_ARGS:-} \
    >"$WORK/logs/$tag.srv.log" 2>"$WORK/logs/$tag.srv.err" &
  spid=$!
  for i in "${pids[@]}"; do wait "$i" || rc=$?; done
  t1=$(now)
  wait "$spid" || rc=$?
  ELAPSED=$(echo "$t1 - $t0" | bc -l)
  OK=$(verify_copies split_copy)
  [ $rc = 0 ] || { log "  blockcast exit status $rc"; OK=0; }
  UNITS_X=$(jq -r --argjson u "$UNIT" --argjson b "$BYTES" \
    '(.data_units + .repair_units + .parity_units) * $u / $b * 1000 | round | tostring | .[0:1] + "." + .[1:]' \
    "$WORK/logs/$tag.srv.log" 2>/dev/null || echo -)
}

bt_copy() { echo "$WORK/out/m$1/$(basename "$SRC")"; }
ARIA=(aria2c --no-conf=true --enable-dht=false --enable-dht6=false --bt-enable-lpd=false
  --disable-ipv6=true --enable-peer-exchange=true --listen-port=6881 --seed-ratio=0.0
  --file-allocation=none --summary-interval=0 --allow-overwrite=true --auto-file-renaming=false
  --bt-save-metadata=false --console-log-level=warn)
run_bittorrent() {  # tag; sets ELAPSED OK
  local tag=$1 i t0 t1 pids=() spid done_all
  for i in $(seq 1 $N); do
    ip netns exec "$P-m$i" "${TO[@]}" "${ARIA[@]}" --interface="$(mip "$i")" -d "$WORK/out/m$i" \
      --on-bt-download-complete="$HOOK" "$TORRENT" >"$WORK/logs/$tag.m$i.log" 2>&1 &
    pids+=($!)
  done
  sleep 1
  t0=$(now)
  ip netns exec "$P-srv" "${TO[@]}" "${ARIA[@]}" --interface="$SRV_IP" --bt-seed-unverified=true \
    -d "$(dirname "$SRC")" "$TORRENT" >"$WORK/logs/$tag.srv.log" 2>&1 &
  spid=$!
  # Until every leecher's hook has written its time (bounded: the run timeout).
  for _ in $(seq 1 $((RUN_TIMEOUT * 20))); do
    done_all=1
    for i in $(seq 1 $N); do [ -f "$WORK/out/m$i/.done" ] || done_all=0; done
    [ $done_all = 1 ] && break
    sleep 0.05
  done
  uploads   # before the leechers stop: seeding after the last completion is not counted
  t1=0
  for i in $(seq 1 $N); do
    [ -f "$WORK/out/m$i/.done" ] && t1=$(printf '%s\n%s\n' "$t1" "$(cat "$WORK/out/m$i/.done")" | sort -g | tail -1)
  done
  for i in "${pids[@]}" "$spid"; do kill "$i" 2>/dev/null; done   # they seed until stopped
  for i in "${pids[@]}" "$spid"; do wait "$i" 2>/dev/null; done
  ELAPSED=$(echo "$t1 - $t0" | bc -l)
  OK=$(verify_copies bt_copy)
  [ $done_all = 1 ] || { log "  not every leecher completed"; OK=0; }
  UNITS_X=-
}

# ---------------------------------------------------------------- runs
declare -A TIMES SRVX BUSY UNITSX OKS
ratio() { echo "scale=3; $1 / $2" | bc -l | awk '{printf "%.3f", $1}'; }
log "source $BYTES bytes, b3 ${SRC_HASH:0:16}..., reps $REPS, tools: $TOOLS, unit $UNIT, mtu $MTU"
seq_no=0
for rep in $(seq 1 "$REPS"); do
  for tool in $TOOLS; do
    seq_no=$((seq_no + 1))
    tag="$seq_no.$tool.r$rep"
    reset_out
    sync
    snapshot
    "run_$tool" "$tag"
    [ "$tool" = bittorrent ] || uploads
    kill_run_procs
    # Members' upload: the busiest over the mean.
    sum=0; max=0
    for i in $(seq 1 $N); do
      u=${UP[m$i]}; sum=$((sum + u)); [ "$u" -gt "$max" ] && max=$u
    done
    srvx=$(ratio "${UP[srv]}" "$BYTES")
    busy=$(ratio "$max" "$(echo "$sum / $N" | bc -l)")
    t=$(printf '%.2f' "$ELAPSED"); [ "$OK" = 1 ] || t=FAIL
    TIMES[$tool]="${TIMES[$tool]:-}${TIMES[$tool]:+ }$t"
    SRVX[$tool]="${SRVX[$tool]:-}${SRVX[$tool]:+ }$srvx"
    BUSY[$tool]="${BUSY[$tool]:-}${BUSY[$tool]:+ }$busy"
    UNITSX[$tool]="${UNITSX[$tool]:-}${UNITSX[$tool]:+ }$UNITS_X"
    OKS[$tool]=$(( ${OKS[$tool]:-0} + OK ))
    members=""; for i in $(seq 1 $N); do members="$members $(ratio "${UP[m$i]}" "$BYTES")"; done
    log "$tag: $t s, verified=$OK, server upload ${srvx}x (units ${UNITS_X}x), members' upload x file:$members, busiest/mean $busy"
  done
done

# ---------------------------------------------------------------- table
median() {  # numbers on stdin, FAIL ignored
  grep -v FAIL | sort -g | awk '{a[NR]=$1} END {if (NR==0) {print "-"; exit}
    m = (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2; printf "%.2f", m}'
}
worst() { grep -v FAIL | sort -g | tail -1; }
echo
echo "Source $(numfmt --to=iec "$BYTES") ($BYTES bytes) on tmpfs, server + $N members, veth MTU $MTU on one bridge, $REPS interleaved reps, blockcast unit $UNIT."
echo
echo "| tool | seconds (median) | slowest | all runs | median / split's | server upload x file (wire) | server units x file | busiest member / mean upload | all copies verified |"
echo "|---|---:|---:|---|---:|---|---|---|---|"
split_m=$(tr ' ' '\n' <<<"${TIMES[split]:-}" | median)
for tool in $TOOLS; do
  m=$(tr ' ' '\n' <<<"${TIMES[$tool]}" | median)
  w=$(tr ' ' '\n' <<<"${TIMES[$tool]}" | worst)
  r=-
  if [ "$m" != - ] && [ "$split_m" != - ]; then r=$(printf '%.2f' "$(echo "$m / $split_m" | bc -l)"); fi
  v=yes; [ "${OKS[$tool]}" = "$REPS" ] || v="no (${OKS[$tool]}/$REPS)"
  echo "| $tool | $m | $w | ${TIMES[$tool]} | $r | ${SRVX[$tool]} | ${UNITSX[$tool]} | ${BUSY[$tool]} | $v |"
done
echo
echo "Logs: $WORK/logs"
