"""Post-training static INT8 quantization with the maintained libraries, on real calibration images.

Two quantizers, one per CPU runtime, each the vendor's own:

* OpenVINO: NNCF's ``nncf.quantize`` on the OpenVINO model (min-max ranges over the
  calibration images, then fast bias correction); the result is an IR with
  FakeQuantize nodes that OpenVINO's CPU plugin runs as INT8 kernels (AMX, VNNI, or AVX2).
* ONNX Runtime: ``onnxruntime.quantization.quantize_static`` in QDQ format (U8
  activations, per-channel S8 weights, the layout ORT's x86 INT8 kernels expect), with
  a ``CalibrationDataReader`` over the same images, after ORT's own pre-processing
  (shape inference and graph optimization), as its documentation asks.

Transformer families (ViT, DeiT, Swin, ConvNeXt's LayerNorm and GELU too) lose accuracy
where naive QDQ quantizes attention's softmax, LayerNorm, GELU and the
activation × activation matmuls of attention. The family is read from the graph itself
(``transformer_ops``: LayerNorm, softmax, GELU/Erf present), so it holds for an exported
program as for any ``--arch``: NNCF then runs with ``model_type=ModelType.TRANSFORMER``
(its transformer ignored-patterns and SmoothQuant) and the ``MIXED`` preset; ONNX Runtime
quantizes only the weighted ops (``Conv``, ``MatMul``, ``Gemm``: ``op_types_to_quantize``)
and leaves the matmuls between two activations in float (``nodes_to_exclude``). CNNs keep
the settings they always had.

Each returns what it did (library, version, settings) for the build manifest, and
what the library really pulled from its data reader (``calibration.Received``: the
count and a digest of every image), under its own keys, so the split's counts cannot
hide a quantizer that was handed other images. A
failure inside the library raises ``QuantizationError`` carrying the library's
message, so the build records that candidate as failed and goes on with the others.

ONNX Runtime's calibration holds about every activation of a batch at once, so its batch
is sized from the graph's shapes against the memory available (``calibration_batch``);
a graph of which not one image fits is refused in one line, not killed by the kernel.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from sft_engine.engines.calibration import Received
from sft_engine.errors import ExportError

__all__ = ["QuantizationError", "quantize_openvino", "quantize_onnx", "CALIBRATION_BATCH", "transformer_ops", "onnx_transformer_settings",
           "TRANSFORMER_OPS", "ORT_TRANSFORMER_OP_TYPES", "available_memory", "activation_bytes_per_image", "calibration_batch"]

LOGGER = logging.getLogger(__name__)
#: images per calibration forward pass (ranges are the same for any batching; memory is not)
CALIBRATION_BATCH = 16
#: share of the memory available when calibration starts that ONNX Runtime's calibration may hold
ORT_CALIBRATION_MEMORY_SHARE = 0.5


#: op types (ONNX; OpenVINO's names beside) whose presence makes a graph a transformer family's for INT8
TRANSFORMER_OPS = {"LayerNormalization": "LayerNorm", "MVN": "LayerNorm", "Softmax": "Softmax", "SoftMax": "Softmax",
                   "Gelu": "GELU", "Erf": "GELU"}
#: the ops ONNX Runtime quantizes in a transformer graph: those carrying weights
ORT_TRANSFORMER_OP_TYPES = ("Conv", "MatMul", "Gemm")


def transformer_ops(op_types: Any) -> list[str]:
    """The transformer building blocks among a graph's op types (``["GELU", "LayerNorm", "Softmax"]``), empty for a CNN."""
    return sorted({TRANSFORMER_OPS[t] for t in op_types if t in TRANSFORMER_OPS})


