"""The ModelOpt → TensorRT INT8/FP8 path without a GPU: ModelOpt arguments per release and the real
ModelOpt quantizer (it calibrates on CPU), TensorRT build flags per version, the FP8 hardware rule,
the inspector verdict, the candidate's choices and every refusal."""

from __future__ import annotations

import importlib.util
from pathlib import Path
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from sft_engine.engines.tensorrt import target as tensorrt
from sft_engine.engines.base import EngineCandidate, ExportSettings
from sft_engine.engines.registry import check_choice
from sft_engine.engines.tensorrt.modelopt import (
    assess_quantized, fp8_unavailable_reason, modelopt_quantize_kwargs, quantize_with_modelopt, require_quantization_stack,
    tensorrt_build_flags,
)
from sft_engine.errors import ConfigError, ExportError, TargetUnavailable
from sft_engine.engines.precision import PRECISIONS
from sft_engine.verify import INT8_TOLERANCE

CAL = np.zeros((3, 3, 8, 8), np.float32)

#: parameter names of modelopt.onnx.quantization.quantize in an early 0.1x release and in a current one
OLD_SIGNATURE = {"onnx_path", "calibration_data", "calibration_method", "op_types_to_quantize", "op_types_to_exclude",
                 "nodes_to_quantize", "nodes_to_exclude", "use_external_data_format", "keep_intermediate_files",
                 "output_path", "verbose", "quantize_mode"}
NEW_SIGNATURE = OLD_SIGNATURE - {"verbose"} | {"calibration_cache_path", "calibration_data_reader", "calibration_shapes",
                                               "calibration_eps", "high_precision_dtype", "dq_only", "log_level", "simplify"}


def test_current_modelopt_gets_real_calibration_and_explicit_settings():
    kw = modelopt_quantize_kwargs("int8", NEW_SIGNATURE, CAL, "/tmp/q.onnx")
    assert kw["quantize_mode"] == "int8" and kw["calibration_method"] == "entropy"
    assert set(kw["calibration_data"]) == {"input"} and kw["calibration_data"]["input"].shape == CAL.shape
    assert kw["calibration_eps"] == ["cpu"] and kw["high_precision_dtype"] == "fp16"
    assert kw["dq_only"] is False and kw["output_path"] == "/tmp/q.onnx"
    fp8 = modelopt_quantize_kwargs("fp8", NEW_SIGNATURE, CAL, "/tmp/q.onnx")
    assert fp8["quantize_mode"] == "fp8" and fp8["calibration_method"] == "max"


def test_older_modelopt_gets_only_what_it_accepts():
    kw = modelopt_quantize_kwargs("int8", OLD_SIGNATURE, CAL, "/tmp/q.onnx")
    assert set(kw) == {"quantize_mode", "calibration_data", "output_path", "calibration_method"}
    assert set(kw) <= OLD_SIGNATURE


def test_a_modelopt_that_would_calibrate_on_random_data_is_refused():
    with pytest.raises(TargetUnavailable, match="no calibration_data argument"):
        modelopt_quantize_kwargs("int8", OLD_SIGNATURE - {"calibration_data"}, CAL, "/tmp/q.onnx")
    with pytest.raises(ValueError):
        modelopt_quantize_kwargs("int4", NEW_SIGNATURE, CAL, "/tmp/q.onnx")


@pytest.mark.parametrize("version", ["10.0.1", "10.16.1", "11.4.0"])
def test_tensorrt_10_and_later_build_strongly_typed(version):
    flags = tensorrt_build_flags(version, "int8")
    assert flags.network_flags == ("STRONGLY_TYPED",) and flags.builder_flags == ()  # TensorRT 11 has no FP16/INT8 flags
    assert tensorrt_build_flags(version, "fp8").network_flags == ("STRONGLY_TYPED",)
    assert flags.describe()["version"] == ".".join(version.split(".")[:2])


def test_tensorrt_9_builds_weakly_typed_with_int8_flags():
    flags = tensorrt_build_flags("9.3.0", "int8")
    assert flags.network_flags == ("EXPLICIT_BATCH",) and flags.builder_flags == ("INT8", "FP16")


