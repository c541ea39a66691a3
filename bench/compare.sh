#!/usr/bin/env bash
# Side-by-side comparison of blockcast, UFTP and udpcast on the same file and receivers.
#
# Everything runs inside network namespaces this script creates (no eth0 there): one "server"
# namespace and up to 4 receiver namespaces, each joined by a veth pair to a bridge in a "hub"
# namespace, addresses 10.99.0.0/24, multicast route 224.0.0.0/4 via the veth. Runs are
# interleaved (A B C A B C ...), every copy is checked with BLAKE3 against the source, and a
# Markdown table with medians and ratios is printed at the end. The namespaces are deleted on exit.
# See ../shared/reference/peer-tools.md for why UFTP and udpcast must stay inside namespaces.
#
# Usage: bench/compare.sh [--size 256M] [--reps 3] [--receivers "1 4"] [--loss "1 5"]
#                         [--tools "blockcast blockcast_tuned uftp udpcast uftp_default udpcast_default"]
#                         [--mtu 9000] [--run-timeout 180] [--default-size 4M]
#                         [--work /tmp/blockcast-compare] [--bc-unit BYTES] [--no-install] [--no-build]
# uftp_default and udpcast_default run each tool with nothing but the options that keep it on
# the namespaces' veth (its defaults otherwise), without loss only; UFTP's default rate is
# 1 Mbit/s, so uftp_default sends a --default-size file instead of the full one.
# Environment: BC_SERVE_ARGS adds flags to every `blockcast serve` (e.g. "--threads 1 --rate 800M");
# BC_BIN runs another blockcast binary (default: target/release/blockcast).
# GB/s per receiver = file bytes / (server start -> last receiver done) (for UFTP, whose
# receiver daemon never exits: server start -> server exit, which happens once every client
# has reported the file complete). Start-up of the receivers is not timed (they are started
# and given 1 s before the server starts). --loss applies to N=4 only.
# `bench/compare.sh split-vs-bt [options]` runs bench/split-vs-bt.sh instead: blockcast's split
# mode against BitTorrent (aria2c + opentracker), 1 GiB to four members (see that script).
set -uo pipefail
if [ "${1:-}" = split-vs-bt ]; then shift; exec "$(dirname "$0")/split-vs-bt.sh" "$@"; fi

SIZE=256M
REPS=3
RECEIVERS="1 4"
LOSS=""
TOOLS="blockcast blockcast_tuned uftp udpcast uftp_default udpcast_default"
DEFAULT_SIZE=4M
MTU=9000
RUN_TIMEOUT=180
WORK=/tmp/blockcast-compare
INSTALL=1
BUILD=1
BC_UNIT_OPT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --size) SIZE=$2; shift 2 ;;
    --reps) REPS=$2; shift 2 ;;
    --receivers) RECEIVERS=$2; shift 2 ;;
    --loss) LOSS=$2; shift 2 ;;
    --tools) TOOLS=$2; shift 2 ;;
    --mtu) MTU=$2; shift 2 ;;
    --run-timeout) RUN_TIMEOUT=$2; shift 2 ;;
    --default-size) DEFAULT_SIZE=$2; shift 2 ;;
    --work) WORK=$2; shift 2 ;;
    --bc-unit) BC_UNIT_OPT=$2; shift 2 ;;
    --no-install) INSTALL=0; shift ;;
    --no-build) BUILD=0; shift ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "unknown option: $1" >&2; exit 2 ;;
  esac
done

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BC=${BC_BIN:-$ROOT/target/release/blockcast}
. "$ROOT/bench/lib/netns.sh"
GUARD=$(ns_guard_path "$ROOT")
MAXN=4
P=bcmp                      # namespace prefix: $P-hub, $P-srv, $P-r1 .. $P-r4
SRV_IP=10.99.0.1
rip() { echo "10.99.0.1$1"; }   # receiver i -> 10.99.0.1i

log() { echo "[compare] $*" >&2; }
die() { log "error: $*"; exit 1; }
[ "$(id -u)" = 0 ] || die "needs root (network namespaces)"