def onnx_transformer_settings(model: Any) -> dict[str, Any] | None:
    """``quantize_static`` keywords for a transformer graph (an ``onnx.ModelProto``), None for a CNN.

    ``nodes_to_exclude``: every MatMul with no initializer among its inputs, i.e.
    attention's ``Q·Kᵀ`` and ``softmax·V`` (two activations, ranges that differ per image).
    """
    graph = model.graph
    found = transformer_ops(n.op_type for n in graph.node)
    if not found:
        return None
    weights = {i.name for i in graph.initializer}
    constants = {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    excluded = [n.name for n in graph.node if n.op_type == "MatMul" and not any(i in weights or i in constants for i in n.input)]
    float_ops = sorted({n.op_type for n in graph.node if n.op_type in TRANSFORMER_OPS})
    return {"op_types_to_quantize": list(ORT_TRANSFORMER_OP_TYPES), "nodes_to_exclude": excluded,
            "record": {"family": "transformer", "graph_has": found, "quantized_op_types": list(ORT_TRANSFORMER_OP_TYPES),
                       "left_in_float": float_ops, "activation_matmuls_in_float": len(excluded)}}


class QuantizationError(ExportError):
    """The quantization library failed on this model; the message is the library's."""


def _batches(images: np.ndarray, batch: int = CALIBRATION_BATCH) -> list[np.ndarray]:
    return [np.ascontiguousarray(images[i:i + batch]) for i in range(0, len(images), batch)]


def available_memory() -> int:
    """Bytes the kernel says a new allocation can have now (``MemAvailable``); 0 where it does not say."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def activation_bytes_per_image(model: Any) -> int:
    """Bytes of every floating-point tensor of one image's forward pass through an ``onnx.ModelProto``.

    ONNX Runtime's min-max calibration adds ReduceMin/ReduceMax outputs to the tensors it
    quantizes and, measured, holds about this much per image in a batch: 2.6 GB for a DINOv2 ViT-S at 518 px
    (1374 tokens, attention maps of 1374²), where a batch of 16 was killed at 24 GiB. The shapes
    are those of the shape inference that ``quant_pre_process`` ran; a symbolic dimension
    (the batch) counts 1.
    """
    import onnx

    sizes = {onnx.TensorProto.FLOAT: 4, onnx.TensorProto.FLOAT16: 2, onnx.TensorProto.BFLOAT16: 2, onnx.TensorProto.DOUBLE: 8}
    total = 0
    for info in (*model.graph.value_info, *model.graph.output):
        tensor = info.type.tensor_type
        if tensor.elem_type in sizes and tensor.HasField("shape"):
            total += int(np.prod([d.dim_value if d.HasField("dim_value") else 1 for d in tensor.shape.dim])) * sizes[tensor.elem_type]
    return total


def calibration_batch(per_image: int, available: int, share: float = ORT_CALIBRATION_MEMORY_SHARE) -> int:
    """Images per calibration pass so that ``per_image`` × batch fits ``share`` of ``available`` (at most ``CALIBRATION_BATCH``).

    Raises ``QuantizationError`` when not even one image fits, so the INT8 candidate fails in
    one line and the build goes on, instead of the kernel killing the whole build.
    """
    if available <= 0 or per_image <= 0:  # nothing known: the fixed batch, as before
        return CALIBRATION_BATCH
    fits = int(available * share) // per_image
    if fits < 1:
        raise QuantizationError(
            f"onnxruntime calibration of this graph holds about {per_image / 2**30:.1f} GiB per image, more than "
            f"{share:.0%} of the {available / 2**30:.1f} GiB available",
            hint="free memory, or build with --engine openvino, a smaller --input-size or --precision bf16")
    return min(CALIBRATION_BATCH, fits)


def _library_failure(library: str, exc: Exception) -> QuantizationError:
    """The library's own words; a bare ``assert`` has none, so its place in the library is named instead."""
    detail = " ".join(str(exc).split())
    if not detail:
        import traceback

        frames = traceback.extract_tb(exc.__traceback__)
        if frames:
            last = frames[-1]
            path = Path(last.filename)
            detail = f"at {'/'.join(path.parts[-3:])}:{last.lineno} ({(last.line or '').strip()[:120]})"
    return QuantizationError(f"{library} failed: {type(exc).__name__}: {detail}"[:400], hint="build with --precision fp32 or bf16")


def quantize_openvino(model_xml: Path, calibration: np.ndarray, out_xml: Path) -> dict[str, Any]:
    """NNCF INT8 of the IR ``model_xml`` into ``out_xml`` (+ ``.bin``), calibrated on ``calibration`` (NCHW float32)."""
    import nncf
    import openvino as ov

    nncf.set_log_level(logging.WARNING)
    batches = _batches(calibration)
    received = Received()  # each batch as NNCF pulls it through the dataset's transform
    settings: dict[str, Any] = {"preset": "performance", "subset_size": int(len(calibration)), "fast_bias_correction": True}
    try:
        model = ov.Core().read_model(str(model_xml))
        found = transformer_ops(op.get_type_name() for op in model.get_ordered_ops())
        kwargs: dict[str, Any] = {"preset": nncf.QuantizationPreset.PERFORMANCE}
        if found:  # NNCF's transformer mode: its ignored patterns for softmax/LayerNorm/GELU, SmoothQuant, mixed preset
            kwargs = {"preset": nncf.QuantizationPreset.MIXED, "model_type": nncf.ModelType.TRANSFORMER}
            settings.update(preset="mixed", model_type="transformer", family={"family": "transformer", "graph_has": found})
        # NNCF draws progress bars (rich) on stdout, which would corrupt `build --json`
        with contextlib.redirect_stdout(io.StringIO()):
            quantized = nncf.quantize(model, nncf.Dataset(batches, received.batch), subset_size=len(batches), fast_bias_correction=True, **kwargs)
        ov.save_model(quantized, str(out_xml), compress_to_fp16=False)
    except Exception as exc:  # any failure inside NNCF/OpenVINO is this candidate's, not the build's
        raise _library_failure("nncf.quantize", exc) from exc
    return {"quantizer": "nncf", "version": nncf.__version__, **settings, **_first_pass(received, len(calibration)).describe()}


def quantize_onnx(model_onnx: Path, calibration: np.ndarray, out_onnx: Path, input_name: str = "input") -> dict[str, Any]:
    """ONNX Runtime static QDQ INT8 of ``model_onnx`` into ``out_onnx``, calibrated on ``calibration``."""
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        """The calibration images, ``batch`` at a time (``calibration_batch``: what memory allows)."""

        def __init__(self, batch: int) -> None:
            self._batches: Iterator[np.ndarray] = iter(_batches(calibration, batch))

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._batches, None)
            return None if batch is None else {input_name: received.batch(batch)}

    import onnx

    received = Received()
    settings: dict[str, Any] = {"format": "QDQ", "activation_type": "QUInt8", "weight_type": "QInt8", "per_channel": True,
                                "calibrate_method": "MinMax", "calibration_images": int(len(calibration))}
    try:
        with tempfile.TemporaryDirectory(prefix="sft-ort-quant-") as tmp:
            prepared = Path(tmp) / "prepared.onnx"
            settings["pre_process"] = _pre_process(model_onnx, prepared)
            graph = onnx.load(str(prepared))
            family = onnx_transformer_settings(graph)
            per_image = activation_bytes_per_image(graph)
            batch = calibration_batch(per_image, available_memory())
            del graph
            settings.update(calibration_batch=batch, activation_bytes_per_image=per_image)
            kwargs: dict[str, Any] = {}
            if family is not None:
                record = family.pop("record")
                kwargs = family
                settings["family"] = record
            quantize_static(str(prepared), str(out_onnx), Reader(batch), quant_format=QuantFormat.QDQ,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                            calibrate_method=CalibrationMethod.MinMax, **kwargs)
    except QuantizationError:
        raise
    except Exception as exc:  # any failure inside ONNX Runtime's quantizer is this candidate's, not the build's
        raise _library_failure("onnxruntime quantize_static", exc) from exc
    return {"quantizer": "onnxruntime.quantization", "version": ort.__version__, **settings, **received.describe()}


def _pre_process(source: Path, prepared: Path) -> str:
    """ORT's ``quant_pre_process``; where its symbolic shape inference stops, again with ONNX's own shape inference only.

    The symbolic pass asserts on some graphs (torchvision's ``vit_b_16``: a ``Reshape``
    whose shape has no literal rank, ``symbolic_shape_infer.py``); ONNX Runtime documents
    it as optional (``skip_symbolic_shape``), so the quantizer goes on with ONNX's shapes,
    and the manifest says so.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(str(source), str(prepared))
        return "full"
    except Exception as exc:  # noqa: BLE001 - the retry below fails loudly if it is not the symbolic pass
        reason = _library_failure("symbolic shape inference", exc).message
    LOGGER.info("quant_pre_process: %s; again without symbolic shape inference", reason)
    quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
    return f"without symbolic shape inference ({reason})"


def _first_pass(received: Received, n: int) -> Received:
    """NNCF iterates its dataset once per algorithm (ranges, then bias correction): the images are the first pass's."""
    first = Received()
    first.digests = received.digests[:n]
    return first
