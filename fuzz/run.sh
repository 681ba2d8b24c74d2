#!/usr/bin/env bash
# Fuzzes what herald parses from the network (tokens, ids, JSON bodies,
# timestamps) for a while; a crash leaves its input in fuzz/artifacts/.
# cargo-fuzz needs nightly flags; RUSTC_BOOTSTRAP lets the stable toolchain
# accept them. The seed corpus is small and kept in git; new finds are not.
set -euo pipefail
cd "$(dirname "$0")"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz
seconds="${1:-60}"
work=$(mktemp -d)
cp corpus/network_input/* "$work/"
RUSTC_BOOTSTRAP=1 cargo fuzz run network_input --fuzz-dir . "$work" -- -max_total_time="$seconds"
rm -rf "$work"
