#!/usr/bin/env python3
"""Blocks live at the end of a heaptrack recording that were allocated in a
window before its end, summed by stack (count, bytes), most blocks first.

    burst-heap.py FILE.zst FROM_END_S TO_END_S [TOP]

heaptrack's data says which allocation each free undoes by kind (size and
stack), not by address; a free is taken to undo the latest block of its
kind, so a kind's oldest blocks are the ones counted as still live. Read by
bench/burst-heap.sh.
"""
import collections
import subprocess
import sys

path, start, end = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
top = int(sys.argv[4]) if len(sys.argv) > 4 else 25
# Frames of the allocator and of Rust's allocation plumbing say nothing.
PLUMBING = ("alloc::", "__rust", "__rdl", "malloc", "realloc", "calloc",
            "core::ptr", "<alloc", "RawVec", "raw_vec", "heaptrack")

strings, functions, traces, kinds = [""], [0], [(0, 0)], []
live = collections.defaultdict(list)
now = 0
data = subprocess.run(["zstdcat", path], capture_output=True, text=True, errors="replace").stdout
for line in data.splitlines():
    tag, rest = line[:1], line[2:]
    if tag == "+":
        live[int(rest, 16)].append(now)
    elif tag == "-":
        blocks = live[int(rest, 16)]
        if blocks:
            blocks.pop()
    elif tag == "c":
        now = int(rest, 16)
    elif tag == "a":
        size, trace = rest.split()
        kinds.append((int(size, 16), int(trace, 16)))
    elif tag == "t":
        ip, parent = rest.split()
        traces.append((int(ip, 16), int(parent, 16)))
    elif tag == "i":
        fields = rest.split()
        functions.append(int(fields[2], 16) if len(fields) > 2 else 0)
    elif tag == "s":  # its length, then the string
        strings.append(rest.split(" ", 1)[1] if " " in rest else "")

lo, hi = now - start * 1000, now - end * 1000
by_stack = collections.defaultdict(lambda: [0, 0])
for kind, times in live.items():
    size, trace = kinds[kind]
    for at in times:
        if lo <= at <= hi:
            by_stack[trace][0] += 1
            by_stack[trace][1] += size


def stack(trace, depth=10):
    frames = []
    while trace and len(frames) < 60:
        ip, trace = traces[trace]
        frames.append(strings[functions[ip]] if functions[ip] else "?")
    useful = [f[:80] for f in frames if not any(p in f for p in PLUMBING)]
    return " < ".join(useful[:depth])


total = [sum(v[0] for v in by_stack.values()), sum(v[1] for v in by_stack.values())]
print(f"live at the end, allocated {start:g} s to {end:g} s before it: {total[0]} blocks, {total[1]} bytes")
for trace, (count, size) in sorted(by_stack.items(), key=lambda item: -item[1][0])[:top]:
    print(f"{count:6} {size:9}  {stack(trace)}")
