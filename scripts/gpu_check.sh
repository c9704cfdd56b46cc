#!/usr/bin/env bash
# GPU verification in one command. The first line it prints is the verdict: which targets
# actually ran on the GPU (tensorrt, torchscript-gpu, the torch.export of the tensorrt
# target's half model), which failed, which did not run and why; the log follows.
#
# It runs the GPU-marked tests (tests/gpu: the FP16 targets, and the INT8 / FP8 plans of
# --target tensorrt --precision int8|fp8 where the tensorrt package and nvidia-modelopt[onnx]
# import; FP8 only on compute capability >= 8.9), then eager FP32 (TF32 off and on) against the
# compiled FP16 engine for resnet50 @ 224 at batch 1, 8, 64 and 256, with images/s and the
# share of the GPU's dense FP16 peak. Needs one CUDA GPU, PyTorch and this project's
# dependencies; torch_tensorrt is used where it imports. No network. Sized for < 8 minutes
# on one H100/H200-class GPU.
#
#   scripts/gpu_check.sh                     # exit 0 only if something ran on the GPU and nothing failed
#   scripts/gpu_check.sh --require-tensorrt  # also non-zero when the tensorrt target did not run
#   PYTHON=/path/to/python OUT=/path/to/results scripts/gpu_check.sh   (default OUT: a new temporary directory)
#   WHEELS=dir scripts/gpu_check.sh          # offline host without tritonclient: install it from
#                                            # wheels fetched elsewhere (scripts/gpu_wheels.sh dir)
# Exit codes (scripts/gpu_verdict.py): 0 pass, 1 a failure, 3 nothing ran on a GPU,
# 4 --require-tensorrt and the tensorrt target did not run, 2 bad arguments.
set -uo pipefail

require=()
for arg in "$@"; do
  case "$arg" in
    --require-tensorrt) require=(--require-tensorrt) ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "gpu_check: unknown argument $arg (see: scripts/gpu_check.sh --help)" >&2; exit 2 ;;
  esac
done

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
OUT="${OUT:-$(mktemp -d -t gpu_check.XXXXXX)}"
mkdir -p "$OUT"
cd "$ROOT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
started=$(date +%s)
LOG="$OUT/gpu_check.log"
exec 3>&1 4>&2 >"$LOG" 2>&1   # the verdict goes first on stdout; everything else into the log
progress() { echo "gpu_check: $*" >&4; }

finish() {  # arguments: those of scripts/gpu_verdict.py
  "$PY" scripts/gpu_verdict.py "$@" "${require[@]}" >"$OUT/verdict.txt"
  local rc=$?
  cat "$OUT/verdict.txt" >&3
  cat "$LOG" >&3
  echo "gpu_check: $(( $(date +%s) - started )) s in all; results in $OUT" >&3
  exit "$rc"
}

# tritonclient (pure Python) carries Triton's model_config protobuf, which config
# generation needs; GPU images often lack it and have no registry to fetch it from
if ! "$PY" -c "import tritonclient.grpc.model_config_pb2" 2>/dev/null; then
  if [ -n "${WHEELS:-}" ]; then
    "$PY" -m pip install --quiet --no-index --no-deps --find-links "$WHEELS" --target "$OUT/site" tritonclient \
      || finish --stopped "could not install tritonclient from $WHEELS"
    export PYTHONPATH="$OUT/site:$PYTHONPATH"
  else
    finish --stopped "tritonclient is not installed: pip install tritonclient, or on an offline host WHEELS=dir (see scripts/gpu_wheels.sh)"
  fi
fi

progress "environment"
echo "== environment"
"$PY" - <<'PYEOF' || finish --stopped "$(tail -n 1 "$LOG")"
import importlib, platform, sys
import torch
import sft_engine  # noqa: F401  (the checkout, or the installed package)
print(f"python {platform.python_version()}  torch {torch.__version__}  CUDA build {torch.version.cuda}")
if not torch.cuda.is_available():
    sys.exit("PyTorch sees no CUDA device")
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"GPU {i}: {p.name}  sm {p.major}.{p.minor}  {p.total_memory / 2**30:.0f} GiB")
for mod in ("torch_tensorrt", "tensorrt", "modelopt"):
    try:
        print(f"{mod} {importlib.import_module(mod).__version__}")
    except Exception as exc:
        print(f"{mod}: not available ({type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}); its tests are skipped")
from sft_engine.engines.gpu.compatibility import driver_version
from sft_engine.engines.tensorrt.modelopt import quantization_stack_problem
print(f"driver {driver_version()}")
problem = quantization_stack_problem(True)
print("INT8/FP8 (TensorRT + modelopt.onnx.quantization): " + (f"not available, their tests are skipped: {problem}" if problem else "importable"))
PYEOF

progress "GPU-marked tests"
echo
echo "== GPU-marked tests"
"$PY" -m pytest -q -rs -m "gpu or tensorrt" tests/gpu -p no:cacheprovider --junitxml="$OUT/gpu_tests.xml"
tests_rc=$?
echo "tests: exit $tests_rc after $(( $(date +%s) - started )) s"

progress "benchmark"
echo
echo "== eager FP32 (TF32 off / on) vs compiled FP16 (resnet50 @ 224)"
"$PY" benchmarks/bench_gpu.py --arch resnet50 --input-size 224 --batches 1,8,64,256 --seconds 2 --json "$OUT/bench_gpu.json" --workdir "$OUT"
bench_rc=$?

finish --junit "$OUT/gpu_tests.xml" --tests-rc "$tests_rc" --bench-rc "$bench_rc"
