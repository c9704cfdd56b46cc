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
           "TRANSFORMER_OPS", "ORT_TRANSFORMER_OP_TYPES"]

LOGGER = logging.getLogger(__name__)
#: images per calibration forward pass (ranges are the same for any batching; memory is not)
CALIBRATION_BATCH = 16


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
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        """The calibration images, ``CALIBRATION_BATCH`` at a time."""

        def __init__(self) -> None:
            self._batches: Iterator[np.ndarray] = iter(_batches(calibration))

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._batches, None)
            return None if batch is None else {input_name: received.batch(batch)}

    import onnx

    received = Received()
    reader = Reader()
    settings: dict[str, Any] = {"format": "QDQ", "activation_type": "QUInt8", "weight_type": "QInt8", "per_channel": True,
                                "calibrate_method": "MinMax", "calibration_images": int(len(calibration))}
    try:
        with tempfile.TemporaryDirectory(prefix="sft-ort-quant-") as tmp:
            prepared = Path(tmp) / "prepared.onnx"
            quant_pre_process(str(model_onnx), str(prepared))
            family = onnx_transformer_settings(onnx.load(str(prepared)))
            kwargs: dict[str, Any] = {}
            if family is not None:
                record = family.pop("record")
                kwargs = family
                settings["family"] = record
            quantize_static(str(prepared), str(out_onnx), reader, quant_format=QuantFormat.QDQ,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                            calibrate_method=CalibrationMethod.MinMax, **kwargs)
    except Exception as exc:  # any failure inside ONNX Runtime's quantizer is this candidate's, not the build's
        raise _library_failure("onnxruntime quantize_static", exc) from exc
    return {"quantizer": "onnxruntime.quantization", "version": ort.__version__, **settings, **received.describe()}


def _first_pass(received: Received, n: int) -> Received:
    """NNCF iterates its dataset once per algorithm (ranges, then bias correction): the images are the first pass's."""
    first = Received()
    first.digests = received.digests[:n]
    return first
