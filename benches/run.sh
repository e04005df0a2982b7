#!/usr/bin/env bash
# The full benchmark run behind BENCHMARKS.md: waits (up to 20 minutes) for a quiet machine,
# runs every benchmark binary once, and writes the tables.
#
#   bash benches/run.sh            # then read target/bench-tables.md
#   MAX_LOAD=2 bash benches/run.sh # accept a busier machine
set -euo pipefail
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:-target}
log=$target/bench.log
max_load=${MAX_LOAD:-0.8}

cargo bench --benches --no-run

load1() { cut -d' ' -f1 /proc/loadavg; }
for _ in $(seq 120); do
    awk -v l="$(load1)" -v m="$max_load" 'BEGIN { exit !(l < m) }' && break
    sleep 10
done

rm -rf "$target/criterion"
: >"$log"
start=$(date +%s)
for bench in contention single_thread thread_count memory; do
    echo "LOADAVG before $bench: $(cat /proc/loadavg)" | tee -a "$log"
    cargo bench --bench "$bench" 2>&1 | tee -a "$log"
done
echo "LOADAVG after all: $(cat /proc/loadavg); $(($(date +%s) - start)) s" | tee -a "$log"
python3 benches/report.py "$log" "$target/criterion" >"$target/bench-tables.md"
echo "tables: $target/bench-tables.md"
