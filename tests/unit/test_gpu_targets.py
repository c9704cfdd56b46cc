"""GPU targets without a GPU: configs, FP16 compile arguments per Torch-TensorRT version,
the FP16 verdict, compatibility manifests, and the error a CPU host gives.

What needs CUDA or TensorRT lives in ``tests/gpu`` (run by ``scripts/gpu_check.sh``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest
import torch
from tritonclient.grpc import model_config_pb2 as mc

from sft_engine.build import build
from sft_engine.commands import serve as serve_cmd
from sft_engine.build_config import BuildConfig
from sft_engine.engines import compat
from sft_engine.engines.compat import GpuInfo, compatibility_manifest, select_gpus, triton_tag_for_tensorrt, unavailable_reason
from sft_engine.engines.fp16_check import assess_fp16, layer_precision_counts, normalize_precision
from sft_engine.engines.onnx import onnx_config
from sft_engine.engines.precision import fp16_recipe, parse_version
from sft_engine.engines.tensorrt import batch_profile, plan_filenames, tensorrt_config
from sft_engine.engines.torchscript_gpu import export_fp16_torchscript, torchscript_gpu_config, weight_dtypes
from sft_engine.errors import ConfigError, TargetUnavailable
from sft_engine.repository.config import parse_pbtxt, to_pbtxt
from sft_engine.repository.manifest import read_manifest
from sft_engine.verify import FP16_TOLERANCE, Tolerance, fp16_tolerance
from tests.helpers import LABELS

PARAMS = {"preprocess_input_size": "32"}


def _pbtxt(spec):
    """Render and parse back, as the repository writer does: what Triton would read."""
    return parse_pbtxt(to_pbtxt(spec))


# -- FP16 compile arguments per Torch-TensorRT version ---------------------------------------

@pytest.mark.parametrize("version", ["2.5.0", "2.9.0+cu128"])
def test_up_to_2_9_asks_for_fp16_kernels_with_enabled_precisions(version):
    recipe = fp16_recipe(version)
    assert recipe.api == "enabled_precisions"
    assert recipe.compile_kwargs == {"enabled_precisions": {torch.float16}}
    assert recipe.half_model and recipe.input_dtype == torch.float16


@pytest.mark.parametrize("version", ["2.10.0", "2.12.1"])
def test_2_10_to_2_12_never_pass_enabled_precisions_under_explicit_typing(version):
    recipe = fp16_recipe(version)
    assert recipe.api == "explicit_typing"
    assert "enabled_precisions" not in recipe.compile_kwargs  # it raises there
    assert recipe.half_model and recipe.input_dtype == torch.float16


@pytest.mark.parametrize("version", ["2.13.0", "2.14.1.dev20260101+cu130"])
def test_from_2_13_fp16_comes_from_the_half_model(version):
    recipe = fp16_recipe(version)
    assert recipe.api == "half_model"
    assert recipe.compile_kwargs == {}  # enabled_precisions would be dropped silently
    assert recipe.half_model and recipe.input_dtype == torch.float16


@pytest.mark.parametrize("version", ["2.10.0", "2.12.0", "2.13.0", "2.14.0"])
def test_autocast_form_for_dynamo_compile(version):
    recipe = fp16_recipe(version, entry="compile", autocast=True)
    assert recipe.compile_kwargs == {"enable_autocast": True, "autocast_low_precision_type": torch.float16}
    assert not recipe.half_model and recipe.input_dtype == torch.float32


def test_autocast_is_refused_where_it_does_not_exist():
    with pytest.raises(ValueError, match="2.10"):
        fp16_recipe("2.9.0", entry="compile", autocast=True)
    with pytest.raises(ValueError, match="serialized"):
        fp16_recipe("2.13.0", entry="serialized_engine", autocast=True)


def test_too_old_torch_tensorrt_is_a_clear_error():
    with pytest.raises(TargetUnavailable, match="2.4.1 is older than 2.5"):
        fp16_recipe("2.4.1")


def test_recipe_is_recorded_as_json():
    described = fp16_recipe("2.9.0").describe()
    assert json.loads(json.dumps(described))["compile_kwargs"] == {"enabled_precisions": ["float16"]}
    assert parse_version("v2.13.0rc4") == (2, 13)


# -- FP16 tolerance -------------------------------------------------------------------------

def test_fp16_tolerance_defaults_unless_the_user_set_a_value():
    given = Tolerance()  # FP32 defaults of the build
    assert fp16_tolerance(given, {}) == FP16_TOLERANCE
    assert FP16_TOLERANCE.min_top1_agreement == 0.995 and FP16_TOLERANCE.max_accuracy_drop == 0.3
    user = Tolerance(atol=0.5, rtol=0.001, min_top1_agreement=0.9)
    mixed = fp16_tolerance(user, {"parity_atol": "flags", "parity_min_top1_agreement": "spec.toml", "arch": "flags"})
    assert (mixed.atol, mixed.rtol, mixed.min_top1_agreement) == (0.5, FP16_TOLERANCE.rtol, 0.9)


# -- Triton configs -------------------------------------------------------------------------

def test_tensorrt_config_single_architecture():
    cfg = _pbtxt(tensorrt_config("m", 4, (3, 32, 32), 64, 2, 300, (0, 1), PARAMS, plans={"9.0": "model.plan"}))
    assert cfg.platform == "tensorrt_plan" and not cfg.backend
    assert cfg.max_batch_size == 64
    assert [(t.name, t.data_type, list(t.dims)) for t in cfg.input] == [("images", mc.TYPE_FP16, [3, 32, 32])]
    assert [(t.name, t.data_type, list(t.dims)) for t in cfg.output] == [("output0", mc.TYPE_FP32, [4])]
    assert cfg.output[0].label_filename == "labels.txt"
    group = cfg.instance_group[0]
    assert (group.kind, group.count, list(group.gpus)) == (mc.ModelInstanceGroup.KIND_GPU, 2, [0, 1])
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 300
    assert cfg.optimization.cuda.graphs is True
    assert sorted(w.batch_size for w in cfg.model_warmup) == [1, 64]
    assert all(w.inputs["images"].data_type == mc.TYPE_FP16 for w in cfg.model_warmup)
    assert cfg.default_model_filename == "model.plan" and not cfg.cc_model_filenames
    assert cfg.parameters["preprocess_input_size"].string_value == "32"


def test_tensorrt_config_several_architectures_use_cc_model_filenames():
    plans = plan_filenames(["9.0", "8.0", "9.0"])
    assert plans == {"8.0": "model_sm80.plan", "9.0": "model_sm90.plan"}
    cfg = _pbtxt(tensorrt_config("m", 4, (3, 32, 32), 8, 1, 0, (), PARAMS, plans=plans))
    assert dict(cfg.cc_model_filenames) == plans
    assert not cfg.default_model_filename
    assert list(cfg.instance_group[0].gpus) == []  # every GPU of the serving host
    assert plan_filenames(["8.6"]) == {"8.6": "model.plan"}


def test_batch_profile():
    assert batch_profile(1) == (1, 1, 1)
    assert batch_profile(256) == (1, 256, 256)
    with pytest.raises(ValueError):
        batch_profile(0)


def test_torchscript_gpu_config_follows_pytorch_backend_conventions():
    cfg = _pbtxt(torchscript_gpu_config("m", 4, (3, 32, 32), 16, 1, 100, (0,), PARAMS))
    assert cfg.platform == "pytorch_libtorch"
    assert [t.name for t in cfg.input] == ["INPUT__0"] and [t.name for t in cfg.output] == ["OUTPUT__0"]
    assert (cfg.input[0].data_type, cfg.output[0].data_type) == (mc.TYPE_FP16, mc.TYPE_FP32)
    assert cfg.output[0].label_filename == "labels.txt"
    assert cfg.default_model_filename == "model.pt"
    assert not cfg.optimization.cuda.graphs, "CUDA graphs do nothing for the PyTorch backend"
    assert not cfg.optimization.execution_accelerators.gpu_execution_accelerator
    assert cfg.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU


def test_onnx_config_cpu_by_default_gpu_with_tensorrt_accelerator():
    cpu = _pbtxt(onnx_config("m", 4, (3, 32, 32), 8, 3, 0, (), PARAMS))
    assert cpu.platform == "onnxruntime_onnx" and cpu.default_model_filename == "model.onnx"
    assert (cpu.instance_group[0].kind, cpu.instance_group[0].count) == (mc.ModelInstanceGroup.KIND_CPU, 3)
    assert (cpu.input[0].data_type, cpu.output[0].data_type) == (mc.TYPE_FP32, mc.TYPE_FP32)
    assert not cpu.optimization.execution_accelerators.gpu_execution_accelerator
    gpu = _pbtxt(onnx_config("m", 4, (3, 32, 32), 8, 1, 0, (1,), PARAMS))
    assert (gpu.instance_group[0].kind, list(gpu.instance_group[0].gpus)) == (mc.ModelInstanceGroup.KIND_GPU, [1])
    (acc,) = gpu.optimization.execution_accelerators.gpu_execution_accelerator
    assert acc.name == "tensorrt" and acc.parameters["precision_mode"] == "FP16"
    assert [t.name for t in gpu.input] == ["input"] and [t.name for t in gpu.output] == ["logits"]


# -- is it really FP16? ---------------------------------------------------------------------

def _layer(kind, fmt):
    return {"Name": kind, "LayerType": kind, "Inputs": [{"Name": "x", "Format/Datatype": fmt}], "Outputs": []}


IO_FP16 = {"images": {"mode": "INPUT", "dtype": "FP16"}, "output0": {"mode": "OUTPUT", "dtype": "FP32"}}


def test_precision_names_from_the_inspector():
    assert normalize_precision("Channel major FP16 format where channel % 8 == 0") == "FP16"
    assert normalize_precision("Row major linear FP32") == "FP32"
    assert normalize_precision("Float") == "FP32"
    assert normalize_precision("Half") == "FP16"
    assert normalize_precision("Thirty-two wide channel vectorized row major Int8 format.") == "INT8"
    assert normalize_precision("N/A due to dynamic shapes") == "unknown"
    counts = layer_precision_counts([_layer("CaskConvolution", "Half"), _layer("Reformat", "Float"), "names-only layer"])
    assert counts == {"compute": {"FP16": 1}, "all": {"FP16": 1, "FP32": 1}}


def test_fp16_engine_passes_on_layer_precisions():
    layers = [_layer("CaskConvolution", "Channel major FP16 format")] * 9 + [_layer("CaskGemmConvolution", "Row major linear FP32")]
    verdict = assess_fp16(IO_FP16, layers, plan_bytes=24_000_000, parameters=11_000_000)
    assert verdict.passed, verdict.reasons
    assert verdict.half_share == pytest.approx(0.9) and "inspector" in verdict.evidence


def test_silently_fp32_engine_fails_on_layer_precisions():
    layers = [_layer("CaskConvolution", "Row major linear FP32")] * 10
    verdict = assess_fp16(IO_FP16, layers, plan_bytes=24_000_000, parameters=11_000_000)
    assert not verdict.passed and "0%" in verdict.reasons[0]


def test_fp32_input_means_the_half_model_never_reached_tensorrt():
    io = {"images": {"mode": "INPUT", "dtype": "FP32"}, "output0": {"mode": "OUTPUT", "dtype": "FP32"}}
    verdict = assess_fp16(io, None, plan_bytes=23_000_000, parameters=11_000_000)
    assert not verdict.passed and "expected FP16" in verdict.reasons[0]


def test_without_layer_precisions_the_plan_size_decides():
    fp16 = assess_fp16(IO_FP16, ["conv1", "conv2"], plan_bytes=23_500_000, parameters=11_700_000)
    assert fp16.passed and "size" in fp16.evidence
    fp32 = assess_fp16(IO_FP16, None, plan_bytes=47_000_000, parameters=11_700_000)
    assert not fp32.passed and "look FP32" in fp32.reasons[0]
    tiny = assess_fp16(IO_FP16, None, plan_bytes=4_000_000, parameters=50_000)
    assert tiny.passed and "input dtype only" in tiny.evidence


def test_fp16_torchscript_holds_fp16_weights(tmp_path):
    """The torchscript-gpu export, on CPU: FP16 constants after freezing, FP32 logits out."""
    from sft_engine.models import build_model

    torch.manual_seed(0)
    model = build_model("resnet18", 3).eval()
    example = torch.randn(2, 3, 32, 32).numpy()
    export_fp16_torchscript(model, example, torch.device("cpu"), tmp_path / "model.pt")
    loaded = torch.jit.load(str(tmp_path / "model.pt"))
    weights = weight_dtypes(loaded)
    assert set(weights) == {"float16"} and weights["float16"] > 2 * 11_000_000 * 0.9
    out = loaded(torch.from_numpy(example).half())
    assert out.dtype == torch.float32 and out.shape == (2, 3)
    assert next(model.parameters()).dtype == torch.float32, "the eager model must stay FP32"


# -- compatibility --------------------------------------------------------------------------

def test_container_tag_for_tensorrt_version():
    assert triton_tag_for_tensorrt("10.5.0.18").tag == "24.10"
    assert triton_tag_for_tensorrt("10.0.1").tag == "24.05"
    assert triton_tag_for_tensorrt("10.8.0.43").tag == "25.02", "newest release with that TensorRT"
    assert triton_tag_for_tensorrt("10.16.0.72").tag == "26.03"
    assert triton_tag_for_tensorrt("10.16.1") is None, "a patch release no container ships"
    assert triton_tag_for_tensorrt("11.0.0") is None
    tags = [r.tag for r in compat.TRITON_RELEASES]
    assert tags == sorted(tags) and len(set(tags)) == len(tags)


def test_compatibility_manifest_for_tensorrt(monkeypatch):
    versions = {"tensorrt": "10.5.0.18", "torch_tensorrt": "2.5.0"}
    monkeypatch.setattr(compat, "_version", lambda module: versions.get(module))
    monkeypatch.setattr(compat, "driver_version", lambda: "550.54.15")
    gpus = [GpuInfo(0, "NVIDIA H100 80GB HBM3", "9.0", 79.1), GpuInfo(1, "NVIDIA A100-SXM4-80GB", "8.0", 79.2)]
    out = compatibility_manifest("tensorrt", gpus, {"9.0": "model_sm90.plan", "8.0": "model_sm80.plan"})
    assert out["tensorrt"] == "10.5.0.18" and out["torch_tensorrt"] == "2.5.0" and out["driver"] == "550.54.15"
    assert out["torch"] == torch.__version__ and "cuda" in out
    assert out["compute_capabilities"] == ["8.0", "9.0"] and out["gpus"][0]["name"].startswith("NVIDIA H100")
    assert out["triton_container_tag"] == "24.10" and out["triton_container"] == "nvcr.io/nvidia/tritonserver:24.10-py3"
    assert list(out["plans"]) == ["8.0", "9.0"]
    monkeypatch.setattr(compat, "_version", lambda module: {"tensorrt": "10.16.1"}.get(module))
    missing = compatibility_manifest("tensorrt", gpus[:1], {"9.0": "model.plan"})
    assert missing["triton_container_tag"] is None and "nvcr.io/nvidia/pytorch" in missing["triton_container_note"]


def test_print_docker_uses_the_tag_a_gpu_build_recorded(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(compat, "_version", lambda module: {"tensorrt": "10.5.0.18"}.get(module))
    manifest = {"compatibility": compatibility_manifest("tensorrt", [GpuInfo(0, "H100", "9.0", 80.0)], {"9.0": "model.plan"})}
    version_dir = tmp_path / "repo" / "m" / "1"
    version_dir.mkdir(parents=True)
    (version_dir / "build_manifest.json").write_text(json.dumps(manifest))
    args = argparse.Namespace(print_docker=True, triton_tag=None, repository=str(tmp_path / "repo"))
    assert serve_cmd.run(args) == 0
    assert "nvcr.io/nvidia/tritonserver:24.10-py3" in capsys.readouterr().out


def test_select_gpus():
    gpus = [GpuInfo(0, "A", "9.0", 80.0), GpuInfo(1, "B", "8.0", 40.0)]
    assert select_gpus((), gpus) == gpus
    assert select_gpus((1, 1), gpus) == [gpus[1]]
    with pytest.raises(ConfigError, match="GPU 2"):
        select_gpus((2,), gpus)


def test_unavailable_reasons_name_what_is_missing_and_what_works():
    both = unavailable_reason("tensorrt", cuda=False, torch_tensorrt_problem="torch_tensorrt is not installed", needs_torch_tensorrt=True)
    assert "a CUDA GPU and torch_tensorrt" in both.one_line() and "--target onnx" in both.one_line()
    no_trt = unavailable_reason("tensorrt", cuda=True, torch_tensorrt_problem="torch_tensorrt is not installed", needs_torch_tensorrt=True)
    assert "needs torch_tensorrt" in no_trt.one_line() and "--target torchscript-gpu" in no_trt.one_line()
    assert unavailable_reason("tensorrt", cuda=True, torch_tensorrt_problem=None, needs_torch_tensorrt=True) is None
    assert "\n" not in both.one_line()


# -- through the CLI and the build ----------------------------------------------------------

@pytest.mark.skipif(torch.cuda.is_available(), reason="the error path of a host without CUDA")
@pytest.mark.parametrize("target", ["tensorrt", "torchscript-gpu"])
def test_cli_gpu_target_without_cuda_fails_in_one_line(target, tmp_path):
    repo = tmp_path / "repo"
    proc = subprocess.run(
        [sys.executable, "-m", "sft_engine.cli", "build", "--target", target, "--arch", "resnet18", "--num-classes", "3",
         "--allow-random-weights", "--input-size", "32", "--max-batch-size", "4", "--parity-samples", "2",
         "--repository", str(repo), "--json"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"error: target {target} needs a CUDA GPU")
    assert "--target onnx" in lines[0] and "Traceback" not in proc.stderr
    assert not proc.stdout.strip()
    assert not repo.exists(), "the repository must stay untouched"


def test_onnx_target_builds_and_verifies_on_cpu(tiny_weights, tmp_path):
    repo = tmp_path / "repo"
    result = build(BuildConfig(arch="resnet18", num_classes=4, weights=tiny_weights, input_size=32, max_batch_size=8,
                               repository=repo, name="tiny_onnx", target="onnx", labels=list(LABELS), parity_samples=8))
    assert result.target == "onnx" and result.engine == "onnxruntime"
    version = repo / "tiny_onnx" / "1"
    assert sorted(p.name for p in version.iterdir()) == ["build_manifest.json", "config.pbtxt.built", "model.onnx"], "no Python-backend files"
    cfg = parse_pbtxt((repo / "tiny_onnx" / "config.pbtxt").read_text())
    assert cfg.platform == "onnxruntime_onnx" and cfg.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU
    manifest = read_manifest(version).to_dict()
    assert manifest["parity"]["passed"] and manifest["parity"]["max_abs_diff"] < 1e-3
    assert manifest["compatibility"]["onnx_opset"] == 17 and manifest["compatibility"]["engine"] == "onnx"


def test_fp16_gate_passes_close_logits_and_refuses_wrong_ones(tmp_path):
    """The gate both GPU targets share, run on CPU with runners whose errors are known."""
    import numpy as np

    from sft_engine.errors import ParityError
    from sft_engine.verify import Check, ParityData, gate_for, run_checks

    rng = np.random.default_rng(0)
    reference = rng.standard_normal((16, 4)).astype(np.float32) * 5
    cfg = BuildConfig().merged({"parity_atol": 0.02}, "flags")  # a value the user set survives
    data = ParityData(np.zeros((16, 3, 8, 8), np.float32))
    gate = gate_for("fp16", Tolerance(atol=0.02), cfg.source)
    close = iter([reference[:16] + 1e-3])
    check = Check("torchscript-fp16@sm_90", lambda batch: next(close)[: len(batch)], subject="the FP16 TorchScript module", against="eager FP32 on H200")
    [report] = run_checks([check], reference, data, gate, raise_on_failure=True)
    assert report.passed and report.tolerance["atol"] == 0.02 and report.tolerance["rtol"] == FP16_TOLERANCE.rtol
    shuffled = iter([reference[::-1].copy()])
    wrong = Check("tensorrt-fp16@sm_90", lambda batch: next(shuffled)[: len(batch)], subject="the FP16 TensorRT plan", against="eager FP32 on H200")
    with pytest.raises(ParityError, match="the FP16 TensorRT plan disagrees with eager FP32 on H200"):
        run_checks([wrong], reference, data, gate, raise_on_failure=True)


# -- container table, refusal of unservable plans, detailed profiling ----------------------

def test_container_table_has_rows_for_the_tensorrt_of_recent_torch_tensorrt():
    """TensorRT of Torch-TensorRT 2.9 / 2.10 / 2.11 (each tag's dev_dep_versions.yml) has a container row;
    2.12's 10.16.1 and 2.13's 11.0.0 have none."""
    assert triton_tag_for_tensorrt("10.13.3.9").tag == "25.10"
    assert triton_tag_for_tensorrt("10.14.1.48").tag == "26.01"
    assert triton_tag_for_tensorrt("10.15.1").tag == "26.02"
    assert triton_tag_for_tensorrt("10.13.2.6").tag == "25.08"
    assert triton_tag_for_tensorrt("10.12.0") is None, "no container shipped 10.12"
    assert "25.07" not in [r.tag for r in compat.TRITON_RELEASES], "there is no 25.07 -py3 release"


def test_every_container_row_cites_its_source_and_says_whether_it_was_verified():
    source = __import__("inspect").getsource(compat)
    rows = [line for line in source.splitlines() if line.strip().startswith("TritonRelease(\"")]
    assert len(rows) == len(compat.TRITON_RELEASES)
    for line, release in zip(rows, compat.TRITON_RELEASES):
        yy, mm = release.tag.split(".")
        assert f"# rel-{yy}-{mm}" in line, line
        assert ("verified=True" in line and "package list" in line) == release.verified, line
        assert release.verified or "unverified" in line, line


def test_nearest_releases_bracket_a_tensorrt_version():
    older, newer = compat.nearest_releases("10.12.0")
    assert (older.tag, newer.tag) == ("25.06", "25.08")
    older, newer = compat.nearest_releases("11.0.0")
    assert older.tag == "26.03" and newer is None


def test_a_plan_no_container_can_load_is_refused_in_one_line():
    with pytest.raises(compat.ExportError) as info:
        compat.check_plan_servable({"tensorrt": "11.0.0.114", "triton_container_tag": None}, allow_unmatched=False)
    line = info.value.one_line()
    assert "TensorRT 11.0.0.114" in line and "26.03 ships TensorRT 10.16.0.72" in line
    assert "--print-docker" in line and "--allow-unmatched-tensorrt" in line and "\n" not in line
    with pytest.raises(compat.ExportError, match="unknown"):
        compat.check_plan_servable({"tensorrt": None, "triton_container_tag": None}, allow_unmatched=False)


def test_allow_unmatched_tensorrt_publishes_with_a_warning(caplog):
    compat.check_plan_servable({"tensorrt": "10.12.0", "triton_container_tag": None}, allow_unmatched=True)
    assert "publishing anyway" in caplog.text and "25.06 ships TensorRT 10.11.0.33" in caplog.text
    compat.check_plan_servable({"tensorrt": "10.5.0.18", "triton_container_tag": "24.10"}, allow_unmatched=False)


def test_allow_unmatched_tensorrt_flag_reaches_the_build_settings():
    from sft_engine.cli import build_parser
    from sft_engine.commands.build import config_from_args

    args = build_parser().parse_args(["build", "--arch", "resnet18", "--num-classes", "3", "--allow-unmatched-tensorrt"])
    assert config_from_args(args).allow_unmatched_tensorrt is True
    args = build_parser().parse_args(["build", "--arch", "resnet18", "--num-classes", "3"])
    assert config_from_args(args).allow_unmatched_tensorrt is False


@pytest.mark.parametrize("version,mechanism,extra", [
    ((2, 5), "debug_argument", {"debug": True}),
    ((2, 7), "debug_argument", {"debug": True}),
    ((2, 8), "debugger", {}),
    ((2, 13), "debugger", {}),
])
def test_detailed_profiling_per_torch_tensorrt_version(version, mechanism, extra):
    """The Debugger exists from 2.8 (py/torch_tensorrt/dynamo/debug/ first appears at v2.8.0);
    2.5 - 2.7 set ProfilingVerbosity.DETAILED from debug=True on the conversion call."""
    from sft_engine.engines.tensorrt import DEBUGGER_SINCE, detailed_profiling

    assert DEBUGGER_SINCE == (2, 8)
    assert detailed_profiling(version) == (mechanism, extra)


# -- the tensorrt target's torch.export, checked where TensorRT is absent -------------------

def test_half_model_exports_as_the_tensorrt_target_needs_it():
    """The front half of the tensorrt target on CPU: dynamic batch 1..max, the config's input name,
    one FP32 output, ep.module() within FP16 tolerance of eager at batch 1 and max."""
    from sft_engine.engines.export_check import check_half_export
    from sft_engine.engines.tensorrt import INPUT_NAME
    from sft_engine.models import build_model

    torch.manual_seed(0)
    model = build_model("resnet18", 4).eval()
    check = check_half_export(model, (3, 32, 32), 8, torch.device("cpu"), expected_input=INPUT_NAME)
    assert check.passed, check.reasons
    assert (check.input_name, check.input_dtype, check.batch_range) == ("images", "FP16", [1, 8])
    assert check.output_dtypes == ["FP32"] and len(check.outputs) == 1
    assert set(check.max_abs_diff) == {"1", "8"} and all(0 < d < 0.05 for d in check.max_abs_diff.values())


def test_export_check_names_a_wrong_binding_name():
    from sft_engine.engines.export_check import check_half_export
    from sft_engine.models import build_model

    model = build_model("resnet18", 4).eval()
    check = check_half_export(model, (3, 32, 32), 1, torch.device("cpu"), expected_input="INPUT__0")
    assert not check.passed and "named 'images'" in check.reasons[0]
    assert check.batch_range == [1, 1]


# -- build --print-docker: the two commands of one NGC release -------------------------------

def _print_docker(tmp_path, *extra):
    weights = tmp_path / "in" / "model.safetensors"
    weights.parent.mkdir(exist_ok=True)
    weights.write_bytes(b"x")
    (tmp_path / "in" / "labels.txt").write_text("a\nb\nc\n")
    proc = subprocess.run(
        [sys.executable, "-m", "sft_engine.cli", "build", "--arch", "resnet18", "--weights", "in/model.safetensors",
         "--labels", "in/labels.txt", "--repository", "repo", "--max-batch-size", "64", "--print-docker", *extra],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
        env={**__import__("os").environ, "PYTHONPATH": str(__import__("pathlib").Path(__file__).resolve().parents[2])},
    )
    return proc, weights


@pytest.mark.skipif(torch.cuda.is_available(), reason="shows that no CUDA is needed")
def test_print_docker_prints_build_and_serve_of_one_ngc_release(tmp_path):
    proc, weights = _print_docker(tmp_path, "--target", "tensorrt")
    assert proc.returncode == 0, proc.stderr
    build_cmd, serve_cmd = proc.stdout.strip().splitlines()
    newest = compat.TRITON_RELEASES[-1].tag
    assert f"nvcr.io/nvidia/pytorch:{newest}-py3" in build_cmd and f"nvcr.io/nvidia/tritonserver:{newest}-py3" in serve_cmd
    # the container's torch stack becomes constraints, so pip keeps it
    assert "pip list --format=freeze" in build_cmd and "-c /tmp/ngc-keep.txt" in build_cmd and "[tensorrt]" in build_cmd
    for name in ("torch", "torchvision", "torch[-_]tensorrt", "tensorrt", "numpy"):
        assert name in build_cmd
    # the same build runs inside, with absolute paths mounted where they are
    assert "sft-engine build" in build_cmd and "--print-docker" not in build_cmd and "--target tensorrt" in build_cmd
    assert f"-v {weights.parent}:{weights.parent}:ro" in build_cmd and f"--weights {weights}" in build_cmd
    repo = tmp_path / "repo"
    assert f"-v {repo}:{repo} " in build_cmd and f"--repository {repo}" in build_cmd
    assert f"{repo}:/models:ro" in serve_cmd and "tritonserver --model-repository=/models" in serve_cmd
    assert not repo.exists(), "printing builds nothing"


def test_print_docker_release_choice(tmp_path):
    proc, _ = _print_docker(tmp_path, "--target", "tensorrt", "--ngc-release", "25.10")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count(":25.10-py3") == 2 and "--allow-unmatched-tensorrt" not in proc.stdout
    proc, _ = _print_docker(tmp_path, "--target", "tensorrt", "--ngc-release", "27.01")
    assert proc.returncode == 0 and "--allow-unmatched-tensorrt" in proc.stdout.splitlines()[0]
    assert "not in sft-engine's container table" in proc.stderr
    proc, _ = _print_docker(tmp_path, "--target", "torchscript-gpu")
    assert proc.returncode == 0 and "[tensorrt]" not in proc.stdout
    for bad in (["--target", "cpu"], ["--target", "tensorrt", "--ngc-release", "2026.3"]):
        proc, _ = _print_docker(tmp_path, *bad)
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


# -- --target auto probes by importing -------------------------------------------------------

def test_auto_target_per_host():
    assert compat.auto_target(cuda=True, torch_tensorrt_problem=None)[0] == "tensorrt"
    target, why = compat.auto_target(cuda=True, torch_tensorrt_problem="torch_tensorrt is not installed")
    assert target == "torchscript-gpu" and "torch_tensorrt is not installed" in why
    assert compat.auto_target(cuda=False, torch_tensorrt_problem="anything") == ("cpu", "PyTorch sees no CUDA device")


def test_torch_tensorrt_for_another_torch_is_told_from_its_version():
    assert "built for torch 2.13, not the installed torch 2.14.1" in compat.torch_tensorrt_mismatch("2.13.0", "2.14.1")
    assert compat.torch_tensorrt_mismatch("2.8.0a0", "2.8.0a0+5228986c39.nv25.6") is None
    assert compat.torch_tensorrt_mismatch(None, "2.14.1") is None


def _fake_torch_tensorrt(root, version: str, body: str) -> None:
    package = root / "torch_tensorrt"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(body)
    info = root / f"torch_tensorrt-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: torch_tensorrt\nVersion: {version}\n")


def test_probe_imports_torch_tensorrt_and_reports_why_it_fails(tmp_path, monkeypatch):
    """A wheel built for this torch minor whose import fails (undefined symbol) is probed by importing it."""
    minor = ".".join(torch.__version__.split(".")[:2])
    _fake_torch_tensorrt(tmp_path, f"{minor}.0", "raise OSError('libtorchtrt.so: undefined symbol: _ZN3c104impl8GPUTrace')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "torch_tensorrt", raising=False)
    problem = compat._torch_tensorrt_problem()
    assert problem.startswith("torch_tensorrt cannot be imported (libtorchtrt.so: undefined symbol")
    target, why = compat.auto_target(True, problem)
    assert target == "torchscript-gpu" and "undefined symbol" in why
    error = compat.unavailable_reason("tensorrt", cuda=True, torch_tensorrt_problem=problem, needs_torch_tensorrt=True)
    assert "--target torchscript-gpu" in error.one_line()


def test_probe_refuses_a_torch_tensorrt_of_another_torch_without_importing_it(tmp_path, monkeypatch):
    _fake_torch_tensorrt(tmp_path, "2.4.0", "raise SystemExit('must not be imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "torch_tensorrt", raising=False)
    assert "torch_tensorrt 2.4.0 is built for torch 2.4" in compat._torch_tensorrt_problem()


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU host's answer")
def test_auto_resolves_to_cpu_without_cuda(caplog):
    from sft_engine.engines.registry import resolve_target

    caplog.set_level("INFO")
    assert resolve_target("auto") == "cpu" and "PyTorch sees no CUDA device" in caplog.text
    assert resolve_target("onnx") == "onnx"


# -- build devices are not serving placement ------------------------------------------------

def _cfg(*argv):
    from sft_engine.cli import build_parser
    from sft_engine.commands.build import config_from_args

    return config_from_args(build_parser().parse_args(["build", "--arch", "resnet18", "--num-classes", "3", "--allow-random-weights", *argv]))


def test_build_gpu_does_not_place_the_served_instances():
    """A plan built with --build-gpu 1 must load on a one-GPU server: instance_group.gpus stays empty (all GPUs)."""
    from sft_engine.build import export_settings, published_config
    from sft_engine.engines.tensorrt import tensorrt_engine_config

    settings = export_settings(_cfg("--target", "tensorrt", "--build-gpu", "1").validated())
    assert settings.build_gpus == (1,) and settings.serve_gpus is None
    cfg = _pbtxt(published_config(tensorrt_engine_config(3, (3, 32, 32)), settings))
    group = cfg.instance_group[0]
    assert group.kind == mc.ModelInstanceGroup.KIND_GPU and list(group.gpus) == []
    placed = export_settings(_cfg("--target", "tensorrt", "--build-gpu", "1", "--serve-gpus", "0,2").validated())
    assert list(_pbtxt(published_config(tensorrt_engine_config(3, (3, 32, 32)), placed)).instance_group[0].gpus) == [0, 2]
    everywhere = export_settings(_cfg("--target", "torchscript-gpu", "--serve-gpus", "all").validated())
    assert everywhere.serve_gpus == ()


def test_gpus_flag_and_key_are_refused_naming_their_replacements():
    for make in (lambda: _cfg("--target", "tensorrt", "--gpus", "1"), lambda: BuildConfig().merged({"gpus": [1]}, "spec.toml")):
        with pytest.raises(ConfigError) as info:
            make()
        assert "--build-gpu" in info.value.one_line() and "--serve-gpus" in info.value.one_line()
    with pytest.raises(ConfigError, match="--target cpu serves on CPU"):
        _cfg("--target", "cpu", "--serve-gpus", "0").validated()
    with pytest.raises(ConfigError, match="distinct GPU ids"):
        _cfg("--target", "onnx", "--serve-gpus", "1,1").validated()
    with pytest.raises(ConfigError, match="not a list of GPU ids"):
        _cfg("--target", "tensorrt", "--build-gpu", "first").validated()


def test_onnx_serve_gpus_switch_to_gpu_instances(tiny_weights, tmp_path):
    repo = tmp_path / "repo"
    result = build(BuildConfig(arch="resnet18", num_classes=4, weights=tiny_weights, input_size=32, max_batch_size=8, repository=repo,
                               name="tiny_onnx_gpu", target="onnx", labels=list(LABELS), parity_samples=8, serve_gpus="all"))
    cfg = parse_pbtxt((repo / "tiny_onnx_gpu" / "config.pbtxt").read_text())
    assert result.target == "onnx"
    assert cfg.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU and list(cfg.instance_group[0].gpus) == []
    (acc,) = cfg.optimization.execution_accelerators.gpu_execution_accelerator
    assert acc.name == "tensorrt"
