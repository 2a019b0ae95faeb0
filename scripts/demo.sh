#!/usr/bin/env bash
# Builds tandem and three demo backends, starts the backends on 127.0.0.1:9001-9003, and runs
# tandem on config.example.toml (127.0.0.1:8080) in the foreground. Ctrl-C stops everything.
# Both are binaries of the package, so this compiles the normal dependencies only, none of the
# test and benchmark ones.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin tandem --bin tandem-demo-backends
target/release/tandem-demo-backends &
backends=$!
trap 'kill $backends 2>/dev/null' EXIT
echo "try: curl http://127.0.0.1:8080/   (several times: b1, b2, b3 in turn)"
target/release/tandem -c config.example.toml
