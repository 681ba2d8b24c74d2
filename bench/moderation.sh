#!/usr/bin/env bash
# What the ban and revocation checks cost a direct-chat run (users in pairs,
# every message delivered to both of a pair's streams): this build with no
# moderation in force, and with BANS bans and as many revocations of other
# users in force (every call then looks its user up in both), alternating
# with PREVIOUS (say, the previous main's binary) when given. Paced and
# unpaced. Loopback only, bounded counts.
#
#   bench/moderation.sh
#   ROUNDS=3 PREVIOUS=/tmp/herald-previous bench/moderation.sh
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS="${ROUNDS:-2}"
USERS="${USERS:-2000}"
MESSAGES="${MESSAGES:-10000}"
BANS="${BANS:-500}"
PACED_RATE="${PACED_RATE:-2000}"
HERALD="${HERALD:-target/release/herald}"
PREVIOUS="${PREVIOUS:-}"
HTTP=127.0.0.1:18510 GRPC=127.0.0.1:18511

ulimit -n "$(ulimit -Hn)"
[[ -n "${NO_BUILD:-}" ]] || cargo build --release --workspace --bins -q
work=$(mktemp -d)
pid=
trap '[[ -n $pid ]] && kill $pid 2>/dev/null; rm -rf "$work"' EXIT

run() { # binary label bans [args...]
    local binary=$1 label=$2 bans=$3
    shift 3
    rm -f "$work"/herald.db*
    local key=
    if [[ $bans -gt 0 ]]; then
        key=$("$binary" key create bench --scope moderate --database-url "sqlite://$work/herald.db" 2>/dev/null)
    fi
    "$binary" serve --http "$HTTP" --grpc "$GRPC" \
        --database-url "sqlite://$work/herald.db" --jwt-secret bench-secret-0123456789abcdef0123456789abcdef \
        --rate-limit 1000000 --rate-burst 1000000 --call-rate-limit 1000000 --call-rate-burst 1000000 \
        --max-connections-per-ip 0 2>"$work/herald.log" &
    pid=$!
    until curl -fs "http://$HTTP/healthz" >/dev/null; do sleep 0.1; done
    for n in $(seq "$bans"); do
        curl -fs -X PUT -H "Authorization: Bearer $key" "http://$HTTP/api/admin/users/spammer-$n/ban" >/dev/null
        curl -fs -X POST -H "Authorization: Bearer $key" "http://$HTTP/api/admin/users/leaked-$n/revoke" >/dev/null
    done
    echo -n "$label "
    target/release/herald-bench direct --server herald --http "$HTTP" --grpc "$GRPC" --pid "$pid" \
        --users "$USERS" --messages "$MESSAGES" --concurrency 16 "$@"
    kill "$pid"; wait "$pid" 2>/dev/null || true
    pid=
}

for round in $(seq "$ROUNDS"); do
    echo "== round $round"
    for rate in "$PACED_RATE" 0; do
        [[ -z $PREVIOUS ]] || run "$PREVIOUS" previous 0 --rate "$rate"
        run "$HERALD" this 0 --rate "$rate"
        run "$HERALD" "this+${BANS}bans+${BANS}revocations" "$BANS" --rate "$rate"
    done
done
