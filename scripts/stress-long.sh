#!/usr/bin/env bash
# The long stress run of issue 9, too long for CI: fsx 1M operations per
# configuration (in 100k chunks), stress-ng 5 s per stressor in both I/O
# modes, dbench/tar loops 2 min, fio 512 MiB per job, a 10-minute mixed
# soak, 200 kill -9 crash rounds, and the fault tests. Needs root (CI's
# packages: see .ci/run). Prints one table row per run at the end.
#
#   scripts/stress-long.sh                # all of it (a few hours on 2 CPUs)
#   TESTS="stress" scripts/stress-long.sh # only tests/stress.rs
#   scripts/stress-long.sh fsx_           # a test-name filter
#
# Builds into its own target directory (PLYFS_LONG_TARGET, default
# target-long), so that working on the tree meanwhile does not swap the
# binary under a running test.
set -euo pipefail
cd "$(dirname "$0")/.."

export PATH="$PATH:$HOME/.cargo/bin"
command -v fsx >/dev/null || cargo install fsx

report=${PLYFS_STRESS_REPORT:-$PWD/target-long-report.md}
: >"$report"
export PLYFS_STRESS_LONG=1 PLYFS_STRESS_REPORT="$report"
export CARGO_TARGET_DIR=${PLYFS_LONG_TARGET:-$PWD/target-long}

args=()
for t in ${TESTS:-stress crash faults}; do
    args+=(--test "$t")
done
start=$(date +%s)
status=0
cargo test --release "${args[@]}" -- --nocapture --test-threads="${THREADS:-2}" "$@" || status=$?
echo
echo "Long stress run: $(( ($(date +%s) - start) / 60 )) min, exit status $status"
echo "| tool | configuration | ops | failures | peak RSS | peak fds | after (idle, caches dropped) |"
echo "|---|---|---|---|---|---|---|"
cat "$report"
exit "$status"
