#!/usr/bin/env bash
# The whole test suite, as README.md gives it and .ci/run calls it.
# Installs what the tests need when it is missing, then runs every test target.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
# Tests drive everything themselves through real sockets; today they need only cargo and a
# C compiler for dependencies. Tools that later tests need are added here, never skipped.
command -v cc >/dev/null || need_apt+=(gcc)
if [ ${#need_apt[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "tests need: ${need_apt[*]}; install them with: sudo apt-get install -y ${need_apt[*]}" >&2
        exit 1
    fi
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need_apt[@]}"
fi
command -v cargo >/dev/null || { echo "tests need Rust's cargo: install it with rustup (https://rustup.rs)" >&2; exit 1; }

# Unit tests, the end-to-end tests in tests/, the examples, and each benchmark run once.
cargo test --all-targets
