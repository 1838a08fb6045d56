#!/usr/bin/env bash
# Runs every fuzz target (the `fuzz_*` tests: config loader, shell templates, redactor, proxy
# request parsing, the JSONL readers, the API's request handling) for a time budget each, and
# prints the executions per target. Not part of `cargo test`, where the same targets run a few
# hundred cases each in a few seconds.
#
#   scripts/fuzz.sh                      # 60 s per target, one target at a time, release build
#   FUZZ_SECONDS=10 scripts/fuzz.sh      # a shorter budget
#   FUZZ_JOBS=4 scripts/fuzz.sh          # four targets at once (they share the CPUs)
#   FUZZ_PROFILE=dev scripts/fuzz.sh     # reuse the debug test build (slower per case)
#   scripts/fuzz.sh redactor             # only targets whose test name contains `redactor`
#
# Each target runs proptest batches of PROPTEST_CASES cases (default 256 here), each batch with a
# fresh random seed, until FUZZ_SECONDS have passed (see src/fuzzing.rs). A failure prints the
# shrunk input and makes this script exit non-zero; keep that input as a named regression test.
set -euo pipefail

export FUZZ_SECONDS=${FUZZ_SECONDS:-60}
export PROPTEST_CASES=${PROPTEST_CASES:-256}
jobs=${FUZZ_JOBS:-1}
filter=${1:-}
case ${FUZZ_PROFILE:-release} in
    release) profile=(--release) ;;
    dev) profile=() ;;
    *) profile=(--profile "$FUZZ_PROFILE") ;;
esac

cd "$(dirname "$0")/.."
say() { printf 'fuzz.sh: %s\n' "$*" >&2; }

# `lib` for the unit-test targets beside their code, `it` for tests/it/fuzz.rs.
targets=()
for binary in lib it; do
    if [[ $binary == lib ]]; then selector=(--lib); else selector=(--test it); fi
    while read -r name; do
        [[ -z $filter || $name == *"$filter"* ]] && targets+=("$binary $name")
    done < <(cargo test "${profile[@]}" "${selector[@]}" -q -- --list 2>/dev/null |
        sed -n 's/^\(.*fuzz_[a-z_]*\): test$/\1/p')
done
((${#targets[@]})) || { say "no fuzz target matches '${filter}'"; exit 2; }
say "${#targets[@]} targets, ${FUZZ_SECONDS}s each, ${jobs} at a time"

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
run_one() {
    local binary=$1 name=$2 selector
    if [[ $binary == lib ]]; then selector=(--lib); else selector=(--test it); fi
    if cargo test "${profile[@]}" "${selector[@]}" -q -- --exact "$name" --nocapture \
        >"$out/$name.log" 2>&1; then
        echo ok >"$out/$name.status"
    else
        echo FAILED >"$out/$name.status"
    fi
}
running=0
for target in "${targets[@]}"; do
    # shellcheck disable=SC2086
    run_one $target &
    running=$((running + 1))
    if ((running >= jobs)); then
        wait -n || true
        running=$((running - 1))
    fi
done
wait || true

failed=0
printf '%-44s %-7s %s\n' target status executions
for target in "${targets[@]}"; do
    name=${target#* }
    status=$(cat "$out/$name.status" 2>/dev/null || echo FAILED)
    line=$(grep -h '^fuzz [a-z_]*: [0-9]* executions' "$out/$name.log" | tail -1 || true)
    printf '%-44s %-7s %s\n' "$name" "$status" "${line#fuzz }"
    if [[ $status != ok ]]; then
        failed=1
        grep -A40 'failed:' "$out/$name.log" | head -60 >&2 || tail -40 "$out/$name.log" >&2
    fi
done
exit "$failed"
