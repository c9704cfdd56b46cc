"""INT8 on CPU: instruction-set detection, the calibration/gate split, the gate, the quantizers."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from sft_engine.engines.calibration import MIN_GATE_IMAGES, files_sha256, image_digest, split_for_int8
from sft_engine.engines.cpu.isa import cpu_bf16_isa, cpu_int8_isa, require_int8_isa
from sft_engine.engines.precision import gate_for
from sft_engine.verify import INT8_TOLERANCE
from sft_engine.errors import ConfigError, ExportError, TargetUnavailable
from sft_engine.preprocess import Preprocessing
from sft_engine.verify import ParityData, Tolerance, check_parity, parity_inputs
from tests.unit.finetune_fixtures import write_folder

CPUINFO = "processor\t: 0\nflags\t\t: fpu sse2 avx avx512f {extra}\nbogomips\t: 1\n"


def test_isa_detection_prefers_amx_then_vnni():
    assert cpu_int8_isa(CPUINFO.format(extra="avx512_vnni amx_bf16 amx_int8 amx_tile")) == "AMX-INT8"
    assert cpu_int8_isa(CPUINFO.format(extra="avx512_vnni")) == "AVX512-VNNI"
    assert cpu_int8_isa(CPUINFO.format(extra="avx_vnni")) == "AVX-VNNI"
    assert cpu_int8_isa(CPUINFO.format(extra="avx2 avx512_vnni")) == "AVX512-VNNI"
    assert cpu_int8_isa(CPUINFO.format(extra="avx2")) == "AVX2"  # u8s8 in two instructions: the pre-VNNI kernels
    assert cpu_int8_isa(CPUINFO.format(extra="avx512_bf16")) is None
    assert cpu_int8_isa("") is None


def test_bf16_detection_needs_the_hardware_flags():
    assert cpu_bf16_isa(CPUINFO.format(extra="avx512_vnni amx_bf16 amx_int8 avx512_bf16")) == "AMX-BF16"
    assert cpu_bf16_isa(CPUINFO.format(extra="avx512_bf16")) == "AVX512-BF16"
    assert cpu_bf16_isa(CPUINFO.format(extra="avx512_vnni avx512bw")) is None  # bf16 there is emulated


def test_int8_is_refused_without_the_instructions_naming_them():
    with pytest.raises(TargetUnavailable, match="AMX-INT8, AVX512-VNNI, AVX-VNNI or AVX2") as info:
        require_int8_isa(None)
    assert "--precision bf16 or fp32" in (info.value.hint or "")
    assert require_int8_isa("AVX-VNNI") == "AVX-VNNI"


def _labelled(n: int) -> ParityData:
    files = tuple(f"c{i % 4}/{i:04d}.png" for i in range(n))
    return ParityData(np.arange(n, dtype=np.float32).reshape(n, 1), np.arange(n) % 4, files)


def test_split_is_disjoint_deterministic_and_hashed():
    data = _labelled(600)
    split = split_for_int8(data, 300)
    cal, gate = set(split.calibration_index.tolist()), set(split.gate_index.tolist())
    assert len(cal) == 300 and len(gate) == 300 and not cal & gate and cal | gate == set(range(600))
    # the arrays really are the images of those indices (inputs here encode their own index)
    assert split.calibration[:, 0].astype(int).tolist() == sorted(cal)
    assert split.gate.inputs[:, 0].astype(int).tolist() == sorted(gate)
    assert split.gate.labels.tolist() == [i % 4 for i in sorted(gate)]
    again = split_for_int8(data, 300)
    assert again.describe() == split.describe()
    info = split.describe()
    assert (info["calibration_images"], info["gate_images"]) == (300, 300)
    assert info["gate_files_sha256"] == files_sha256(data.files[i] for i in sorted(gate))
    assert info["calibration_files_sha256"] != info["gate_files_sha256"]
    assert split_for_int8(data, 300, seed=1).describe()["gate_files_sha256"] != info["gate_files_sha256"]


def test_split_keeps_the_gate_at_its_minimum_by_calibrating_on_fewer():
    split = split_for_int8(_labelled(256), 300)  # a default fine-tune holdout
    assert (len(split.calibration), len(split.gate.inputs)) == (56, MIN_GATE_IMAGES)
    tiny = split_for_int8(_labelled(600), 4)  # asked for a tiny calibration set: granted
    assert (len(tiny.calibration), len(tiny.gate.inputs)) == (4, 596)


def test_split_refuses_too_few_or_unlabelled_images():
    with pytest.raises(TargetUnavailable, match="at least 232 labelled images .* there are 231"):
        split_for_int8(_labelled(231), 300)
    with pytest.raises(TargetUnavailable, match="needs labelled images"):
        split_for_int8(ParityData(np.zeros((300, 1), np.float32)), 300)
    with pytest.raises(TargetUnavailable, match="at least one image"):
        split_for_int8(_labelled(600), 0)


def test_labelled_calibration_dir_records_relative_files(tmp_path: Path):
    write_folder(tmp_path, {"cat": 2, "dog": 1}, size=8)
    data = parity_inputs(Preprocessing(input_size=8), 3, tmp_path, labels=["cat", "dog"])
    assert data.files == ("cat/0.png", "cat/1.png", "dog/0.png")
    assert data.labels.tolist() == [0, 0, 1]


def test_unreadable_calibration_dir_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """As root too (CI): a directory whose listing fails - made to fail, since root reads any directory."""
    write_folder(tmp_path / "cal", {"cat": 1}, size=8)
    real_iterdir = Path.iterdir

    def refusing(self: Path):
        if self == tmp_path / "cal":
            raise PermissionError(13, "Permission denied", str(self))
        return real_iterdir(self)

    monkeypatch.setattr(Path, "iterdir", refusing)
    with pytest.raises(ConfigError, match="cannot be read: Permission denied") as err:
        parity_inputs(Preprocessing(input_size=8), 3, tmp_path / "cal", labels=["cat", "dog"])
    assert "\n" not in err.value.one_line()


@pytest.mark.parametrize("case, message", [("file", "does not exist"), ("empty", "holds no images")])
def test_a_calibration_path_without_images_is_one_line(tmp_path: Path, case: str, message: str):
    path = tmp_path / "cal"
    if case == "file":
        path.write_text("not a directory")
    else:
        (path / "cat").mkdir(parents=True)
        (path / "cat" / "notes.txt").write_text("no images here")
    with pytest.raises(ConfigError, match=message):
        parity_inputs(Preprocessing(input_size=8), 3, path, labels=["cat", "dog"])


def test_int8_gate_judges_decisions_and_records_distance():
    assert INT8_TOLERANCE.min_top1_agreement == 0.99 and INT8_TOLERANCE.max_accuracy_drop == 0.5
    given = Tolerance(atol=1e-6, rtol=0.0, min_top1_agreement=0.5, max_accuracy_drop=9.0)
    assert gate_for("int8", given, {}) == INT8_TOLERANCE
    strict = gate_for("int8", given, {"parity_min_top1_agreement": "flags"})
    assert strict.min_top1_agreement == 0.5 and strict.max_accuracy_drop == 0.5
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((400, 4)).astype(np.float32) * 5
    labels = ref.argmax(1)
    shifted = ref + rng.standard_normal(ref.shape).astype(np.float32) * 0.05  # quantization-sized noise
    report = check_parity("int8", ref, lambda x: shifted[x[:, 0].astype(int)], ParityData(np.arange(400, dtype=np.float32)[:, None], labels), INT8_TOLERANCE, 50)
    assert report.max_abs_diff > 0.05 and report.top1_agreement >= 0.99, report.reasons  # distance recorded, not gated
    assert report.passed
    wrong = ref.copy()
    wrong[:8] = wrong[:8, ::-1]  # 2 % of decisions flipped
    report = check_parity("int8", ref, lambda x: wrong[x[:, 0].astype(int)], ParityData(np.arange(400, dtype=np.float32)[:, None], labels), INT8_TOLERANCE, 50)
    assert not report.passed and any("top-1 agreement" in r for r in report.reasons)


# -- the quantizers, on a real (small) model ------------------------------------------------


@pytest.fixture(scope="module")
def small_onnx(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    from sft_engine.engines.export.onnx import export_onnx
    from sft_engine.models import build_model

    torch.manual_seed(0)
    model = build_model("resnet18", 4).eval()
    path = tmp_path_factory.mktemp("q") / "model.onnx"
    export_onnx(model, torch.randn(2, 3, 32, 32), path)
    return path, model


def _calibration(n: int = 24) -> np.ndarray:
    return np.random.default_rng(1).standard_normal((n, 3, 32, 32)).astype(np.float32)


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="onnxruntime is not installed")
def test_onnxruntime_qdq_quantization_is_int8_and_close(small_onnx, tmp_path):
    import onnx
    import onnxruntime as ort

    from sft_engine.engines.cpu.quantize import quantize_onnx

    src, model = small_onnx
    out = tmp_path / "model.onnx"
    info = quantize_onnx(src, _calibration(), out)
    assert info["quantizer"] == "onnxruntime.quantization" and info["version"] == ort.__version__ and info["format"] == "QDQ"
    assert info["received_image_digests"] == [image_digest(x) for x in _calibration()]  # what the reader really handed over
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    x = _calibration(4)
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    with torch.inference_mode():
        ref = model(torch.from_numpy(x)).numpy()
    assert 0 < np.abs(got - ref).max() < 0.5 * np.abs(ref).max()


@pytest.mark.skipif(importlib.util.find_spec("nncf") is None, reason="nncf is not installed")
def test_nncf_quantization_runs_int8_kernels(small_onnx, tmp_path):
    import nncf
    import openvino as ov

    from sft_engine.engines.cpu.quantize import quantize_openvino

    src, _ = small_onnx
    ir = tmp_path / "fp32.xml"
    ov.save_model(ov.convert_model(str(src)), str(ir), compress_to_fp16=False)
    out = tmp_path / "model.xml"
    info = quantize_openvino(ir, _calibration(), out)
    assert info["quantizer"] == "nncf" and info["version"] == nncf.__version__ and info["subset_size"] == 24
    assert info["received_image_digests"] == [image_digest(x) for x in _calibration()]  # what NNCF really pulled
    assert (tmp_path / "model.bin").is_file()
    kinds = {op.get_type_name() for op in ov.Core().read_model(str(out)).get_ops()}
    assert "FakeQuantize" in kinds
    if cpu_int8_isa() is not None:  # the CPU plugin really runs integer kernels
        compiled = ov.Core().compile_model(str(out), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        precisions = {op.get_rt_info()["runtimePrecision"].astype(str) for op in compiled.get_runtime_model().get_ops()
                      if "runtimePrecision" in op.get_rt_info()}
        assert precisions & {"i8", "u8"}


@pytest.mark.parametrize("library", ["onnxruntime", "nncf"])
def test_a_failure_inside_the_library_carries_its_message(tmp_path, library):
    from sft_engine.engines.cpu.quantize import QuantizationError, quantize_onnx, quantize_openvino

    if importlib.util.find_spec(library) is None:
        pytest.skip(f"{library} is not installed")
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    if library == "onnxruntime":
        with pytest.raises(QuantizationError, match="onnxruntime quantize_static failed: ") as info:
            quantize_onnx(broken, _calibration(2), tmp_path / "out.onnx")
    else:
        (tmp_path / "broken.xml").write_text("<net>")
        with pytest.raises(QuantizationError, match="nncf.quantize failed: ") as info:
            quantize_openvino(tmp_path / "broken.xml", _calibration(2), tmp_path / "out.xml")
    assert isinstance(info.value, ExportError) and "\n" not in str(info.value)


def test_a_bare_assert_in_a_quantizer_is_named_by_its_place():
    """ONNX Runtime's quantizer asserts without a message on some graphs: the one line then says where it failed."""
    from sft_engine.engines.cpu.quantize import _library_failure

    def library_code():
        raise AssertionError  # what a bare assert raises outside pytest's rewriting

    try:
        library_code()
    except AssertionError as exc:
        err = _library_failure("onnxruntime quantize_static", exc)
    assert str(err).startswith("onnxruntime quantize_static failed: AssertionError: at ")
    assert "test_engines_int8.py:" in str(err) and "raise AssertionError" in str(err)
    assert "\n" not in str(err)
    assert str(_library_failure("nncf.quantize", ValueError("bad\nshape"))).startswith("nncf.quantize failed: ValueError: bad shape")


