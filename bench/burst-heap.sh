#!/usr/bin/env bash
# What a burst leaves live: herald under heaptrack (installed here if
# missing) through one round of the hostile mix (bench/hostile.sh's server,
# on SQLite and NATS when reachable), killed when the round ends; then
# bench/burst-heap.py prints the blocks still live that were allocated while
# the attack ran, by stack. Such blocks pin pages the burst's other memory
# gave back, which no trim can return. Loopback only, bounded in time.
#
#   bench/burst-heap.sh                    # the whole mix
#   ATTACKS=flood bench/burst-heap.sh      # one attack
set -euo pipefail
cd "$(dirname "$0")/.."

ATTACKS="${ATTACKS:-nul,slow,flood,giant,resume,forge,anonymous,announced,stalled,stuck,probe}"
SECONDS_EACH="${SECONDS_EACH:-10}"
NATS_URL="${NATS_URL:-nats://127.0.0.1:4222}"
HTTP=127.0.0.1:18600 GRPC=127.0.0.1:18601
SECRET=bench-secret-0123456789abcdef0123456789abcdef

if ! command -v heaptrack >/dev/null; then
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q heaptrack >/dev/null
fi
ulimit -n "$(ulimit -Hn)"
cargo build --release --workspace --bins -q
work=$(mktemp -d)
trap 'pkill -9 -f "^target/release/herald serve --http $HTTP" 2>/dev/null || true; rm -rf "$work"' EXIT

nats=() broker=()
address="${NATS_URL#nats://}"
if timeout 1 bash -c "</dev/tcp/${address%:*}/${address##*:}" 2>/dev/null; then
    nats=(--nats-url "$NATS_URL" --nats-subject "herald.bench.$RANDOM$RANDOM")
    broker=(--broker nats "${nats[@]}")
fi
heaptrack -o "$work/heap" target/release/herald serve --http "$HTTP" --grpc "$GRPC" \
    --database-url "sqlite://$work/herald.db" --jwt-secret "$SECRET" "${broker[@]}" \
    >"$work/herald.log" 2>&1 &
until curl -fs "http://$HTTP/healthz" >/dev/null; do sleep 0.2; done
pid=$(pgrep -f "^target/release/herald serve --http $HTTP" | head -1)
target/release/herald-bench hostile --http "$HTTP" --grpc "$GRPC" --pid "$pid" \
    --jwt-secret "$SECRET" --seconds "$SECONDS_EACH" --attacks "$ATTACKS" "${nats[@]}" 2>/dev/null |
    grep -o 'rss_kib before=[0-9]* peak=[0-9]* after=[0-9]*'
# Killed, not stopped: what is live now is what the round left.
kill -9 "$pid"
# heaptrack's interpreter finishes the file after the kill (at most 60 s).
for _ in $(seq 120); do
    pgrep -f heaptrack_interpret >/dev/null || [[ ! -s $(ls "$work"/heap*.zst 2>/dev/null | head -1) ]] || break
    sleep 0.5
done
# The round ends 6 s after its attack, which lasts SECONDS_EACH.
python3 bench/burst-heap.py "$(ls "$work"/heap*.zst | head -1)" "$((SECONDS_EACH + 6))" 6
