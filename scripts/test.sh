#!/usr/bin/env bash
# The whole test suite, as README.md gives it and .ci/run calls it: installs what the tests
# need when it is missing, then runs every test target (unit tests, the end-to-end tests in
# tests/, the examples, and each benchmark once).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-test-deps.sh
cargo test --all-targets
