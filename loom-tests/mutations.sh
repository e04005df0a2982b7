#!/usr/bin/env bash
# Runs the loom models once per deliberate breakage of the protocol (the `stm_mutation` values
# registered in the root Cargo.toml's check-cfg) and prints which models fail under each.
# Exits non-zero if any mutation survives (no model fails), or if a model fails unmutated.
#
#   loom-tests/mutations.sh                  # the unmutated suite, then the whole matrix
#   loom-tests/mutations.sh no_descriptor    # only the mutations named (after the baseline)
#   SKIP_BASELINE=1 loom-tests/mutations.sh  # skip the unmutated run
#
# Each configuration builds in its own target/loom-mut/NAME (so a rerun rebuilds nothing) and
# logs to target/loom-mut/NAME/logs/. Every model runs in a process of its own: a model that
# panics under loom can abort its whole test binary (loom panics again while dropping the
# threads it never ran), and that must not hide the other models of the file.
# LOOM_MAX_PREEMPTIONS, if set, overrides every model's own preemption bound.
set -uo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
out="$root/target/loom-mut"
# Per model; the whole unmutated suite runs in a few minutes.
model_timeout="${MODEL_TIMEOUT:-900}"

if [ $# -gt 0 ]; then
    mutations=("$@")
else
    mapfile -t mutations < <(grep -o 'stm_mutation, values([^)]*)' Cargo.toml |
        grep -o '"[a-z_]*"' | tr -d '"')
fi
if [ ${#mutations[@]} -eq 0 ]; then
    echo "no stm_mutation values found in Cargo.toml" >&2
    exit 2
fi

# run NAME CFG: builds the models with `--cfg loom CFG`, runs each model in its own process,
# and prints the failing ones on one line ("BUILD-FAILED" if the build fails).
run() {
    local name="$1" cfg="$2"
    local dir="$out/$name"
    mkdir -p "$dir/logs"
    local build_log="$dir/logs/build.log"
    if ! CARGO_TARGET_DIR="$dir" RUSTFLAGS="--cfg loom $cfg" \
        cargo test -p stm-store-loom-tests --release --no-run >"$build_log" 2>&1; then
        echo "BUILD-FAILED(see $build_log)"
        return
    fi
    local failing=() exe model
    for exe in $(grep -oE '\(target/loom-mut/[^)]*/deps/[a-z_]+-[0-9a-f]+\)' "$build_log" |
        tr -d '()' | grep -v '/stm_store_loom_tests-'); do
        for model in $("$root/$exe" --list 2>/dev/null | sed -n 's/: test$//p'); do
            if ! timeout "$model_timeout" "$root/$exe" --exact "$model" --test-threads 1 \
                >"$dir/logs/$model.log" 2>&1; then
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
    echo "unmutated: ${failing:-all models pass} ($((SECONDS - start))s)"
    if [ -n "$failing" ]; then
        echo "the models fail without any mutation: fix them first" >&2
        exit 1
    fi
fi

printf '\n%-28s %s\n' "mutation" "failing models"
printf '%-28s %s\n' "--------" "--------------"
for m in "${mutations[@]}"; do
    start=$SECONDS
    failing="$(run "$m" "--cfg stm_mutation=\"$m\"")"
    if [ -z "$failing" ]; then
        failing="SURVIVED"
        status=1
    elif [[ "$failing" == BUILD-FAILED* ]]; then
        status=1
    fi
    printf '%-28s %s (%ss)\n' "$m" "$failing" "$((SECONDS - start))"
done
exit $status
