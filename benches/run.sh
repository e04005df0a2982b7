#!/usr/bin/env bash
# The full benchmark run behind BENCHMARKS.md: builds the benchmarks (the `stm-store-benches`
# workspace member), waits (up to 20 minutes) for a quiet machine, runs every benchmark target
# once, and writes the tables (each of the issue's targets as a ratio from this one run).
#
#   bash benches/run.sh                  # then read target/bench-tables.md
#   MAX_LOAD=2 bash benches/run.sh       # accept a busier machine
#   BENCHES="lockfree memory" bash benches/run.sh   # only some targets
#   STALL_SECONDS=5 bash benches/run.sh  # longer lockfree runs (default 2 s each)
#
# Criterion writes its estimates under the workspace target directory
# (`${CARGO_TARGET_DIR:-target}/criterion`); report.py reads them from there. The target
# directory is made absolute and exported: criterion runs in `benches/` and would resolve a
# relative CARGO_TARGET_DIR from there.
set -euo pipefail
cd "$(dirname "$0")/.."
target=$(realpath -m "${CARGO_TARGET_DIR:-target}")
export CARGO_TARGET_DIR=$target
log=$target/bench.log
max_load=${MAX_LOAD:-0.8}
benches=${BENCHES:-contention single_thread thread_count memory lockfree transactions}

cargo bench -p stm-store-benches --no-run

load1() { cut -d' ' -f1 /proc/loadavg; }
for _ in $(seq 120); do
    awk -v l="$(load1)" -v m="$max_load" 'BEGIN { exit !(l < m) }' && break
    sleep 10
done

mkdir -p "$target"
rm -rf "$target/criterion"
: >"$log"
start=$(date +%s)
for bench in $benches; do
    echo "LOADAVG before $bench: $(cat /proc/loadavg)" | tee -a "$log"
    cargo bench -p stm-store-benches --bench "$bench" 2>&1 | tee -a "$log"
done
echo "LOADAVG after all: $(cat /proc/loadavg); $(($(date +%s) - start)) s" | tee -a "$log"
python3 benches/report.py "$log" "$target/criterion" >"$target/bench-tables.md"
echo "tables: $target/bench-tables.md"
