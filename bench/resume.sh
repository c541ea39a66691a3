#!/usr/bin/env bash
# Kill-and-resume at many seeds: runs cli/tests/resume.rs's
# a_receiver_killed_at_a_random_point_resumes_and_fetches_only_what_it_did_not_hold once per
# seed (a 48 MiB object served at 16 MB/s on loopback, the receiver SIGKILLed where the seed
# says between 20 % and 80 % of the first pass, then started again) and prints each run's
# line and the distribution of the re-fetched share: bytes fetched again although their block
# was whole in the file at the kill, over the object's size.
#
#   bench/resume.sh            # seeds 1..20
#   SEEDS="1 2 3" bench/resume.sh
set -euo pipefail
cd "$(dirname "$0")/.."
seeds=${SEEDS:-$(seq 1 20)}
test=a_receiver_killed_at_a_random_point_resumes_and_fetches_only_what_it_did_not_hold
cargo test -q -p blockcast --test resume --no-run
lines=()
for s in $seeds; do
  line=$(BLOCKCAST_RESUME_SEED=$s cargo test -q -p blockcast --test resume "$test" -- --exact --nocapture 2>&1 |
    grep '^resume seed' || echo "resume seed $s: FAILED")
  echo "$line"
  lines+=("$line")
done
ok=$(printf '%s\n' "${lines[@]}" | grep -v FAILED || true)
failed=$(printf '%s\n' "${lines[@]}" | grep -c FAILED || true)
[ -n "$ok" ] || { echo "no successful run"; exit 1; }
# Each line ends "re-fetched N bytes = S % of the object": S is the fifth field from the end.
shares=$(echo "$ok" | awk '{print $(NF-4)}' | sort -g)
kills=$(echo "$ok" | sed 's/.*killed at \([0-9.]*\) %.*/\1/' | sort -g)
n=$(echo "$shares" | wc -l)
median=$(echo "$shares" | awk -v n="$n" '{v[NR]=$1} END {printf "%.3f", (n % 2) ? v[(n+1)/2] : (v[n/2] + v[n/2+1]) / 2}')
echo "runs $n, failed $failed; killed at $(echo "$kills" | head -1)-$(echo "$kills" | tail -1) % of the object"
echo "re-fetched share of the object: min $(echo "$shares" | head -1) %, median $median %, max $(echo "$shares" | tail -1) %"
