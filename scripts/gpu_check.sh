#!/usr/bin/env bash
# GPU verification in one command: the GPU-marked tests, then eager FP32 vs compiled FP16
# throughput for resnet50 @ 224 at batch 1, 8, 64 and 256 with the share of the GPU's
# dense FP16 peak. Needs one CUDA GPU, PyTorch and this project's dependencies
# (pip install -e '.[test]'); torch_tensorrt is used where it imports. No network.
# Sized for < 8 minutes on one H100/H200-class GPU.
#
#   scripts/gpu_check.sh                 # from the repository root
#   PYTHON=/path/to/python OUT=/path/to/results scripts/gpu_check.sh   (default OUT: a new temporary directory)
#   WHEELS=dir scripts/gpu_check.sh      # offline host without tritonclient: install it from
#                                        # wheels fetched elsewhere (scripts/gpu_wheels.sh dir)
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
OUT="${OUT:-$(mktemp -d -t gpu_check.XXXXXX)}"
mkdir -p "$OUT"
cd "$ROOT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
started=$(date +%s)

# tritonclient (pure Python) carries Triton's model_config protobuf, which config
# generation needs; GPU images often lack it and have no registry to fetch it from
if ! "$PY" -c "import tritonclient.grpc.model_config_pb2" 2>/dev/null; then
  if [ -n "${WHEELS:-}" ]; then
    "$PY" -m pip install --quiet --no-index --no-deps --find-links "$WHEELS" --target "$OUT/site" tritonclient \
      || { echo "gpu_check: could not install tritonclient from $WHEELS"; exit 2; }
    export PYTHONPATH="$OUT/site:$PYTHONPATH"
  else
    echo "gpu_check: tritonclient is not installed; pip install tritonclient, or on an offline host WHEELS=dir (see scripts/gpu_wheels.sh)"
    exit 2
  fi
fi

echo "== environment"
"$PY" - <<'EOF' || { echo "gpu_check: stopped before the tests (see the line above)"; exit 2; }
import importlib, platform, sys
import torch
import sft_engine  # noqa: F401  (the checkout, or the installed package)
print(f"python {platform.python_version()}  torch {torch.__version__}  CUDA build {torch.version.cuda}")
if not torch.cuda.is_available():
    sys.exit("gpu_check: PyTorch sees no CUDA device")
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"GPU {i}: {p.name}  sm {p.major}.{p.minor}  {p.total_memory / 2**30:.0f} GiB")
for mod in ("torch_tensorrt", "tensorrt"):
    try:
        print(f"{mod} {importlib.import_module(mod).__version__}")
    except Exception as exc:
        print(f"{mod}: not available ({type(exc).__name__}); its tests are skipped")
from sft_engine.engines.compat import driver_version
print(f"driver {driver_version()}")
EOF

echo
echo "== GPU-marked tests"
"$PY" -m pytest -q -rs -m "gpu or tensorrt" tests/gpu -p no:cacheprovider --junitxml="$OUT/gpu_tests.xml"
tests_rc=$?
echo "tests: exit $tests_rc after $(( $(date +%s) - started )) s"

echo
echo "== eager FP32 vs compiled FP16 (resnet50 @ 224)"
"$PY" benchmarks/bench_gpu.py --arch resnet50 --input-size 224 --batches 1,8,64,256 --seconds 2 --json "$OUT/bench_gpu.json" --workdir "$OUT"
bench_rc=$?

echo
echo "gpu_check: tests exit $tests_rc, benchmark exit $bench_rc, $(( $(date +%s) - started )) s in all; results in $OUT"
if [ "$tests_rc" -ne 0 ]; then exit "$tests_rc"; fi
exit "$bench_rc"
