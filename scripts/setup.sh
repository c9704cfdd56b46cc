#!/usr/bin/env bash
# Create (or reuse) .venv and install sft-engine with the embedded server, ONNX Runtime, OpenVINO,
# NNCF (INT8), ModelOpt (its ONNX quantizer), load-test and test extras, at the exact versions of constraints-cpu.txt (the package's
# own requirements are ranges). Idempotent: a second run only checks the install.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.sft-engine-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ constraints-cpu.txt -nt "$stamp" ]; then
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints-cpu.txt -e ".[server,onnx,openvino,int8,modelopt,loadtest,test]" 2>&1 | grep -v "is ignored" || true
  .venv/bin/python -c "import sft_engine, torch, torchvision, onnxruntime, openvino, nncf, modelopt.onnx.quantization, tritonclient.grpc, hdrh, pytriton" || {
    echo "error: the installation is incomplete (see the pip output above)" >&2; exit 1; }
  touch "$stamp"
fi