@pytest.mark.parametrize("mode", ["int8", "fp8"])
def test_the_tensorrt_8_6_releases_refuse_modelopts_opset_19(mode):
    """ModelOpt >= 0.42 raises INT8/FP8 ONNX to opset 19; TensorRT 8.6's parser (NGC 24.01-24.04) was never checked to take it."""
    with pytest.raises(TargetUnavailable) as err:
        tensorrt_build_flags("8.6.1", mode)
    line = err.value.one_line()
    assert "TensorRT 8.6.1 (NGC 24.01–24.04)" in line and "opset 19" in line and "--ngc-release 24.05" in line and "\n" not in line


class _FakeImports:
    """import_module / find_spec of a host whose ModelOpt lacks some of its [onnx] pieces."""

    def __init__(self, missing: set[str], modelopt: bool = True):
        self.missing, self.modelopt = missing, modelopt

    def import_module(self, name: str):
        if name == "modelopt":
            if not self.modelopt:
                raise ModuleNotFoundError("No module named 'modelopt'", name="modelopt")
            return type("M", (), {"__version__": "0.35.0"})
        if name == "modelopt.onnx.quantization" and self.missing:
            try:  # what modelopt/onnx/__init__.py does with the first missing one
                raise ModuleNotFoundError(f"No module named {sorted(self.missing)[0]!r}", name=sorted(self.missing)[0])
            except ImportError as exc:
                raise ImportError("Please install optional ``[onnx]`` dependencies.") from exc
        return object()

    def find_spec(self, name: str):
        return None if name in self.missing else object()


def test_a_modelopt_without_its_onnx_pieces_names_each_missing_module_and_how_to_install_it():
    from sft_engine.engines.tensorrt.modelopt import quantization_stack_problem, quantizer_problem

    fake = _FakeImports({"onnx_graphsurgeon", "onnxruntime", "cupy_hidden_extra"})
    reason = quantizer_problem(fake.import_module, fake.find_spec)
    assert "nvidia-modelopt 0.35.0 lacks its ONNX quantizer's dependencies: missing onnx_graphsurgeon, onnxruntime" in reason
    assert "pip install onnx-graphsurgeon onnxruntime-gpu" in reason and "nvidia-modelopt[onnx]" in reason
    only_chain = _FakeImports({"onnxconverter_common"})  # an older release's import, known only from the exception
    assert "missing onnxconverter_common (pip install onnxconverter-common" in quantizer_problem(only_chain.import_module, only_chain.find_spec)
    absent = _FakeImports(set(), modelopt=False)
    assert quantizer_problem(absent.import_module, absent.find_spec).startswith("nvidia-modelopt is not installed")
    assert quantizer_problem(_FakeImports(set()).import_module, _FakeImports(set()).find_spec) is None
    assert quantization_stack_problem(False) == "PyTorch sees no CUDA device"

    def no_tensorrt(name):
        raise ImportError("libnvinfer.so.10: cannot open shared object file")

    assert "the TensorRT Python package does not import" in quantization_stack_problem(True, no_tensorrt)


def test_tensorrt_refusals():
    with pytest.raises(TargetUnavailable, match="cannot build explicitly quantized"):
        tensorrt_build_flags("8.5.3", "int8")
    with pytest.raises(TargetUnavailable, match="no FP8 convolutions"):
        tensorrt_build_flags("9.3.0", "fp8")


def test_fp8_needs_ada_or_hopper():
    assert fp8_unavailable_reason(["9.0"]) is None and fp8_unavailable_reason(["8.9", "9.0"]) is None
    assert "8.0" in fp8_unavailable_reason(["8.0", "9.0"])
    assert "compute capability 8.9" in fp8_unavailable_reason(["7.5"])


def _layer(kind: str, fmt: str) -> dict:
    return {"LayerType": kind, "Inputs": [{"Format/Datatype": fmt}]}


def test_inspector_verdict_requires_quantized_convolutions():
    int8 = [_layer("CaskConvolution", "Channel major INT8 format")] * 9 + [_layer("CaskConvolution", "Row major linear FP16 format")]
    verdict = assess_quantized(int8, "int8")
    assert verdict.passed and verdict.quantized_share == 0.9
    fp16 = [_layer("CaskConvolution", "Row major linear FP16 format")] * 10
    verdict = assess_quantized(fp16, "int8")
    assert not verdict.passed and "only 0% of the plan's compute layers run in INT8" in verdict.reasons[0]
    assert assess_quantized([_layer("CaskConvolution", "FP8 format")] * 3, "fp8").passed
    assert not assess_quantized(int8, "fp8").passed
    assert not assess_quantized(None, "int8").passed  # unverified is not published


