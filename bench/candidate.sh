#!/usr/bin/env bash
# tandem as the candidate of ../shared/bench/run-anchors.sh (see README "Speed"):
#   run-anchors.sh --candidate "$PWD/bench/candidate.sh" --candidate-port 27105 --candidate-name tandem
# Writes a config from the rig's BENCH_* variables (round robin over $BENCH_BACKENDS on
# 127.0.0.1:$BENCH_PORT, access log off as the anchors have it) and runs the release binary in
# the foreground.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bin=${TANDEM_BIN:-$here/target/release/tandem}
IFS=, read -r -a plain <<<"$BENCH_BACKENDS"
IFS=, read -r -a routes <<<"$BENCH_ROUTES"
cfg=$BENCH_RUN_DIR/tandem.toml
{
    printf '[listen]\naddresses = ["127.0.0.1:%s"]\n\n[log]\nlevel = "warn"\naccess_log = "off"\n\n' "$BENCH_PORT"
    printf '[[pool]]\nname = "bench"\nbalance = "round_robin"\n'
    for i in "${!plain[@]}"; do
        printf '[[pool.backend]]\naddress = "%s"\nroute = "%s"\n' "${plain[$i]}" "${routes[$i]}"
    done
} > "$cfg"
exec "$bin" -c "$cfg"
