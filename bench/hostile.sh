#!/usr/bin/env bash
# The hostile mix: two users chat alone, then while one attacker does its
# worst (herald-bench hostile). herald runs with its default limits, on
# SQLite, with the NATS broker when NATS is reachable so forged publishes
# are part of the attack. Loopback only, bounded in time.
#
#   bench/hostile.sh                  # two runs of 10 s alone + 10 s attacked
#   RUNS=1 SECONDS_EACH=5 bench/hostile.sh
#   HERALD_BIN=/path/to/another/herald bench/hostile.sh   # e.g. an older build
#   REPEAT=3 RUNS=1 bench/hostile.sh  # the mix three times against one server:
#                                     # does a second attack leave more behind?
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS="${RUNS:-2}"
REPEAT="${REPEAT:-1}"
SECONDS_EACH="${SECONDS_EACH:-10}"
NATS_URL="${NATS_URL:-nats://127.0.0.1:4222}"
HERALD_BIN="${HERALD_BIN:-target/release/herald}"
HTTP=127.0.0.1:18500 GRPC=127.0.0.1:18501
SECRET=bench-secret-0123456789abcdef0123456789abcdef

ulimit -n "$(ulimit -Hn)"
cargo build --release --workspace --bins -q
work=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT

nats=()
address="${NATS_URL#nats://}"
if timeout 1 bash -c "</dev/tcp/${address%:*}/${address##*:}" 2>/dev/null; then
    subject="herald.bench.$RANDOM$RANDOM"
    nats=(--nats-url "$NATS_URL" --nats-subject "$subject")
else
    echo "NATS is not reachable at $NATS_URL: running without forged publishes" >&2
fi
broker=()
[[ ${#nats[@]} -gt 0 ]] && broker=(--broker nats "${nats[@]}")

for run in $(seq "$RUNS"); do
    rm -f "$work"/herald.db*
    "$HERALD_BIN" serve --http "$HTTP" --grpc "$GRPC" \
        --database-url "sqlite://$work/herald.db" --jwt-secret "$SECRET" "${broker[@]}" \
        2>"$work/herald.log" &
    pid=$!
    until curl -fs "http://$HTTP/healthz" >/dev/null; do sleep 0.1; done
    for round in $(seq "$REPEAT"); do
        echo "run $run, round $round:"
        target/release/herald-bench hostile --http "$HTTP" --grpc "$GRPC" --pid "$pid" \
            --jwt-secret "$SECRET" --seconds "$SECONDS_EACH" "${nats[@]}" 2>"$work/bench.log" |
            sed 's/ attacks / | attacks /'
    done
    kill "$pid"
    wait "$pid" 2>/dev/null || true
done
