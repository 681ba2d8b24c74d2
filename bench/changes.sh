#!/usr/bin/env bash
# What message changes cost next to plain sends: a direct-chat run (users in
# pairs, every delivery to both of a pair's streams) of sends, of edits of
# each pair's message, and of reactions given and taken back in turn,
# alternating, paced and unpaced; edits and reactions are received on
# /api/events. With PREVIOUS=<a herald binary> (say, the previous main's),
# its plain sends alternate with this one's. Loopback only, bounded counts.
#
#   bench/changes.sh
#   ROUNDS=3 PREVIOUS=/tmp/herald-previous bench/changes.sh
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS="${ROUNDS:-2}"
USERS="${USERS:-2000}"
OPS="${OPS:-10000}"
PACED_RATE="${PACED_RATE:-2000}"
HERALD="${HERALD:-target/release/herald}"
PREVIOUS="${PREVIOUS:-}"
HTTP=127.0.0.1:18500 GRPC=127.0.0.1:18501

ulimit -n "$(ulimit -Hn)"
[[ -n "${NO_BUILD:-}" ]] || cargo build --release --workspace --bins -q
work=$(mktemp -d)
pid=
trap '[[ -n $pid ]] && kill $pid 2>/dev/null; rm -rf "$work"' EXIT

run() { # binary label op [args...]
    local binary=$1 label=$2 op=$3
    shift 3
    rm -f "$work"/herald.db*
    "$binary" serve --http "$HTTP" --grpc "$GRPC" \
        --database-url "sqlite://$work/herald.db" --jwt-secret bench-secret-0123456789abcdef0123456789abcdef \
        --rate-limit 1000000 --rate-burst 1000000 --call-rate-limit 1000000 --call-rate-burst 1000000 \
        --max-connections-per-ip 0 2>"$work/herald.log" &
    pid=$!
    until curl -fs "http://$HTTP/healthz" >/dev/null; do sleep 0.1; done
    local op_args=()
    [[ $op == send ]] || op_args=(--op "$op")
    echo -n "$label "
    target/release/herald-bench direct --server herald --http "$HTTP" --grpc "$GRPC" --pid "$pid" \
        --users "$USERS" --messages "$OPS" --concurrency 16 "${op_args[@]}" "$@"
    kill "$pid"; wait "$pid" 2>/dev/null || true
    pid=
}

for round in $(seq "$ROUNDS"); do
    echo "== round $round"
    for rate in "$PACED_RATE" 0; do
        [[ -z $PREVIOUS ]] || run "$PREVIOUS" previous send --rate "$rate"
        for op in send edit react; do
            run "$HERALD" this "$op" --rate "$rate"
        done
    done
done
