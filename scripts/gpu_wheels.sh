#!/usr/bin/env bash
# Fetch, on a machine with a package index, the wheels gpu_check.sh needs on an offline
# GPU host whose image has PyTorch but not tritonclient; copy DIR there and run
#   WHEELS=DIR scripts/gpu_check.sh
# tritonclient is pure Python; its runtime dependencies (numpy, grpcio, protobuf,
# ml-dtypes, packaging) are in the usual PyTorch GPU images.
#
#   scripts/gpu_wheels.sh DIR
set -euo pipefail
dir="${1:?usage: scripts/gpu_wheels.sh DIR}"
mkdir -p "$dir"
"${PYTHON:-python3}" -m pip download --quiet --no-deps --only-binary=:all: -d "$dir" tritonclient
ls "$dir"
