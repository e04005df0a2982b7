#!/usr/bin/env bash
# The full benchmark run behind BENCHMARKS.md: builds the benchmarks (the `stm-store-benches`
# workspace member) and the bank example, waits (up to 20 minutes) for a quiet machine, runs
# every benchmark target once and the bank example once, and writes the tables (every number
# with its ratios to both mutex maps and to the floor, from this one run).
#
#   bash benches/run.sh                  # then read target/bench-tables.md
#   MAX_LOAD=2 bash benches/run.sh       # accept a busier machine (default: load below 0.8)
#   BENCHES="lockfree memory" bash benches/run.sh   # only some targets ("bank": the example)
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
benches=${BENCHES:-contention transactions single_thread thread_count lockfree memory bank}

cargo bench -p stm-store-benches --no-run
case " $benches " in *" bank "*) cargo build --release --example bank ;; esac

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
    if [ "$bench" = bank ]; then
        cargo run --release --example bank 2>&1 | tee -a "$log"
    else
        cargo bench -p stm-store-benches --bench "$bench" 2>&1 | tee -a "$log"
    fi
done
echo "LOADAVG after all: $(cat /proc/loadavg); $(($(date +%s) - start)) s" | tee -a "$log"
python3 benches/report.py "$log" "$target/criterion" >"$target/bench-tables.md"
echo "tables: $target/bench-tables.md"
