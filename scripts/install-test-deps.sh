#!/usr/bin/env bash
# Installs what building and testing tandem needs, when it is missing (Debian packages via
# apt-get). Called by scripts/test.sh and, before anything compiles, by .ci/run.
set -euo pipefail

need_apt=()
# A C compiler: mimalloc and a few other dependencies build C code.
command -v cc >/dev/null || need_apt+=(gcc libc6-dev)
if [ ${#need_apt[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "tandem's tests need: ${need_apt[*]}; install them with: sudo apt-get install -y ${need_apt[*]}" >&2
        exit 1
    fi
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need_apt[@]}"
fi
command -v cargo >/dev/null || {
    echo "tandem's tests need Rust's cargo; install it with rustup (https://rustup.rs)" >&2
    exit 1
}
