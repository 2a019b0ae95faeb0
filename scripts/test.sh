#!/usr/bin/env bash
# The whole test suite, as README.md gives it and .ci/run calls it: installs what the tests
# need when it is missing, then runs every test target (unit tests, the end-to-end tests in
# tests/, the examples, and each benchmark once).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-test-deps.sh
# tests/attacks.rs holds 10,000 idle connections: allow every process that many open files
# (raising the hard limit needs root; without it, the soft limit goes as high as allowed).
ulimit -Hn 65536 2>/dev/null || true
ulimit -n "$(ulimit -Hn)"
cargo test --all-targets --no-fail-fast
