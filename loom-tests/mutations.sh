#!/usr/bin/env bash
# Runs the loom models once unmutated, then once per deliberate breakage of the protocol that
# the core implements, and prints which models fail under each. Exits non-zero if a model
# fails unmutated, or if a mutation survives (no model fails) that is not a known survivor.
#
#   loom-tests/mutations.sh                  # the unmutated suite, then the whole matrix
#   loom-tests/mutations.sh no_descriptor    # only the mutations named (after the baseline)
#   SKIP_BASELINE=1 loom-tests/mutations.sh  # skip the unmutated run
#
# The mutations (`cfg(stm_mutation = "...")`, registered in the root Cargo.toml's check-cfg):
#   skip_read_validation  read-only keys are not validated (neither alone nor in a descriptor)
#   decide_before_claims  a transaction is decided after its first claim
#   no_descriptor         a multi-key commit validates every key, then writes them one by one
#   single_collect        a snapshot trusts one collect
#   dirty_read            readers see the writes of undecided transactions
#   no_birth_check        dump ignores keys created while it read (a known survivor: loom never
#                         schedules a key creator between dump's index listing and its slot
#                         reads, see keys.rs; reported as "SURVIVED (known)", not a failure)
#   no_opacity            a transaction's new read does not check its earlier reads
#   lost_wakeup           a transaction in `retry` checks its reads before registering as a
#                         waiter, not after
#   helper_silent         a thread that decides another thread's commit wakes no waiter
#   writable_tombstone    the slot module writes over tombstones, and a tombstone's version
#                         loses its removed bit (commit_one and claim still refuse a tombstone
#                         since 577fc3f, so the models catch a read-only commit validating
#                         against a tombstone)
#   no_floor              a key created again after its removal starts at version 0, not above
#                         the highest removed version
#   uncounted_entries     descriptor entries hold no count on their slots (caught only through
#                         a forgotten paused commit: a claiming snapshot counts its slots itself,
#                         see removal.rs)
#   double_read           `get` and `usevar` read a slot's record again after checking that it
#                         is not a tombstone (a removal decided in between leaks its tombstone)
# The check-cfg list also names overwrite_undecided_claim, no_status_check and
# late_claim_stays, which the core does not implement (the slot module refuses to replace an
# undecided claim, and a late claim left in its slot would be a use-after-free loom cannot
# see): they would build the unmutated core, so they are not run.
#
# Each configuration builds in its own target/loom-mut/NAME (so a rerun rebuilds nothing) and
# logs to target/loom-mut/NAME/logs/. Every model runs in a process of its own (one at a time:
# loom is single-threaded, and the machine is shared): a model that panics under loom can
# abort its whole test binary (loom panics again while dropping the threads it never ran), and
# that must not hide the other models of the file. Ignored models are not run. A model that
# does not finish within MODEL_TIMEOUT seconds counts as failing ("timeout").
# LOOM_MAX_PREEMPTIONS, if set, overrides every model's own preemption bound.
set -uo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
out="$root/target/loom-mut"
# Per model; the slowest unmutated model takes about 30 s (paused_commit_is_freed).
model_timeout="${MODEL_TIMEOUT:-300}"
implemented=(
    skip_read_validation
    decide_before_claims
    no_descriptor
    single_collect
    dirty_read
    no_birth_check
    no_opacity
    lost_wakeup
    helper_silent
    writable_tombstone
    no_floor
    uncounted_entries
    double_read
)
# Mutations that no loom model can catch, and why (see the model docs).
known_survivors=(no_birth_check)

if [ $# -gt 0 ]; then
    mutations=("$@")
else
    mutations=("${implemented[@]}")
fi

# run NAME CFG: builds the models with `--cfg loom --cfg crossbeam_loom CFG`, runs each model
# in its own process, and prints the failing ones on one line ("BUILD-FAILED" if the build
# fails). Each model's time (and loom's execution counts) goes to NAME/logs/times.txt.
run() {
    local name="$1" cfg="$2"
    local dir="$out/$name"
    mkdir -p "$dir/logs"
    local build_log="$dir/logs/build.log" times="$dir/logs/times.txt"
    : >"$times"
    if ! CARGO_TARGET_DIR="$dir" RUSTFLAGS="--cfg loom --cfg crossbeam_loom $cfg" \
        cargo test -p stm-store-loom-tests --release --no-run >"$build_log" 2>&1; then
        echo "BUILD-FAILED(see $build_log)"
        return
    fi
    local failing=() exe model start status log
    for exe in $(grep -oE '\(target/loom-mut/[^)]*/deps/[a-z_]+-[0-9a-f]+\)' "$build_log" |
        tr -d '()' | grep -v '/stm_store_loom_tests-'); do
        for model in $("$root/$exe" --list 2>/dev/null | sed -n 's/: test$//p'); do
            log="$dir/logs/$model.log"
            start=$(date +%s.%N)
            timeout "$model_timeout" "$root/$exe" --exact "$model" --nocapture \
                --test-threads 1 >"$log" 2>&1
            status=$?
            printf '%-40s %6.1fs  %s\n' "$model" "$(echo "$(date +%s.%N) - $start" | bc)" \
                "$(grep -o 'loom model .*' "$log" | sed 's/^loom model //' | paste -sd';')" \
                >>"$times"
            if [ "$status" -eq 124 ]; then
                failing+=("$model(timeout)")
            elif [ "$status" -ne 0 ]; then
                failing+=("$model")
            fi
        done
    done
    echo "${failing[*]}"
}

status=0
if [ -z "${SKIP_BASELINE:-}" ]; then
    start=$SECONDS
    failing="$(run unmutated "")"
    echo "unmutated: ${failing:-all models pass} ($((SECONDS - start))s, build included)"
    cat "$out/unmutated/logs/times.txt"
    if [ -n "$failing" ]; then
        echo "the models fail without any mutation: fix them first" >&2
        exit 1
    fi
fi

printf '\n%-24s %s\n' "mutation" "failing models"
printf '%-24s %s\n' "--------" "--------------"
for m in "${mutations[@]}"; do
    start=$SECONDS
    failing="$(run "$m" "--cfg stm_mutation=\"$m\"")"
    if [ -z "$failing" ] && [[ " ${known_survivors[*]} " == *" $m "* ]]; then
        failing="SURVIVED (known: loom cannot reach it)"
    elif [ -z "$failing" ]; then
        failing="SURVIVED"
        status=1
    elif [[ "$failing" == BUILD-FAILED* ]]; then
        status=1
    fi
    printf '%-24s %s (%ss)\n' "$m" "$failing" "$((SECONDS - start))"
done
exit $status
