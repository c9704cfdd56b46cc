#!/usr/bin/env bash
# Set everything up, then run the demo: fine-tune, build, serve, classify, load-test - offline, on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec .venv/bin/sft-engine demo "$@"
