#!/usr/bin/env bash
# Runs the README's test command (`cargo test --release`) several times in a row and reports
# every failing run, optionally while other processes load every core (issue 10: the suite
# must pass every time, on any machine, also when the machine is busy).
#
#   tools/repeat-tests.sh [RUNS] [LOADERS]
#
# RUNS (default 10): how many runs. LOADERS (default 0): how many `yes > /dev/null` processes
# run meanwhile (use the core count, `nproc`, to load every core). Logs of failing runs are
# kept in $OUT (default: a new temp dir), named run-<n>.log. Exit status 1 if any run failed.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-10}
loaders=${2:-0}
out=${OUT:-$(mktemp -d -t raftkv-repeat.XXXXXX)}
mkdir -p "$out"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
# Build first, so that the loaders slow the tests, not the first compile.
cargo test --release --no-run >/dev/null 2>&1 || { echo "build failed"; cargo test --release --no-run; exit 1; }
for _ in $(seq 1 "$loaders"); do
    yes >/dev/null &
    pids+=($!)
done
failed=0
for i in $(seq 1 "$runs"); do
    start=$(date +%s)
    if cargo test --release >"$out/run-$i.log" 2>&1; then
        echo "run $i/$runs: ok ($(( $(date +%s) - start )) s)"
        rm -f "$out/run-$i.log"
    else
        failed=$((failed + 1))
        echo "run $i/$runs: FAILED ($(( $(date +%s) - start )) s), log: $out/run-$i.log"
        grep -E '^---- |panicked at|^test .* FAILED' "$out/run-$i.log" | head -20 | sed 's/^/    /'
    fi
done
echo "$((runs - failed)) passed, $failed failed (runs; $loaders loaders)"
[ "$failed" -eq 0 ]