# -- the real ModelOpt quantizer (it calibrates on CPU) -------------------------------------

HAS_MODELOPT = importlib.util.find_spec("modelopt") is not None
needs_modelopt = pytest.mark.skipif(not HAS_MODELOPT, reason="needs nvidia-modelopt (pip install 'sft-engine[modelopt]')")


@pytest.fixture(scope="module")
def fp32_onnx(tmp_path_factory):
    """A seeded resnet18 @ 32 exported as the tensorrt target exports it for ModelOpt, and the model itself."""
    from sft_engine.engines.export.onnx import export_onnx
    from sft_engine.models import build_model

    torch.manual_seed(0)
    model = build_model("resnet18", 6).eval()
    path = tmp_path_factory.mktemp("modelopt") / "model_fp32.onnx"
    export_onnx(model, torch.zeros(2, 3, 32, 32), path)
    return model, path


def _quantizers(path):
    """Each QuantizeLinear of the graph: (its input, scale, quantized element type)."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    tensors = {i.name: i for i in graph.initializer}
    tensors.update({n.output[0]: n.attribute[0].t for n in graph.node if n.op_type == "Constant"})
    return [(n.input[0], float(np.asarray(numpy_helper.to_array(tensors[n.input[1]]), dtype=np.float32).ravel()[0]),
             tensors[n.input[2]].data_type if len(n.input) > 2 and n.input[2] in tensors else None)
            for n in graph.node if n.op_type == "QuantizeLinear"]


def _input_quantizer(path):
    """(scale, element type) of the QuantizeLinear of the graph input."""
    return next((scale, elem) for name, scale, elem in _quantizers(path) if name.startswith("input"))


@needs_modelopt
def test_modelopt_calibrates_on_the_images_it_is_given(fp32_onnx, tmp_path):
    """Activation ranges come from the calibration images (4x the images, 4x the input scale), never from random data."""
    import onnx
    import onnxruntime as ort

    model, path = fp32_onnx
    cal = np.random.default_rng(0).standard_normal((16, 3, 32, 32)).astype(np.float32)
    record = quantize_with_modelopt(path, cal, tmp_path / "a.onnx", "int8")
    quantize_with_modelopt(path, cal * 4, tmp_path / "b.onnx", "int8")
    assert record["quantizer"] == "nvidia-modelopt" and record["calibration_images"] == 16
    assert record["quantize_mode"] == "int8" and record["calibration_method"] == "entropy" and record["calibration_eps"] == ["cpu"]
    (scale_a, elem), (scale_b, _) = _input_quantizer(tmp_path / "a.onnx"), _input_quantizer(tmp_path / "b.onnx")
    assert scale_b / scale_a == pytest.approx(4.0, rel=0.05)
    assert elem == onnx.TensorProto.INT8
    graph = onnx.load(str(tmp_path / "a.onnx")).graph
    convs = [n for n in graph.node if n.op_type == "Conv"]
    assert sum(n.op_type == "QuantizeLinear" for n in graph.node) >= len(convs), "every convolution quantized"
    assert [i.type.tensor_type.elem_type for i in graph.input] == [onnx.TensorProto.FLOAT], "FP32 in, as the config says"
    # the Q/DQ model computes the same function, coarsely (ONNX Runtime runs it on CPU)
    x = np.random.default_rng(1).standard_normal((8, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    out = ort.InferenceSession(str(tmp_path / "a.onnx"), options, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    assert out.dtype == np.float32 and np.corrcoef(out.ravel(), ref.ravel())[0, 1] > 0.98


@needs_modelopt
def test_modelopt_fp8_quantizes_to_e4m3(fp32_onnx, tmp_path):
    import onnx

    _, path = fp32_onnx
    cal = np.random.default_rng(0).standard_normal((8, 3, 32, 32)).astype(np.float32)
    record = quantize_with_modelopt(path, cal, tmp_path / "q.onnx", "fp8")
    assert record["quantize_mode"] == "fp8" and record["calibration_method"] == "max"
    quantizers = _quantizers(tmp_path / "q.onnx")
    assert quantizers and {elem for _, _, elem in quantizers} == {onnx.TensorProto.FLOAT8E4M3FN}


@needs_modelopt
def test_a_failure_inside_modelopt_is_reported_with_its_message(tmp_path):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"not an onnx model")
    with pytest.raises(ExportError, match="modelopt quantize failed") as err:
        quantize_with_modelopt(bad, CAL, tmp_path / "q.onnx", "int8")
    assert "\n" not in err.value.one_line()


# -- the candidate, its choices and refusals ------------------------------------------------

@pytest.mark.parametrize("precision", ["auto", "fp16", "int8", "fp8"])
def test_tensorrt_precisions_are_accepted(precision):
    check_choice("tensorrt", "auto", precision)
    expected = "fp16" if precision == "auto" else precision
    assert tensorrt.plan(_settings(precision)) == [EngineCandidate("tensorrt", expected)]


@pytest.mark.parametrize("target, engine, precision, message", [
    ("tensorrt", "auto", "bf16", "--target tensorrt has no bf16 mode"),
    ("tensorrt", "openvino", "int8", "--engine openvino chooses a CPU engine"),
    ("torchscript-gpu", "auto", "int8", "--precision applies to --target cpu or tensorrt, not torchscript-gpu"),
    ("onnx", "auto", "int8", "not onnx"),
    ("cpu", "auto", "fp8", "unknown CPU precision 'fp8'"),
    ("cpu", "auto", "fp16", "unknown CPU precision 'fp16'"),
    ("auto", "auto", "fp8", "--precision fp8 needs --target tensorrt"),
])
def test_precision_refusals(target, engine, precision, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        check_choice(target, engine, precision)


def test_the_quantized_stack_is_refused_in_one_line_naming_what_is_missing():
    with pytest.raises(TargetUnavailable, match=r"--precision int8 needs a CUDA GPU") as err:
        require_quantization_stack("int8", cuda=False)
    assert "--target cpu --precision int8" in err.value.one_line()
    if importlib.util.find_spec("tensorrt") is None:
        with pytest.raises(TargetUnavailable, match=r"--precision fp8 needs the TensorRT Python package"):
            require_quantization_stack("fp8", cuda=True)


def test_fp8_has_the_int8_gate():
    assert PRECISIONS["fp8"].gate == INT8_TOLERANCE


@pytest.mark.skipif(torch.cuda.is_available(), reason="the error path of a host without CUDA")
@pytest.mark.parametrize("args, message", [
    (["--precision", "int8", "--calibration", "{cal}"], "error: --target tensorrt --precision int8 needs a CUDA GPU"),
    (["--precision", "fp8"], "error: --precision fp8 needs labelled images"),
    (["--precision", "bf16"], "error: --target tensorrt has no bf16 mode"),
])
def test_cli_refuses_quantized_tensorrt_builds_in_one_line(tmp_path, args, message):
    repo = tmp_path / "repo"
    (tmp_path / "cal").mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "sft_engine.cli", "build", "--target", "tensorrt", "--arch", "resnet18", "--num-classes", "3",
         "--allow-random-weights", "--input-size", "32", "--max-batch-size", "4", "--repository", str(repo),
         *[a.format(cal=tmp_path / "cal") for a in args]],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), proc.stderr
    assert not repo.exists(), "the repository must stay untouched"


def _settings(precision: str) -> ExportSettings:
    return ExportSettings(name="m", arch="resnet18", num_classes=3, input_shape=(3, 32, 32), max_batch_size=4, precision=precision)


def test_modelopt_records_the_images_the_library_was_handed(tmp_path, monkeypatch):
    """The record is made from the arrays passed to the library, so a caller handing it gate images shows in the manifest."""
    from sft_engine.engines.calibration import image_digest
    from sft_engine.engines.tensorrt import modelopt

    got: list[np.ndarray] = []

    def fake_quantize(onnx_path, quantize_mode, calibration_data, output_path):
        got.extend(calibration_data["input"])
        Path(output_path).write_bytes(b"q")

    monkeypatch.setattr(modelopt, "require_modelopt", lambda: (fake_quantize, "0.33.0"))
    cal = np.random.default_rng(0).standard_normal((5, 3, 8, 8)).astype(np.float32)
    record = quantize_with_modelopt(tmp_path / "in.onnx", cal, tmp_path / "out.onnx", "int8")
    assert record["received_images"] == 5 == len(got)
    assert record["received_image_digests"] == [image_digest(x) for x in got] == [image_digest(x) for x in cal]
    other = cal.copy()
    other[2] += 1
    assert image_digest(other[2]) not in record["received_image_digests"]
