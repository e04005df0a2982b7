#!/usr/bin/env bash
# Shows that the linearizability checker bites: runs the soak (randomized runs of the in-process
# store, each history checked) on the unmutated store, then once per deliberate breakage of the
# core (`cfg(stm_mutation = "...")`, the list in the root Cargo.toml's check-cfg and in
# loom-tests/mutations.sh), then with a `get` that answers from a stale copy (`--stale-gets`),
# and prints a Markdown table: which of them yield a history the checker reports.
#
#   lincheck/mutations.sh                 # everything (about 20 min on 2 cores, mostly builds)
#   lincheck/mutations.sh dirty_read      # only the mutations named (after the baseline)
#   RUNS=50 OPS=2000 lincheck/mutations.sh   # fewer or shorter runs (default 300 of 5000)
#
# Each mutation builds in its own target/lincheck-mut/NAME (a rerun rebuilds nothing) and logs
# to target/lincheck-mut/NAME/soak.log. Exits non-zero if the unmutated store fails, or if the
# stale copy goes unnoticed. A mutation that is not caught is reported, not an error: some
# break progress or memory safety, which no history of answers shows (the table says which).
set -uo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
out="$root/target/lincheck-mut"
runs="${RUNS:-300}"
ops="${OPS:-5000}"
seed="${SEED:-1}"
# Per configuration; a mutation that hangs a run counts as "hang".
timeout_s="${RUN_TIMEOUT:-900}"
mkdir -p "$out"

# What each mutation breaks (as loom-tests/mutations.sh describes them).
declare -A what=(
    [skip_read_validation]="read-only keys are not validated"
    [decide_before_claims]="a commit is decided after its first claim"
    [no_descriptor]="a multi-key commit validates every key, then writes them one by one"
    [single_collect]="a snapshot trusts one collect"
    [dirty_read]="readers see the writes of undecided commits"
    [no_birth_check]="dump ignores keys created while it read"
    [no_opacity]="a transaction's new read does not check its earlier reads"
    [lost_wakeup]="a transaction in retry can miss its wake-up (progress)"
    [helper_silent]="a helper that decides a commit wakes no waiter (progress)"
    [writable_tombstone]="a removed key's tombstone can be written over"
    [no_floor]="a key created again starts at version 0"
    [uncounted_entries]="descriptor entries hold no count on their slots (memory safety)"
    [double_read]="get and usevar read a record again after checking it is no tombstone"
)
implemented=(
    skip_read_validation decide_before_claims no_descriptor single_collect dirty_read
    no_birth_check no_opacity lost_wakeup helper_silent writable_tombstone no_floor
    uncounted_entries double_read
)
if [ $# -gt 0 ]; then mutations=("$@"); else mutations=("${implemented[@]}"); fi

# soak NAME BUILD RUSTFLAGS [ARGS...]: builds the soak in target/lincheck-mut/BUILD with
# RUSTFLAGS, runs it with ARGS, logs to target/lincheck-mut/NAME; prints one table row.
soak() {
    local name="$1" build="$out/$2" flags="$3"
    shift 3
    local dir="$out/$name"
    mkdir -p "$dir"
    if ! CARGO_TARGET_DIR="$build" RUSTFLAGS="$flags" \
        cargo build --release -q -p stm-store-lincheck --bin soak >"$dir/build.log" 2>&1; then
        echo "| \`$name\` | ${what[$name]:-} | BUILD FAILED (see $dir/build.log) | |"
        return 2
    fi
    local started=$SECONDS status
    timeout "$timeout_s" "$build/release/soak" --runs "$runs" --ops "$ops" --seed "$seed" "$@" \
        >"$dir/soak.log" 2>&1
    status=$?
    local took=$((SECONDS - started))
    local summary violations first window
    summary=$(grep '^soak:' "$dir/soak.log" | tail -1)
    violations=$(sed -n 's/.*violations \([0-9]*\).*/\1/p' <<<"$summary")
    # The first violation: its run, and how many operations show it.
    first=$(grep -m1 -o '^run [0-9]*' "$dir/soak.log" | cut -d' ' -f2)
    window=$(grep -m1 -o 'these [0-9]* operations cannot' "$dir/soak.log" | grep -o '[0-9]*')
    local verdict
    if [ "$status" -eq 124 ]; then
        verdict="hang (no answer within ${timeout_s} s)"
    elif [ -z "$summary" ]; then
        verdict="crashed (exit $status, see $dir/soak.log)"
    elif [ "${violations:-0}" -gt 0 ]; then
        verdict="**caught**: $violations of $runs histories not linearizable (the first, run $first, shown by $window operations)"
    elif [ "$name" = none ]; then
        verdict="all $runs histories linearizable"
    else
        verdict="not caught: all $runs histories linearizable"
    fi
    echo "| \`$name\` | ${what[$name]:-} | $verdict | ${took} s |"
    [ "$status" -ne 124 ] && [ -n "$summary" ] && [ "${violations:-0}" -gt 0 ] && return 1
    [ "$status" -eq 0 ] || return 3
    return 0
}

echo "Each row: $runs randomized runs of $ops operations (seeds $seed..), each history checked."
echo
echo "| configuration | what it breaks | verdict | time |"
echo "|---|---|---|---|"
what[none]="nothing (the store as it is)"
soak none none "" || { echo "the unmutated store failed: see $out/none/soak.log" >&2; exit 1; }
what[stale_gets]="a get answers from a copy kept past later commits (a test wrapper)"
if soak stale_gets none "" --stale-gets; then
    echo "the stale copy went unnoticed: see $out/stale_gets/soak.log" >&2
    exit 1
fi
for m in "${mutations[@]}"; do
    soak "$m" "$m" "--cfg stm_mutation=\"$m\""
done
exit 0
