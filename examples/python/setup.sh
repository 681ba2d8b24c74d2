#!/usr/bin/env bash
# Makes .venv with grpcio and generates the stubs from herald's proto into gen/.
set -euo pipefail
cd "$(dirname "$0")"
[[ -x .venv/bin/python ]] || python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -r requirements.txt
mkdir -p gen
.venv/bin/python -m grpc_tools.protoc -I ../../proto --python_out=gen --grpc_python_out=gen herald/v1/herald.proto
