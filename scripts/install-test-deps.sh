#!/usr/bin/env bash
# Installs what building and testing tandem needs, when it is missing (Debian packages via
# apt-get). Called by scripts/test.sh and, before anything compiles, by .ci/run.
#
# Only what is missing is installed, and without Debian's recommended packages: prometheus and
# chromium alone recommend some 150 packages (avahi-daemon, cups helpers, udev, ...), and pulling
# them in upgrades systemd and perl on the way, which no test needs.
#
#   --dry-run   print the apt-get command that would run (nothing when all is there), and stop
set -euo pipefail

dry_run=false
case "${1:-}" in
    --dry-run) dry_run=true ;;
    "") ;;
    *) echo "usage: $0 [--dry-run]" >&2; exit 2 ;;
esac

need_apt=()
# A C compiler: mimalloc and a few other dependencies build C code.
command -v cc >/dev/null || need_apt+=(gcc libc6-dev)
# scripts/fuzz.sh: libFuzzer is C++.
command -v c++ >/dev/null || need_apt+=(g++)
# tests/tomcat.rs: two real Tomcat 10 nodes, and javac for its test servlet.
[ -f /usr/share/tomcat10/bin/bootstrap.jar ] || need_apt+=(tomcat10)
command -v javac >/dev/null || need_apt+=(default-jdk-headless)
# tests/cart_examples.rs: the Python and Node shopping-cart examples.
command -v python3 >/dev/null || need_apt+=(python3)
command -v node >/dev/null || need_apt+=(nodejs)
# tests/metrics.rs: promtool and a Prometheus server.
command -v promtool >/dev/null || need_apt+=(prometheus)
# tests/status_page.rs: the status page in a real browser (and a font, so that its screenshots
# show text: fonts are only recommended by chromium).
command -v chromium >/dev/null || need_apt+=(chromium fonts-liberation)
# tests/status_page.rs: npm, to fetch playwright-core, which clicks through the status page.
command -v npm >/dev/null || need_apt+=(npm)
# tests/tls.rs: curl as a TLS client.
command -v curl >/dev/null || need_apt+=(curl)
# tests/soak.rs: wrk (HTTP/1.1) and h2load (HTTP/2) as load generators.
command -v wrk >/dev/null || need_apt+=(wrk)
command -v h2load >/dev/null || need_apt+=(nghttp2-client)
# tests/replication.rs: a peer whose clock runs ahead (libfaketime, preloaded into tandem).
command -v faketime >/dev/null || need_apt+=(faketime)
# tests/systemd_notify.rs: systemd-analyze checks the unit file of contrib/systemd.
command -v systemd-analyze >/dev/null || need_apt+=(systemd)
# tests/packaging.rs and tests/systemd_notify.rs: man renders the generated man page.
command -v man >/dev/null || need_apt+=(man-db)

if [ ${#need_apt[@]} -gt 0 ]; then
    install=(apt-get install -y -q --no-install-recommends "${need_apt[@]}")
    if $dry_run; then
        echo "${install[*]}"
        exit 0
    fi
    if [ "$(id -u)" -ne 0 ]; then
        echo "tandem's tests need: ${need_apt[*]}; install them with: sudo ${install[*]}" >&2
        exit 1
    fi
    apt-get update -q
    # Install packages without starting their services (tomcat10 would start a system Tomcat);
    # the tests start their own instances.
    policy=/usr/sbin/policy-rc.d
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' > "$policy"
        chmod +x "$policy"
        trap 'rm -f "$policy"' EXIT
    fi
    DEBIAN_FRONTEND=noninteractive "${install[@]}"
fi
$dry_run && exit 0
# tests/status_page.rs: playwright-core drives Debian's chromium (it downloads no browser),
# kept under target/ so that it is fetched once.
node_deps="$(dirname "$0")/../target/node-test-deps"
[ -d "$node_deps/node_modules/playwright-core" ] ||
    npm install --no-audit --no-fund --prefix "$node_deps" playwright-core@1.65.1 >/dev/null
command -v cargo >/dev/null || {
    echo "tandem's tests need Rust's cargo; install it with rustup (https://rustup.rs)" >&2
    exit 1
}
