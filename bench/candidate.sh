#!/usr/bin/env bash
# tandem as the candidate of ../shared/bench/run-anchors.sh (see README "Speed"):
#   run-anchors.sh --candidate "$PWD/bench/candidate.sh" --candidate-port 27105 \
#                  --candidate-sticky-port 27115 --candidate-name tandem
# Writes configs from the rig's BENCH_* variables, access log off as the anchors have it:
# round robin over $BENCH_BACKENDS on $BENCH_PORT, and (when the rig asks for a sticky port) the
# same over $BENCH_STICKY_BACKENDS with sticky routing on the JSESSIONID route suffix on
# $BENCH_STICKY_PORT. tandem binds pools by host and path, not by listener, so the sticky port
# is a second tandem process; the rig measures the whole process tree.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bin=${TANDEM_BIN:-$here/target/release/tandem}
IFS=, read -r -a routes <<<"$BENCH_ROUTES"

write_config() { # port backends-csv file
    local -a backends
    IFS=, read -r -a backends <<<"$2"
    {
        printf '[listen]\naddresses = ["127.0.0.1:%s"]\n\n[log]\nlevel = "warn"\naccess_log = "off"\n\n' "$1"
        printf '[[pool]]\nname = "bench"\nbalance = "round_robin"\n'
        for i in "${!backends[@]}"; do
            printf '[[pool.backend]]\naddress = "%s"\nroute = "%s"\n' "${backends[$i]}" "${routes[$i]}"
        done
    } > "$3"
}

write_config "$BENCH_PORT" "$BENCH_BACKENDS" "$BENCH_RUN_DIR/tandem.toml"
if [ "${BENCH_STICKY_PORT:-$BENCH_PORT}" != "$BENCH_PORT" ]; then
    write_config "$BENCH_STICKY_PORT" "$BENCH_STICKY_BACKENDS" "$BENCH_RUN_DIR/tandem-sticky.toml"
    "$bin" -c "$BENCH_RUN_DIR/tandem-sticky.toml" &
    sticky=$!
    "$bin" -c "$BENCH_RUN_DIR/tandem.toml" &
    plain=$!
    # Whichever way this script ends (the rig's SIGTERM, or one tandem exiting), both go.
    trap 'kill -TERM $sticky $plain 2>/dev/null; wait' EXIT
    trap 'exit 0' TERM INT
    wait -n
else
    exec "$bin" -c "$BENCH_RUN_DIR/tandem.toml"
fi
