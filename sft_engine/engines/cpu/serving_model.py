"""Triton Python-backend model serving an sft-engine CPU engine (copied as ``model.py``).

This one file is both what Triton runs and what the build measures in-process
(``EngineRunner``), so the in-process figures and the parity gate exercise exactly the
serving code. It depends only on numpy and the engine's runtime (onnxruntime, openvino,
or torch for TorchScript), not on sft-engine, so the same repository loads in the stock NGC
Triton container. The engine and its settings live in the version directory
(``engine.json``): versions are self-contained and never share mutable files.

Requests that the dynamic batcher hands over together are concatenated and run as
one engine call (zero-copy ``as_numpy`` in, one contiguous slice per response out).
"""

import json
import os

import numpy as np

#: /proc/cpuinfo flags of integer dot-product instructions (as ``sft_engine.engines.cpu.isa``; this file stands alone)
_INT8_FLAGS = ("amx_int8", "avx512_vnni", "avx_vnni", "avx2")


def _has_int8_dot_product(cpuinfo_path="/proc/cpuinfo"):
    """True, False, or None where it cannot be told (not Linux)."""
    try:
        with open(cpuinfo_path) as fh:
            flags = set(" ".join(line.partition(":")[2] for line in fh if line.startswith("flags")).split())
    except OSError:
        return None
    return any(f in flags for f in _INT8_FLAGS)


class EngineRunner:
    """Runs one exported engine on NCHW float32 numpy batches."""

    def __init__(self, version_dir, settings=None, instances=1):
        if settings is None:
            with open(os.path.join(version_dir, "engine.json")) as fh:
                settings = json.load(fh)
        self.settings = settings
        self.kind = settings["engine"]
        self.warning = None  # something the operator should know, logged by the serving model
        path = os.path.join(version_dir, settings["file"])
        # 0 = share the cores among the model's instances (so a re-tuned instance count
        # needs no new engine.json)
        threads = int(settings.get("intra_op_threads") or 0) or max(1, (os.cpu_count() or 1) // max(1, instances))
        self.threads = threads
        if settings.get("quantized") == "int8" and _has_int8_dot_product() is False:
            self.warning = ("this CPU has no INT8 dot-product instructions (AMX-INT8, AVX512-VNNI, AVX-VNNI or AVX2): the INT8 version "
                            "runs emulated, correct but likely slower than FP32; rebuild with --precision fp32 or bf16 for this host")
        if self.kind == "onnxruntime":
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
            opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            if not settings.get("allow_spinning", True):
                opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
            self._session = ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])
            self._input = self._session.get_inputs()[0].name
            self._outputs = [self._session.get_outputs()[0].name]
            self.run = self._run_ort
        elif self.kind == "torchscript":
            import torch

            torch.set_num_threads(threads)
            try:
                torch.set_num_interop_threads(1)
            except RuntimeError:  # already set in this process (it may be set only once)
                pass
            import warnings

            self._torch = torch
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                module = torch.jit.load(path, map_location="cpu").eval()
                if settings.get("optimize_for_inference"):
                    module = torch.jit.optimize_for_inference(module)
            self._module = module
            self.run = self._run_torchscript
        elif self.kind == "openvino":
            import openvino as ov

            # One stream with the instance's share of the cores: the dynamic batcher, not
            # OpenVINO's own streams, supplies the parallelism across requests. No pinning,
            # because the Triton process and the other instances share these cores.
            # INFERENCE_PRECISION_HINT is explicit: left unset, OpenVINO picks bf16 by itself
            # on CPUs that have it, which must be a decision the accuracy gate has seen.
            core = ov.Core()
            if settings.get("precision") == "bf16" and "BF16" not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
                self.warning = ("this CPU has no native bf16 (AVX512-BF16 or AMX): the bf16 version runs in FP32, "
                                "correct but slower; rebuild with --precision fp32 for this host")
            compiled = core.compile_model(path, "CPU", {
                "PERFORMANCE_HINT": "LATENCY",
                "NUM_STREAMS": 1,
                "INFERENCE_NUM_THREADS": threads,
                "ENABLE_CPU_PINNING": False,
                "INFERENCE_PRECISION_HINT": settings.get("precision", "f32"),
            })
            self._request = compiled.create_infer_request()
            self.run = self._run_openvino
        else:
            raise ValueError("unknown engine kind %r" % self.kind)

    def _run_ort(self, batch):
        return self._session.run(self._outputs, {self._input: batch})[0]

    def _run_openvino(self, batch):
        # share_inputs: OpenVINO reads the (contiguous) batch in place; outputs are copies,
        # so a later call cannot overwrite a response still being sent
        return self._request.infer({0: batch}, share_inputs=True)[0]

    def _run_torchscript(self, batch):
        with self._torch.inference_mode():
            return self._module(self._torch.from_numpy(batch)).numpy()


class TritonPythonModel:
    """The Python-backend entry point."""

    def initialize(self, args):
        import triton_python_backend_utils as pb_utils

        self._pb = pb_utils
        config = json.loads(args["model_config"])
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        instances = sum(int(g.get("count", 1)) for g in config.get("instance_group", [])) or 1
        self._runner = EngineRunner(version_dir, instances=instances)
        if self._runner.warning:
            pb_utils.Logger.log_warn("%s version %s: %s" % (args["model_name"], args["model_version"], self._runner.warning))
        self._input_name = config["input"][0]["name"]
        self._output_name = config["output"][0]["name"]

    def execute(self, requests):
        pb = self._pb
        arrays = [pb.get_input_tensor_by_name(r, self._input_name).as_numpy() for r in requests]
        if len(arrays) == 1:
            outputs = [self._runner.run(arrays[0])]
        else:
            result = self._runner.run(np.concatenate(arrays))
            outputs, start = [], 0
            for arr in arrays:
                outputs.append(result[start:start + len(arr)])
                start += len(arr)
        return [pb.InferenceResponse(output_tensors=[pb.Tensor(self._output_name, np.ascontiguousarray(out))]) for out in outputs]

    def finalize(self):
        self._runner = None
