#!/usr/bin/env bash
# tandem as the candidate of ../shared/bench/run-anchors.sh (see README "Speed"):
#   run-anchors.sh --candidate "$PWD/bench/candidate.sh" --candidate-port 27105 \
#                  --candidate-sticky-port 27115 --candidate-name tandem
# Writes configs from the rig's BENCH_* variables, access log off as the anchors have it:
# round robin over $BENCH_BACKENDS on $BENCH_PORT, and (when the rig asks for a sticky port) the
# same over $BENCH_STICKY_BACKENDS with sticky routing on the JSESSIONID route suffix on
# $BENCH_STICKY_PORT. tandem binds pools by host and path, not by listener, so the sticky port
# is a second tandem process; the rig measures the whole process tree.
#
# TANDEM_BENCH_SESSION=1 makes the sticky tandem a proxy-mode one whose session cookie is the
# rig's JSESSIONID, with the rig's session id preloaded (through the snapshot file) holding
# 1 KiB of attributes: every sticky request then opens a 1 KiB session and hands it to the
# backend. Compare its sticky CPU per request with a run without it.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bin=${TANDEM_BIN:-$here/target/release/tandem}
IFS=, read -r -a routes <<<"$BENCH_ROUTES"

write_config() { # port backends-csv file [extra top-level tables]
    local -a backends
    IFS=, read -r -a backends <<<"$2"
    {
        printf '[listen]\naddresses = ["127.0.0.1:%s"]\n\n[log]\nlevel = "warn"\naccess_log = "off"\n\n' "$1"
        printf '%s\n' "${4:-}"
        printf '[[pool]]\nname = "bench"\nbalance = "round_robin"\n'
        for i in "${!backends[@]}"; do
            printf '[[pool.backend]]\naddress = "%s"\nroute = "%s"\n' "${backends[$i]}" "${routes[$i]}"
        done
    } > "$3"
}

write_config "$BENCH_PORT" "$BENCH_BACKENDS" "$BENCH_RUN_DIR/tandem.toml"
if [ "${BENCH_STICKY_PORT:-$BENCH_PORT}" != "$BENCH_PORT" ]; then
    session_tables=""
    if [ "${TANDEM_BENCH_SESSION:-0}" = 1 ]; then
        snapshot=$BENCH_RUN_DIR/sessions.snapshot
        now=$(($(date +%s) * 1000))
        cart=$(printf 'c%.0s' $(seq 1 1000))
        {
            printf '{"tandem_sessions":1,"written_ms":%s}\n' "$now"
            printf '{"id":"0123456789ABCDEF0123456789ABCDEF","route":"b1","created_ms":%s,"last_access_ms":%s,"idle_timeout_ms":86400000,"absolute_timeout_ms":604800000,"attributes":{"user":"bench","cart":"%s"}}\n' "$now" "$now" "$cart"
            printf '{"end":1}\n'
        } > "$snapshot"
        session_tables=$(printf '[session]\nmode = "proxy"\nsnapshot = "%s"\n[session.cookie]\nname = "JSESSIONID"\n' "$snapshot")
    fi
    write_config "$BENCH_STICKY_PORT" "$BENCH_STICKY_BACKENDS" "$BENCH_RUN_DIR/tandem-sticky.toml" "$session_tables"
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
