#!/usr/bin/env bash
# A short run of every fuzz target (fuzz/fuzz_targets), on the stable toolchain (libFuzzer's
# coverage without a sanitizer: `-s none`), each seeded with fuzz/seeds/<target>.
#   scripts/fuzz.sh [SECONDS per target, default 15]
# Longer runs: cargo fuzz run <target> -s none fuzz/corpus/<target> fuzz/seeds/<target>
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-15}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
command -v c++ >/dev/null || {
    echo "fuzzing needs a C++ compiler for libFuzzer: apt-get install g++ (scripts/install-test-deps.sh does)" >&2
    exit 1
}
for target in frame cookies session_update config peer_messages validate; do
    mkdir -p "fuzz/corpus/$target"
    echo "fuzzing $target for ${seconds}s"
    cargo fuzz run "$target" -s none "fuzz/corpus/$target" "fuzz/seeds/$target" -- \
        -max_total_time="$seconds" -print_final_stats=1 2>&1 | grep -E "^(Done|stat::number_of_executed_units)|ERROR|panicked" || true
    # A crash leaves an artifact and a non-zero exit above; check for artifacts explicitly.
    if ls "fuzz/artifacts/$target"/crash-* >/dev/null 2>&1; then
        echo "fuzz target $target found a crash: fuzz/artifacts/$target" >&2
        exit 1
    fi
done
