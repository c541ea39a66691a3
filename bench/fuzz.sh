#!/usr/bin/env bash
# Long fuzz runs of every target in fuzz/src/lib.rs (wire, manifest, http, state, receiver,
# sender), outside CI (cargo test runs a short smoke run of each).
#
# Usage: bench/fuzz.sh [--seconds N] [--cases N] [--seed S] [TARGET...]
#   --seconds N  libFuzzer, coverage-guided, N seconds per target (default 120). Built on the
#                stable toolchain: libfuzzer-sys (libFuzzer's C++ source, built with the
#                system's C++ compiler) and rustc's stable SanitizerCoverage pass
#                (-Cpasses=sancov-module), for the host target only so build scripts stay
#                uninstrumented; release with debug assertions and overflow checks. Each
#                target starts from fuzz/corpus/<target> and keeps what it finds in
#                target/fuzz/corpus/<target> (never written back into the repository);
#                a failing input is saved as target/fuzz/artifacts/<target>/crash-*.
#   --cases N    no coverage feedback: the seeded generator and mutator (fuzz-cases) runs N
#                inputs per target after the corpus, release with overflow checks.
# Every build goes to target/fuzz (its own flags; the workspace's builds are not disturbed).
# Nothing here opens a socket: the targets are sans-IO.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER=120
CASES=""
SEED=1
TARGETS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) SECONDS_PER="$2"; shift 2 ;;
    --cases) CASES="$2"; shift 2 ;;
    --seed) SEED="$2"; shift 2 ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) TARGETS+=("$1"); shift ;;
  esac
done
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(wire manifest http state receiver sender)
OUT="$PWD/target/fuzz"
HOST=$(rustc -vV | sed -n 's/^host: //p')

if [ -n "$CASES" ]; then
  CARGO_PROFILE_RELEASE_OVERFLOW_CHECKS=true CARGO_PROFILE_RELEASE_DEBUG_ASSERTIONS=true \
    nice -n 10 cargo build --release -p blockcast-fuzz --bin fuzz-cases --target-dir "$OUT" >&2
  for t in "${TARGETS[@]}"; do
    "$OUT/release/fuzz-cases" "$t" "$CASES" "$SEED"
  done
  exit 0
fi

command -v c++ >/dev/null || { echo "libFuzzer needs a C++ compiler (apt-get install g++)" >&2; exit 1; }
FLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4"
FLAGS+=" -Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table"
FLAGS+=" -Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing"
(cd fuzz/libfuzzer && RUSTFLAGS="$FLAGS" nice -n 10 cargo build --release --target "$HOST" \
  --target-dir "$OUT" >&2)
for t in "${TARGETS[@]}"; do
  mkdir -p "$OUT/corpus/$t" "$OUT/artifacts/$t"
  log="$OUT/$t.log"
  status=0
  "$OUT/$HOST/release/$t" "$OUT/corpus/$t" "fuzz/corpus/$t" -max_total_time="$SECONDS_PER" \
    -max_len=4096 -rss_limit_mb=2048 -timeout=10 -seed="$SEED" -print_final_stats=1 \
    -artifact_prefix="$OUT/artifacts/$t/" >"$log" 2>&1 || status=$?
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1)
  found=$(ls "$OUT/artifacts/$t" | wc -l)
  echo "$t: ${runs:-?} cases in ${SECONDS_PER} s, ${cov:-cov: ?} edges, corpus $(ls "$OUT/corpus/$t" | wc -l) inputs, failures saved: $found (exit $status; log $log)"
done