def test_calibration_batch_fits_the_memory_available():
    """ONNX Runtime's calibration holds every activation of a batch: the batch shrinks with memory, and one image that cannot fit is refused."""
    from sft_engine.engines.cpu.quantize import CALIBRATION_BATCH, QuantizationError, calibration_batch

    gib = 2**30
    assert calibration_batch(10 * 2**20, 20 * gib) == CALIBRATION_BATCH  # a CNN at 224: the fixed batch
    assert calibration_batch(int(2.6 * gib), 20 * gib) == 3  # DINOv2 ViT-S at 518 px on a 24 GiB host
    assert calibration_batch(int(2.6 * gib), 0) == CALIBRATION_BATCH  # nothing known about memory
    with pytest.raises(QuantizationError, match=r"holds about 2\.6 GiB per image, more than 50% of the 4\.0 GiB available") as info:
        calibration_batch(int(2.6 * gib), 4 * gib)
    assert "--engine openvino" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="onnxruntime is not installed")
def test_onnxruntime_calibration_batches_by_the_graphs_activations(small_onnx, tmp_path, monkeypatch):
    """The per-image activation bytes come from the graph's inferred shapes; the reader hands over that many images a pass."""
    from sft_engine.engines.cpu import quantize

    src, _ = small_onnx
    seen: list[int] = []
    real = quantize.Received.batch
    monkeypatch.setattr(quantize.Received, "batch", lambda self, b: (seen.append(len(b)), real(self, b))[1])
    monkeypatch.setattr(quantize, "available_memory", lambda: 64 * 2**30)
    first = quantize.quantize_onnx(src, _calibration(12), tmp_path / "first.onnx")
    per_image = first["activation_bytes_per_image"]
    assert first["calibration_batch"] == quantize.CALIBRATION_BATCH and seen == [12]
    assert per_image > 8 * 32 * 32 * 4  # more than the input and a feature map: every intermediate tensor counts
    seen.clear()
    monkeypatch.setattr(quantize, "available_memory", lambda: int(per_image * 5 / quantize.ORT_CALIBRATION_MEMORY_SHARE) + 1)
    info = quantize.quantize_onnx(src, _calibration(12), tmp_path / "model.onnx")
    assert info["calibration_batch"] == 5 and seen == [5, 5, 2]
    assert info["received_image_digests"] == [image_digest(x) for x in _calibration(12)]
    monkeypatch.setattr(quantize, "available_memory", lambda: per_image)  # one image would take all of it
    with pytest.raises(quantize.QuantizationError, match="per image, more than 50%"):
        quantize.quantize_onnx(src, _calibration(12), tmp_path / "refused.onnx")
    assert not (tmp_path / "refused.onnx").exists()


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="onnxruntime is not installed")
def test_onnxruntime_quantizes_torchvisions_vit_where_symbolic_shape_inference_stops(tmp_path):
    """torchvision's ViT graph makes ORT's symbolic shape inference assert (a Reshape of unknown rank): INT8 goes on with ONNX's shapes."""
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process
    from torchvision.models.vision_transformer import VisionTransformer

    from sft_engine.engines.cpu.quantize import quantize_onnx
    from sft_engine.engines.export.onnx import export_onnx

    model = VisionTransformer(image_size=32, patch_size=16, num_layers=1, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=4).eval()
    src = tmp_path / "vit.onnx"
    export_onnx(model, torch.randn(2, 3, 32, 32), src)
    with pytest.raises(AssertionError):  # what stopped every ONNX Runtime INT8 build of vit_b_16
        quant_pre_process(str(src), str(tmp_path / "prepared.onnx"))
    info = quantize_onnx(src, _calibration(8), tmp_path / "model.onnx")
    assert info["pre_process"].startswith("without symbolic shape inference (symbolic shape inference failed: AssertionError: at ")
    assert info["family"]["family"] == "transformer" and info["family"]["activation_matmuls_in_float"] == 2
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in onnx.load(str(tmp_path / "model.onnx")).graph.node}
