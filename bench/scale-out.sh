#!/usr/bin/env bash
# Cross-node delivery per broker: two herald nodes on one PostgreSQL
# database, writers on node A, a subscriber on node B (herald-bench
# crossnode), after a one-node baseline on the same database. Loopback only;
# each run is bounded by its message count.
#
#   bench/scale-out.sh            # PostgreSQL and NATS on 127.0.0.1 (defaults below)
set -euo pipefail
cd "$(dirname "$0")/.."

PG="${HERALD_BENCH_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}"
NATS="${HERALD_BENCH_NATS_URL:-nats://127.0.0.1:4222}"
SECRET=bench-secret-0123456789abcdef0123456789abcdef
cargo build --release --workspace --bins -q
HERALD=target/release/herald
BENCH=target/release/herald-bench
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT

database_url() { echo "${PG%/*}/$1"; }

start_node() { # http grpc database broker-args...
    local http=$1 grpc=$2 url=$3
    shift 3
    "$HERALD" serve --http "127.0.0.1:$http" --grpc "127.0.0.1:$grpc" --database-url "$url" \
        --jwt-secret "$SECRET" --rate-limit 1000000 --rate-burst 1000000 --max-connections-per-ip 0 "$@" 2>>"/tmp/herald-bench-$http.log" &
    pids+=($!)
    for _ in $(seq 100); do
        curl -fs "http://127.0.0.1:$http/healthz" >/dev/null && return
        sleep 0.1
    done
    echo "node on $http did not start" >&2
    exit 1
}

run() { # label read-node broker-args...: read-node 18191 is node B, 18181 node A itself
    local label=$1 read=$2
    shift 2
    local db="herald_bench_$label"
    psql -q "$PG" -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db"
    local url
    url=$(database_url "$db")
    start_node 18180 18181 "$url" "$@"
    [[ $read == 18181 ]] || start_node 18190 18191 "$url" "$@"
    echo "== $label"
    "$BENCH" crossnode --write 127.0.0.1:18181 --read "127.0.0.1:$read" --jwt-secret "$SECRET" \
        --messages 5000 --rate 1000 --concurrency 8
    "$BENCH" crossnode --write 127.0.0.1:18181 --read "127.0.0.1:$read" --jwt-secret "$SECRET" \
        --messages 20000 --rate 0 --concurrency 32
    kill "${pids[@]}"
    wait "${pids[@]}" 2>/dev/null || true
    pids=()
}

run one_node 18181 --broker local
run postgres 18191 --broker postgres
run nats 18191 --broker nats --nats-url "$NATS" --nats-subject "herald.bench.$$"
