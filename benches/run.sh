#!/usr/bin/env bash
# Every benchmark figure of BENCHMARKS.md, in one command:
#
#   benches/run.sh            all of them (about 15 minutes on 2 cores, idle machine)
#   benches/run.sh quick      the in-process ones only (redaction, validate, event log,
#                             placement: ~2 min)
#
# Each bench measures maxions beside a baseline in the same run and writes its figures to
# target/bench/<bench>.json ($MAXIONS_BENCH_DIR); then benches/report.py writes
# benches/results/latest.json, the plots, and the table in BENCHMARKS.md. Compare two runs
# with `benches/compare.py OLD.json benches/results/latest.json`.
#
# Needs: a Docker engine (scripts/docker-engine.sh), the images (`maxions image build`),
# python3. Run it on an otherwise idle machine: the figures are wall-clock times.
set -euo pipefail
cd "$(dirname "$0")/.."
export MAXIONS_BENCH_DIR=${MAXIONS_BENCH_DIR:-$PWD/target/bench}
rm -rf "$MAXIONS_BENCH_DIR"
mkdir -p "$MAXIONS_BENCH_DIR"

step() { printf '\n==> %s\n' "$*"; }
mode=${1:-all}

step "cargo build --release"
cargo build --release --locked --quiet
export MAXIONS_BIN=${CARGO_TARGET_DIR:-$PWD/target}/release/maxions

for bench in redaction validate eventlog placement; do
    step "cargo bench --bench $bench"
    cargo bench --locked --quiet --bench "$bench"
done
if [[ $mode != quick ]]; then
    for bench in sandbox api; do
        step "cargo bench --bench $bench"
        cargo bench --locked --quiet --bench "$bench"
    done
    step "benches/daemon.sh"
    bash benches/daemon.sh
    step "benches/runs.sh"
    bash benches/runs.sh
    if [[ $(id -u) -eq 0 ]] && command -v unshare >/dev/null && command -v openssl >/dev/null; then
        step "benches/engines.sh"
        bash benches/engines.sh
    else
        echo "benches/engines.sh skipped: a second engine needs root, unshare and openssl" >&2
    fi
fi

step "benches/report.py"
python3 benches/report.py "$MAXIONS_BENCH_DIR"
