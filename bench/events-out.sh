#!/usr/bin/env bash
# What events out cost a direct-chat run (users in pairs, every message
# delivered to both of a pair's SSE streams), alternating: nothing, a
# webhook registered (a local receiver that answers 204 to every batch),
# and a publish hook (a local hook that allows every message); and how fast
# the webhook drained what the run committed. The receiver and the hook are
# bench/events-out.py (Python's standard library). Loopback only, bounded.
#
#   bench/events-out.sh
#   ROUNDS=2 MESSAGES=10000 bench/events-out.sh
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS="${ROUNDS:-2}"
USERS="${USERS:-2000}"
MESSAGES="${MESSAGES:-10000}"
PACED_RATE="${PACED_RATE:-2000}"
HERALD="${HERALD:-target/release/herald}"
HTTP=127.0.0.1:18520 GRPC=127.0.0.1:18521 RECEIVER=18522 HOOK=18523
SECRET=whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw

ulimit -n "$(ulimit -Hn)"
[[ -n "${NO_BUILD:-}" ]] || cargo build --release --workspace --bins -q
work=$(mktemp -d)
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"' EXIT

python3 bench/events-out.py receiver "$RECEIVER" > "$work/receiver.log" &
pids+=($!)
python3 bench/events-out.py hook "$HOOK" > /dev/null &
pids+=($!)
sleep 0.5

run() { # label [serve args...]
    local label=$1
    shift
    rm -f "$work"/herald.db*
    local key
    key=$("$HERALD" key create bench --scope admin --database-url "sqlite://$work/herald.db" 2>/dev/null)
    "$HERALD" serve --http "$HTTP" --grpc "$GRPC" \
        --database-url "sqlite://$work/herald.db" --jwt-secret bench-secret-0123456789abcdef0123456789abcdef \
        --rate-limit 1000000 --rate-burst 1000000 --call-rate-limit 1000000 --call-rate-burst 1000000 \
        --max-connections-per-ip 0 --webhook-allow-private "$@" >/dev/null 2>"$work/herald.log" &
    local pid=$!
    pids+=("$pid")
    until curl -fs "http://$HTTP/healthz" >/dev/null; do sleep 0.1; done
    if [[ $label == webhook* ]]; then
        curl -fs -H "Authorization: Bearer $key" -H 'Content-Type: application/json' -d "{\"url\": \"http://127.0.0.1:$RECEIVER/hook\", \"kinds\": [\"message\"]}" \
            "http://$HTTP/api/admin/webhooks" > /dev/null
        curl -fs "http://127.0.0.1:$RECEIVER/reset" > /dev/null
    fi
    echo -n "$label "
    target/release/herald-bench direct --server herald --http "$HTTP" --grpc "$GRPC" --pid "$pid" \
        --users "$USERS" --messages "$MESSAGES" --concurrency 16 --rate "$RATE"
    if [[ $label == webhook* ]]; then
        # The receiver counts events since the reset; wait for all of them.
        local started=$SECONDS
        until [[ $(curl -fs "http://127.0.0.1:$RECEIVER/count") -ge $MESSAGES ]]; do
            sleep 0.05
            (( SECONDS - started < 120 )) || { echo "webhook: not drained"; break; }
        done
        echo "  webhook: $(curl -fs "http://127.0.0.1:$RECEIVER/stats")"
    fi
    kill "$pid"; wait "$pid" 2>/dev/null || true
}

for round in $(seq "$ROUNDS"); do
    echo "== round $round"
    for RATE in "$PACED_RATE" 0; do
        run plain
        run webhook
        run hook --publish-hook "http://127.0.0.1:$HOOK/hook" --publish-hook-secret "$SECRET"
    done
done
