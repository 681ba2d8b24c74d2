#!/usr/bin/env bash
# Where an idle stream's bytes live: herald (started as bench/run.sh starts it)
# under heaptrack (Debian's
# heaptrack package, installed here if missing) holds N idle streams, is
# killed while they are all open, and heaptrack's "leaked" bytes (live at
# that moment) are printed per stream, by the first frame outside the
# allocator. Loopback only, bounded in count.
#
#   bench/idle-heap.sh                 # 10,000 idle gRPC streams
#   TRANSPORT=sse STREAMS=5000 bench/idle-heap.sh
set -euo pipefail
cd "$(dirname "$0")/.."

TRANSPORT="${TRANSPORT:-grpc}"
STREAMS="${STREAMS:-10000}"
HTTP=127.0.0.1:18600 GRPC=127.0.0.1:18601

if ! command -v heaptrack >/dev/null; then
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q heaptrack >/dev/null
fi
ulimit -n "$(ulimit -Hn)"
[[ -n "${NO_BUILD:-}" ]] || cargo build --release --workspace --bins -q
work=$(mktemp -d)
pid=
trap '[[ -n "$pid" ]] && kill -KILL "$pid" 2>/dev/null; rm -rf "$work"' EXIT

heaptrack -o "$work/heap" target/release/herald serve --http "$HTTP" --grpc "$GRPC" \
    --database-url "sqlite://$work/herald.db" --jwt-secret bench-secret-0123456789abcdef0123456789abcdef \
    --rate-limit 1000000 --rate-burst 1000000 --max-subscriptions-per-user 100000 --max-participants 100000 \
    --call-rate-limit 1000000 --call-rate-burst 1000000 --max-connections-per-ip 0 \
    >"$work/heaptrack.log" 2>"$work/herald.log" &
heaptrack=$!
until curl -fs "http://$HTTP/healthz" >/dev/null; do sleep 0.2; done
# The server is the heaptrack script's child, not any herald on the machine.
pid=$(pgrep -x herald -P "$heaptrack")
target/release/herald-bench idle --server herald --http "$HTTP" --grpc "$GRPC" --pid "$pid" \
    --transport "$TRANSPORT" --subscribers "$STREAMS" &
bench=$!
open=0
for _ in $(seq 600); do
    open=$(curl -fs "http://$HTTP/metrics" | awk '/^herald_subscriptions_open/ {s += $2} END {print s + 0}')
    [[ "$open" -ge "$STREAMS" ]] && break
    sleep 0.2
done
sleep 1
kill -KILL "$pid"
wait "$bench" || true
sleep 3
heaptrack_print -f "$work"/heap*.zst --print-peaks 0 --print-allocators 0 --print-temporary 0 \
    --print-leaks 0 --print-flamegraph "$work/stacks.txt" --flamegraph-cost-type leaked >/dev/null

python3 - "$work/stacks.txt" "$open" <<'PY'
import re, sys
from collections import Counter

stacks, streams = sys.argv[1], int(sys.argv[2])
# Frames of the allocator and the standard library say nothing of who allocated.
quiet = {"alloc.rs", "boxed.rs", "mod.rs", "unix.rs", "result.rs", "option.rs", "raw_vec.rs",
         "vec.rs", "bytes_mut.rs", "sync.rs", "rc.rs", "map.rs", "function.rs", "ops.rs",
         "core.rs", "maybe_uninit.rs", "spec_from_iter.rs", "spec_extend.rs", "clone.rs"}
sites = Counter()
for line in open(stacks):
    stack, _, cost = line.rstrip().rpartition(" ")
    frames = []
    for frame in reversed(stack.split(";")):
        found = re.search(r"\(([^)]*)\)$", frame)
        if found and found.group(1) not in quiet:
            frames.append(frame)
        if len(frames) == 4:
            break
    sites[" <- ".join(frames)] += int(cost)
total = sum(sites.values())
print(f"{streams} idle streams: live heap {total / streams:,.0f} B per stream")
for site, cost in sites.most_common(25):
    if cost / streams >= 8:
        print(f"{cost / streams:7,.0f} B  {site[:200]}")
PY
