#!/usr/bin/env bash
# Set everything up, then run the whole test suite (unit + integration against a real tritonserver).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec .venv/bin/python -m pytest -q "$@"