# ---------------------------------------------------------------- install, build
need=()
command -v uftp >/dev/null && command -v uftpd >/dev/null || need+=(uftp)
command -v udp-sender >/dev/null && command -v udp-receiver >/dev/null || need+=(udpcast)
command -v nft >/dev/null || need+=(nftables)
command -v ip >/dev/null || need+=(iproute2)
command -v b3sum >/dev/null || need+=(b3sum)
if [ ${#need[@]} -gt 0 ]; then
  [ $INSTALL = 1 ] || die "missing: ${need[*]}"
  log "installing ${need[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null \
    || die "apt-get install failed"
fi
if [ $BUILD = 1 ]; then
  log "building blockcast (release)"
  (cd "$ROOT" && cargo build --release -p blockcast -q) || die "cargo build failed"
fi
[ -x "$BC" ] || die "no $BC"

# ---------------------------------------------------------------- safety net, cleanup
"$GUARD" up || die "net-guard up failed"

ALL_NS=("$P-hub" "$P-srv")
for i in $(seq 1 $MAXN); do ALL_NS+=("$P-r$i"); done

ns_cleanup_on_exit "$WORK/out"

# ---------------------------------------------------------------- topology
log "creating namespaces ${ALL_NS[*]} (bridge in $P-hub, mtu $MTU)"
ns_hub
ns_host srv "$SRV_IP" p-srv
for i in $(seq 1 $MAXN); do ns_host "r$i" "$(rip "$i")" "p-r$i"; done
ns_raise_root_buffers
ip -n "$P-srv" -br link show veth0 | grep -q LOWER_UP || die "topology: server veth is not up"

use_receivers() {  # bring up the hub ports of receivers 1..n, the others down (no flooding to idle hosts)
  local n=$1 i
  for i in $(seq 1 $MAXN); do
    if [ "$i" -le "$n" ]; then ip -n "$P-hub" link set "p-r$i" up; else ip -n "$P-hub" link set "p-r$i" down; fi
  done
}
set_loss() {  # permille: drop that share of all UDP arriving in each receiver namespace
  local pm=$1 i ns
  for i in $(seq 1 $MAXN); do
    ns=$P-r$i
    ip netns exec "$ns" nft delete table inet loss 2>/dev/null
    [ "$pm" -gt 0 ] || continue
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

# ---------------------------------------------------------------- source file
mkdir -p "$WORK/out" "$WORK/logs"
SRC=$WORK/src.bin
want=$(numfmt --from=iec "$SIZE")
if [ ! -f "$SRC" ] || [ "$(stat -c %s "$SRC")" != "$want" ]; then
  log "generating $SRC ($SIZE random bytes)"
  head -c "$want" /dev/urandom > "$SRC.tmp" && mv "$SRC.tmp" "$SRC"
fi
BYTES=$(stat -c %s "$SRC")
SRC_HASH=$(b3sum --no-names "$SRC")
# The smaller file uftp_default sends.
SMALL=$WORK/src-small.bin
want=$(numfmt --from=iec "$DEFAULT_SIZE")
if [ ! -f "$SMALL" ] || [ "$(stat -c %s "$SMALL")" != "$want" ]; then
  head -c "$want" /dev/urandom > "$SMALL.tmp" && mv "$SMALL.tmp" "$SMALL"
fi
SMALL_BYTES=$(stat -c %s "$SMALL")
SMALL_HASH=$(b3sum --no-names "$SMALL")
cat "$SRC" > /dev/null   # into the page cache

now() { date +%s.%N; }
gbps() { awk -v g="$1" 'BEGIN { if (g >= 0.01) printf "%.3f", g; else printf "%.6f", g }'; }
TO=(timeout -k 5 "$RUN_TIMEOUT")
RUNSEQ=0

# Each run_* sets ELAPSED (seconds) and OK (1 = tool reported success and every copy verified).
verify_copies() {  # n file-for-receiver-i-pattern...
  local n=$1 i f h good=1
  for i in $(seq 1 "$n"); do
    f=$(copy_path "$i")
    if [ ! -f "$f" ]; then log "  r$i: no copy at $f"; good=0; continue; fi
    h=$(b3sum --no-names "$f")
    [ "$h" = "$RUN_HASH" ] || { log "  r$i: hash mismatch ($(stat -c %s "$f") bytes)"; good=0; }
  done
  echo $good
}
reset_out() { local i; rm -rf "$WORK/out"; for i in $(seq 1 $MAXN); do mkdir -p "$WORK/out/r$i"; done; }

run_blockcast() {  # n tag
  local n=$1 tag=$2 i t0 t1 rc=0 pids=() spid
  local group=239.255.73.$((1 + RUNSEQ % 200)):$((9300 + RUNSEQ % 100))
  copy_path() { echo "$WORK/out/r$1/copy"; }
  for i in $(seq 1 "$n"); do
    ip netns exec "$P-r$i" "${TO[@]}" "$BC" receive --group "$group" --iface "$(rip "$i")" \
      --out "$WORK/out/r$i/copy" --timeout 30 -q --json >"$WORK/logs/$tag.r$i.log" 2>&1 &
    pids+=($!)
  done
  sleep 1
  t0=$(now)
  ip netns exec "$P-srv" "${TO[@]}" "$BC" serve "$SRC" --group "$group" --iface "$SRV_IP" \
    --unit-size "$BC_UNIT" --min-receivers "$n" --max-wait 20 --deadline 300 -q \
    ${BC_HASH:---no-hash-cache} ${BC_SERVE_ARGS:-} \
    >"$WORK/logs/$tag.srv.log" 2>&1 &
  spid=$!
  for i in "${pids[@]}"; do wait "$i" || rc=$?; done
  t1=$(now)
  wait "$spid" || rc=$?
  ELAPSED=$(echo "$t1 - $t0" | bc -l)
  OK=$(verify_copies "$n")
  [ $rc = 0 ] || { log "  blockcast exit status $rc"; OK=0; }
}

# blockcast at its best settings on this 2-core box: one data thread (the receivers need the
# other core), without loss a fixed rate well above what the path takes (no ramp-up), and the
# file's hashes from the hash cache (a repeat serve of the same file: no hashing before the
# first unit). The plain `blockcast` rows hash the file at start, as a first serve does.
run_blockcast_tuned() {
  local saved=${BC_SERVE_ARGS:-}
  if [ "$CUR_LOSS" -gt 0 ]; then BC_SERVE_ARGS="--threads 1 $saved"; else BC_SERVE_ARGS="--threads 1 --rate 2G $saved"; fi
  BC_HASH="--hash-cache $WORK/hashes"
  run_blockcast "$@"
  BC_SERVE_ARGS=$saved
  unset BC_HASH
}

run_udpcast() {  # n tag [defaults]
  local n=$1 tag=$2 i t0 t1 rc=0 pids=() spid rbuf=(--rcvbuf 4194304) best=(--full-duplex --nopointopoint)
  if [ "${3:-}" = defaults ]; then rbuf=(); best=(); fi
  copy_path() { echo "$WORK/out/r$1/copy"; }
  for i in $(seq 1 "$n"); do
    ip netns exec "$P-r$i" "${TO[@]}" udp-receiver --interface veth0 --mcast-rdv-address 239.255.71.1 \
      --portbase 9170 --nokbd --start-timeout 60 --receive-timeout 60 "${rbuf[@]}" \
      --file "$WORK/out/r$i/copy" </dev/null >"$WORK/logs/$tag.r$i.log" 2>&1 &
    pids+=($!)
  done
  sleep 1
  t0=$(now)
  ip netns exec "$P-srv" "${TO[@]}" udp-sender --interface veth0 --mcast-rdv-address 239.255.71.1 \
    --mcast-data-address 239.255.71.2 --portbase 9170 --nokbd --min-receivers "$n" --max-wait 20 \
    --start-timeout 60 "${best[@]}" --file "$SRC" </dev/null \
    >"$WORK/logs/$tag.srv.log" 2>&1 &
  spid=$!
  for i in "${pids[@]}"; do wait "$i" || rc=$?; done
  t1=$(now)
  wait "$spid" || rc=$?
  ELAPSED=$(echo "$t1 - $t0" | bc -l)
  OK=$(verify_copies "$n")
  [ $rc = 0 ] || { log "  udpcast exit status $rc (124/137 = timed out)"; OK=0; }
}

run_uftp() {  # n tag [defaults]
  local n=$1 tag=$2 i t0 t1 rc=0 pids=() hosts="" rate=(-R -1 -b "$UFTP_BLOCK" -B 4194304) rbuf=(-B 4194304)
  local src=$SRC
  [ "$CUR_LOSS" -gt 0 ] && rate=(-R 400000 -b 1400 -B 4194304)   # peer-tools.md: -R -1 collapses under loss
  if [ "${3:-}" = defaults ]; then rate=(); rbuf=(); src=$SMALL; RUN_BYTES=$SMALL_BYTES; RUN_HASH=$SMALL_HASH; fi
  copy_path() { echo "$WORK/out/r$1/$(basename "$src")"; }
  for i in $(seq 1 "$n"); do
    ip netns exec "$P-r$i" "${TO[@]}" uftpd -d -q -I veth0 -M 239.255.72.1 -U "0x0000A00$i" \
      "${rbuf[@]}" -D "$WORK/out/r$i" >"$WORK/logs/$tag.r$i.log" 2>&1 &
    pids+=($!)
    hosts="$hosts${hosts:+,}0x0000A00$i"
  done
  sleep 1
  t0=$(now)
  ip netns exec "$P-srv" "${TO[@]}" uftp -I veth0 -M 239.255.72.1 -P 239.255.72.2 -H "$hosts" \
    "${rate[@]}" "$src" >"$WORK/logs/$tag.srv.log" 2>&1
  rc=$?
  t1=$(now)
  for i in "${pids[@]}"; do kill "$i" 2>/dev/null; done   # uftpd never exits by itself
  for i in "${pids[@]}"; do wait "$i" 2>/dev/null; done
  ELAPSED=$(echo "$t1 - $t0" | bc -l)
  OK=$(verify_copies "$n")
  [ $rc = 0 ] || { log "  uftp exit status $rc (124/137 = timed out)"; OK=0; }
}

# The tools with nothing but the options that keep them on the namespaces' veth.
run_uftp_default() { run_uftp "$1" "$2" defaults; }
run_udpcast_default() { run_udpcast "$1" "$2" defaults; }

# ---------------------------------------------------------------- runs
# blockcast's datagram is unit + 26-byte header + 28 bytes UDP/IP: 8944 is the largest unit that
# fits a 9000-byte MTU unfragmented (8972 would be fragmented in two).
BC_UNIT=${BC_UNIT_OPT:-$(( MTU >= 9000 ? 8944 : 1400 ))}
UFTP_BLOCK=$(( MTU >= 9000 ? 8800 : 1300 ))
command -v bc >/dev/null || die "needs bc"
declare -A RUNS OKS   # key "tool|n|loss" -> space-separated GB/s (or FAIL) / count of verified runs

if [[ " $TOOLS " == *" blockcast_tuned "* ]]; then
  # Fill blockcast_tuned's hash cache (as `blockcast hash` after building an image would). The
  # cache stores a file only once it has not changed for 2 s: ask until it has (bounded).
  for try in $(seq 1 20); do
    cached=$("$BC" hash "$SRC" --unit-size "$BC_UNIT" --hash-cache "$WORK/hashes" --json |
      sed -n 's/.*"from_cache":\([0-9]*\).*/\1/p')
    [ "$cached" = 1 ] && break
    sleep 0.5
  done
  [ "$cached" = 1 ] || die "the hash cache did not take $SRC"
fi

cases=()
for n in $RECEIVERS; do cases+=("$n|0"); done
for l in $LOSS; do cases+=("4|$((l * 10))"); done

log "source $BYTES bytes, b3 ${SRC_HASH:0:16}..., reps $REPS, tools: $TOOLS, cases (n|loss permille): ${cases[*]}"
for c in "${cases[@]}"; do
  n=${c%|*}; CUR_LOSS=${c#*|}
  use_receivers "$n"
  set_loss "$CUR_LOSS"
  for rep in $(seq 1 "$REPS"); do
    for tool in $TOOLS; do
      # Defaults are measured without loss only.
      [[ $tool == *_default && $CUR_LOSS -gt 0 ]] && continue
      RUNSEQ=$((RUNSEQ + 1))
      key="$tool|$n|$CUR_LOSS"
      tag="$RUNSEQ.$tool.n$n.l$CUR_LOSS.r$rep"
      reset_out
      sync
      RUN_BYTES=$BYTES RUN_HASH=$SRC_HASH
      "run_$tool" "$n" "$tag"
      ns_kill_procs   # anything a tool left behind
      if [ "$OK" = 1 ]; then
        g=$(echo "scale=9; $RUN_BYTES / $ELAPSED / 1000000000" | bc -l)
        g=$(gbps "$g")
      else
        g=FAIL
      fi
      RUNS[$key]="${RUNS[$key]:-}${RUNS[$key]:+ }$g"
      OKS[$key]=$(( ${OKS[$key]:-0} + OK ))
      log "$tag: $(printf '%.2f' "$ELAPSED") s -> $g GB/s per receiver, verified=$OK"
    done
  done
done
set_loss 0

# ---------------------------------------------------------------- table
median() {  # numbers on stdin, FAIL ignored
  grep -v FAIL | sort -g | awk '{a[NR]=$1} END {if (NR==0) {print "-"; exit}
    m = (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2
    if (m >= 0.01) printf "%.3f", m; else printf "%.6f", m}'
}
echo
echo "Source $(numfmt --to=iec "$BYTES") ($BYTES bytes), $REPS interleaved reps, mtu $MTU, blockcast unit $BC_UNIT, UFTP block $UFTP_BLOCK (1400 at 400 Mbit/s under loss)."
echo
echo "| tool | receivers | loss | GB/s per receiver (median) | all runs | blockcast best / tool | all copies verified |"
echo "|---|---:|---:|---:|---|---:|---|"
for c in "${cases[@]}"; do
  n=${c%|*}; l=${c#*|}
  # The ratio column compares blockcast's best median (defaults or tuned) with each tool.
  bd=$(tr ' ' '\n' <<<"${RUNS[blockcast|$n|$l]:-}" | median)
  bt=$(tr ' ' '\n' <<<"${RUNS[blockcast_tuned|$n|$l]:-}" | median)
  bm=$(printf '%s\n%s\n' "$bd" "$bt" | grep -v '^-$' | sort -g | tail -1)
  [ -n "$bm" ] || bm=-
  for tool in $TOOLS; do
    key="$tool|$n|$l"
    [[ $tool == *_default && $l -gt 0 ]] && continue
    m=$(tr ' ' '\n' <<<"${RUNS[$key]}" | median)
    if [ "$m" = - ] || [ "$bm" = - ] || [ "$(echo "$m == 0" | bc)" = 1 ]; then r=-; else r=$(printf '%.2f' "$(echo "$bm / $m" | bc -l)"); fi
    v=no; [ "${OKS[$key]}" = "$REPS" ] && v=yes
    [ "$v" = no ] && v="no (${OKS[$key]}/$REPS)"
    echo "| $tool | $n | $(awk -v p="$l" 'BEGIN{printf "%g %%", p/10}') | $m | ${RUNS[$key]} | $r | $v |"
  done
done
if [[ " $TOOLS " == *" uftp_default "* ]]; then
  echo
  echo "uftp_default sent a $(numfmt --to=iec "$SMALL_BYTES") file (UFTP's default rate, 1 Mbit/s, would take $(echo "$BYTES * 8 / 1000000 / 60" | bc) min for the full one); the *_default rows ran without loss only."
fi
echo
echo "Logs: $WORK/logs"
