#!/usr/bin/env bash
# Counts what one message costs in hand-offs, herald against nchan, same
# run: a direct-chat load at a fixed rate (users in pairs, each message
# delivered to both of a pair's SSE streams), and over a window in its
# middle, per message: system calls and context switches of the server's
# processes (`perf stat`), and each thread's wake-ups (voluntary context
# switches from /proc, grouped by thread name). Loopback only, bounded.
#
#   bench/handoffs.sh
#   RATE=2000 WINDOW=4 bench/handoffs.sh
#   HERALD_ENV=TOKIO_WORKER_THREADS=1 ONLY=herald bench/handoffs.sh
set -euo pipefail
cd "$(dirname "$0")/.."

RATE="${RATE:-2000}"
WINDOW="${WINDOW:-4}"
USERS="${USERS:-2000}"
HERALD="${HERALD:-target/release/herald}"
HTTP=127.0.0.1:18530 GRPC=127.0.0.1:18531 NCHAN=127.0.0.1:18532
ulimit -n "$(ulimit -Hn)"
[[ -n "${NO_BUILD:-}" ]] || cargo build --release --workspace --bins -q
work=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; pkill -f "nginx -p $work" 2>/dev/null || true; rm -rf "$work"' EXIT
# Enough messages for warm-up, the window and a tail.
MESSAGES=$(( RATE * (WINDOW + 3) ))

# Voluntary and involuntary context switches of every thread of $@,
# summed by thread name.
threads() {
    for pid in "$@"; do
        for task in /proc/"$pid"/task/*; do
            local name
            name=$(tr ' ' _ < "$task/comm" | sed 's/-[0-9]*$//; s/[0-9]*$//')
            awk -v name="$name" '/^voluntary_ctxt/ {v=$2} /^nonvoluntary_ctxt/ {n=$2} END {print name, v, n}' "$task/status"
        done
    done | awk '{v[$1]+=$2; n[$1]+=$3; c[$1]++} END {for (k in v) print k, c[k], v[k], n[k]}' | sort
}

measure() { # label pids...
    local label=$1
    shift
    local list
    list=$(IFS=,; echo "$*")
    target/release/herald-bench direct --server "$server" --http "$http" --grpc "$GRPC" --pid "$list" \
        --users "$USERS" --messages "$MESSAGES" --concurrency 16 --rate "$RATE" > "$work/bench.txt" &
    local bench=$!
    sleep 2
    threads "$@" > "$work/before.txt"
    perf stat -x, -e raw_syscalls:sys_enter,context-switches,cpu-migrations -p "$list" -- sleep "$WINDOW" 2> "$work/perf.txt"
    threads "$@" > "$work/after.txt"
    wait "$bench"
    local messages=$(( RATE * WINDOW ))
    echo "== $label: $(cat "$work/bench.txt")"
    awk -F, -v m="$messages" '$3 ~ /sys_enter|context-switches|cpu-migrations/ {printf "  %-24s %8.2f per message\n", $3, $1 / m}' "$work/perf.txt"
    echo "  wake-ups per message by thread (threads, voluntary, involuntary):"
    join "$work/before.txt" "$work/after.txt" |
        awk -v m="$messages" '{printf "    %-22s %3d  %6.2f  %6.2f\n", $1, $2, ($6 - $3) / m, ($7 - $4) / m}'
}

server=herald http=$HTTP
rm -f "$work"/herald.db*
env ${HERALD_ENV:-} "$HERALD" serve --http "$HTTP" --grpc "$GRPC" --database-url "sqlite://$work/herald.db" \
    --jwt-secret bench-secret-0123456789abcdef0123456789abcdef \
    --rate-limit 1000000 --rate-burst 1000000 --call-rate-limit 1000000 --call-rate-burst 1000000 \
    --max-connections-per-ip 0 >/dev/null 2>"$work/herald.log" &
pids+=($!)
herald=$!
until curl -fs "http://$HTTP/healthz" >/dev/null; do sleep 0.1; done
measure herald "$herald"
kill "$herald"; wait "$herald" 2>/dev/null || true

[[ ${ONLY:-} != herald ]] || exit 0
server=nchan http=$NCHAN
bench/nchan.sh "${NCHAN##*:}" >"$work/nchan.log" 2>&1 &
pids+=($!)
until curl -fs -o /dev/null "http://$NCHAN/pub?id=warmup" -d x 2>/dev/null; do sleep 0.1; done
# shellcheck disable=SC2046
measure nchan $(pgrep -f "nginx: (master|worker)")
pkill -f "nginx: master" || true
