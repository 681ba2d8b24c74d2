#!/usr/bin/env bash
# herald side by side with nchan (nginx + Debian's libnginx-mod-nchan), in one
# run on this machine, alternating the two servers; prints each run and a
# table of medians with herald/nchan ratios. Loopback only, bounded counts.
#
#   bench/run.sh                 # the full table (several minutes)
#   ROUNDS=1 IDLE=2000 bench/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS="${ROUNDS:-3}"
IDLE="${IDLE:-15000}"
GROUP_SMALL="${GROUP_SMALL:-1000}"
GROUP_LARGE="${GROUP_LARGE:-5000}"
GROUP_MESSAGES="${GROUP_MESSAGES:-200}"
DIRECT_USERS="${DIRECT_USERS:-10000}"
DIRECT_MESSAGES="${DIRECT_MESSAGES:-20000}"
# `direct` again at a fixed rate, for latency and CPU per message at a load
# both servers carry.
PACED_RATE="${PACED_RATE:-5000}"
HERALD_HTTP=127.0.0.1:18400 HERALD_GRPC=127.0.0.1:18401 NCHAN=127.0.0.1:18300

# Every process may hold as many files as the machine allows (20,000 here).
ulimit -n "$(ulimit -Hn)"
cargo build --release --workspace --bins -q
work=$(mktemp -d)
results="$work/results.txt"
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; pkill -f "nginx -p $work" 2>/dev/null || true; }
trap cleanup EXIT

start_herald() {
    rm -f "$work"/herald.db*
    target/release/herald serve --http "$HERALD_HTTP" --grpc "$HERALD_GRPC" \
        --database-url "sqlite://$work/herald.db" --jwt-secret bench-secret-0123456789abcdef0123456789abcdef \
        --rate-limit 1000000 --rate-burst 1000000 --max-subscriptions-per-user 100000 --max-participants 100000 \
        --call-rate-limit 1000000 --call-rate-burst 1000000 --max-connections-per-ip 0 \
        2>"$work/herald.log" &
    pids+=($!)
    herald_pid=$!
    until curl -fs "http://$HERALD_HTTP/healthz" >/dev/null; do sleep 0.1; done
}

start_nchan() {
    bench/nchan.sh "${NCHAN##*:}" >"$work/nchan.log" 2>&1 &
    pids+=($!)
    until curl -fs -o /dev/null "http://$NCHAN/pub?id=warmup" -d x 2>/dev/null; do sleep 0.1; done
    nchan_pids=$(pgrep -f "nginx: (master|worker)" | paste -sd,)
}

bench() { # server scenario args...
    local server=$1 scenario=$2
    shift 2
    if [[ $server == herald ]]; then
        start_herald
        target/release/herald-bench "$scenario" --server herald --http "$HERALD_HTTP" --grpc "$HERALD_GRPC" --pid "$herald_pid" "$@" | tee -a "$results"
        kill "$herald_pid"; wait "$herald_pid" 2>/dev/null || true
    else
        start_nchan
        target/release/herald-bench "$scenario" --server nchan --http "$NCHAN" --pid "$nchan_pids" "$@" | tee -a "$results"
        pkill -f "nginx: master"; sleep 0.5
    fi
}

for round in $(seq "$ROUNDS"); do
    echo "== round $round"
    for server in herald nchan; do
        bench "$server" idle --subscribers "$IDLE"
        bench "$server" group --users "$GROUP_SMALL" --messages "$GROUP_MESSAGES" --concurrency 8
        bench "$server" group --users "$GROUP_LARGE" --messages "$((GROUP_MESSAGES / 4))" --concurrency 8
        bench "$server" direct --users "$DIRECT_USERS" --messages "$DIRECT_MESSAGES" --concurrency 16
        bench "$server" direct --users "$DIRECT_USERS" --messages "$DIRECT_MESSAGES" --concurrency 16 --rate "$PACED_RATE"
    done
    # The same over gRPC SubscribeMessages streams (herald only).
    bench herald idle --transport grpc --subscribers "$IDLE"
    bench herald group --transport grpc --users "$GROUP_SMALL" --messages "$GROUP_MESSAGES" --concurrency 8
    bench herald direct --transport grpc --users "$DIRECT_USERS" --messages "$DIRECT_MESSAGES" --concurrency 16
done

python3 - "$results" <<'PY'
import re, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    fields = dict(re.findall(r"(\S+)=(\S+)", line))
    scenario = line.split()[0]
    if "rate" in fields:
        # A paced run: what matters is the server's CPU per message.
        scenario = f"direct at {float(fields['rate']):,.0f}/s"
        fields["cpu_us"] = float(fields["server_cpu_s"]) / float(fields["messages"]) * 1e6
    key = (scenario, fields.get("transport", "Sse").lower(), fields.get("users", fields.get("streams")))
    server = fields["server"].lower()
    metric = {"idle": "per_stream_bytes", "group": "deliveries/s", "direct": "messages/s"}.get(scenario, "cpu_us")
    rows.setdefault(key, {}).setdefault(server, []).append((float(fields[metric]), float(fields.get("p99", 0))))
print("\n| scenario | transport | size | metric | herald | nchan | herald/nchan | herald p99 ms | nchan p99 ms |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
for (scenario, transport, size), servers in rows.items():
    metric = {"idle": "bytes per idle stream", "group": "deliveries/s", "direct": "messages/s"}.get(scenario, "server CPU µs per message")
    med = lambda s, i: statistics.median(v[i] for v in servers.get(s, [(0, 0)]))
    h, n = med("herald", 0), med("nchan", 0)
    ratio = f"{h / n:.2f}" if n else "—"
    nchan = f"{n:,.0f}" if n else "—"
    print(f"| {scenario} | {transport} | {size} | {metric} | {h:,.0f} | {nchan} | {ratio} | {med('herald', 1):.1f} | {med('nchan', 1):.1f} |")
PY
